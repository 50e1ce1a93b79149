// See big_alloc.h.
#include "big_alloc.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace flashseq {
namespace cpu {
namespace {

// Freed blocks kept for the next call, at most the limit's bytes (set_buffer_cache_limit,
// default kDefaultBufferCacheLimit) and kMaxCachedBlocks blocks in all. Why: even on huge pages
// a fresh block is zeroed by the kernel on first touch; the buffers of one call are the same
// sizes as the last call's, so reusing them skips the faults and the zeroing (LSTM I=64 H=256
// B=32 T=200 L=2 forward: 640 page faults and 1.5-3 ms of system time per call). From 256 KB
// on: the packed weight panels and a short sequence's h (0.5-1 MB at H=200-256) were fresh
// pages on every call too. The cost: up to the limit stays allocated between calls.
constexpr size_t kMaxCachedBlocks = 32;

struct Block {
  void* p;
  size_t bytes;
};

struct BlockCache {
  std::mutex mu;
  std::deque<Block> blocks;  // oldest first
  size_t bytes = 0;
  size_t limit = static_cast<size_t>(kDefaultBufferCacheLimit);
};

BlockCache& cache() {
  static BlockCache* c = new BlockCache();  // never destroyed: deleters may run at exit
  return *c;
}

// Moves the oldest blocks into `to_free` until `incoming` more bytes and `incoming_blocks` more
// blocks fit; the caller holds c.mu and frees them after unlocking.
void evict_locked(BlockCache& c, size_t incoming, size_t incoming_blocks,
                  std::vector<void*>& to_free) {
  while (!c.blocks.empty() && (c.bytes + incoming > c.limit ||
                               c.blocks.size() + incoming_blocks > kMaxCachedBlocks)) {
    to_free.push_back(c.blocks.front().p);
    c.bytes -= c.blocks.front().bytes;
    c.blocks.pop_front();
  }
}

void free_all(const std::vector<void*>& blocks) {
  for (void* p : blocks) std::free(p);
}

#if defined(__linux__) && defined(MADV_HUGEPAGE)
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kMinBytes = size_t(256) << 10;  // smaller ones: the default allocator
constexpr size_t kHugeMinBytes = size_t(4) << 20;  // from here on 2 MB-aligned, MADV_HUGEPAGE
constexpr size_t kPage = size_t(4) << 10;

// A cached block of at least `bytes` and at most a quarter more (the closest), or {null, 0}.
Block take_cached(size_t bytes) {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto best = c.blocks.end();
  for (auto it = c.blocks.begin(); it != c.blocks.end(); ++it) {
    if (it->bytes >= bytes && it->bytes <= bytes + bytes / 4 &&
        (best == c.blocks.end() || it->bytes < best->bytes)) {
      best = it;
    }
  }
  if (best == c.blocks.end()) return {nullptr, 0};
  const Block found = *best;
  c.bytes -= found.bytes;
  c.blocks.erase(best);
  return found;
}

void release_block(void* ctx) {
  Block* block = static_cast<Block*>(ctx);
  std::vector<void*> to_free;
  {
    BlockCache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    if (block->bytes > c.limit) {
      to_free.push_back(block->p);
    } else {
      evict_locked(c, block->bytes, 1, to_free);
      c.blocks.push_back(*block);
      c.bytes += block->bytes;
    }
  }
  free_all(to_free);
  delete block;
}

class HugePageAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    if (bytes < kMinBytes) return c10::GetCPUAllocator()->allocate(bytes);
    const bool huge = bytes >= kHugeMinBytes;
    const size_t unit = huge ? kHugePage : kPage;
    const size_t rounded = (bytes + unit - 1) / unit * unit;
    Block block = take_cached(rounded);  // its own size may exceed `rounded`
    if (block.p == nullptr) {
      if (posix_memalign(&block.p, unit, rounded) != 0 || block.p == nullptr) {
        return c10::GetCPUAllocator()->allocate(bytes);  // the default path reports the failure
      }
      block.bytes = rounded;
      // advice only: without THP the pages stay 4 KB
      if (huge) madvise(block.p, rounded, MADV_HUGEPAGE);
    }
    return {block.p, new Block(block), &release_block, c10::Device(c10::DeviceType::CPU)};
  }
  // Mixed deleters (the default allocator's below kMinBytes): no single raw deleter.
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
};

c10::Allocator* big_allocator() {
  static HugePageAllocator allocator;
  return &allocator;
}
#endif

}  // namespace

at::Tensor empty_big(at::IntArrayRef sizes, const at::TensorOptions& options) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (options.device().is_cpu()) {
    return at::detail::empty_generic(sizes, big_allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                     c10::typeMetaToScalarType(options.dtype()), c10::nullopt);
  }
#endif
  return at::empty(sizes, options);
}

int64_t set_buffer_cache_limit(int64_t bytes) {
  BlockCache& c = cache();
  std::vector<void*> to_free;
  int64_t old;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    old = static_cast<int64_t>(c.limit);
    c.limit = static_cast<size_t>(std::max<int64_t>(bytes, 0));
    evict_locked(c, 0, 0, to_free);
  }
  free_all(to_free);
  return old;
}

int64_t buffer_cache_bytes() {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return static_cast<int64_t>(c.bytes);
}

void empty_buffer_cache() {
  BlockCache& c = cache();
  std::vector<void*> to_free;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    for (const Block& block : c.blocks) to_free.push_back(block.p);
    c.blocks.clear();
    c.bytes = 0;
  }
  free_all(to_free);
}

}  // namespace cpu
}  // namespace flashseq
