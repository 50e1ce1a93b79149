// See big_alloc.h.
#include "big_alloc.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace flashseq {
namespace cpu {
namespace {

#if defined(__linux__) && defined(MADV_HUGEPAGE)
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kMinBytes = size_t(4) << 20;

void free_huge(void* p) { std::free(p); }

class HugePageAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    if (bytes < kMinBytes) return c10::GetCPUAllocator()->allocate(bytes);
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* p = nullptr;
    if (posix_memalign(&p, kHugePage, rounded) != 0 || p == nullptr) {
      return c10::GetCPUAllocator()->allocate(bytes);  // the default path reports the failure
    }
    madvise(p, rounded, MADV_HUGEPAGE);  // advice only: without THP the pages stay 4 KB
    return {p, p, &free_huge, c10::Device(c10::DeviceType::CPU)};
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

}  // namespace cpu
}  // namespace flashseq
