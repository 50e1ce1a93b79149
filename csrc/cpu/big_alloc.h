// Large buffers of the CPU loop on transparent huge pages (big_alloc.cpp).
#pragma once

#include <ATen/ATen.h>

namespace flashseq {
namespace cpu {

// at::empty(sizes, options) for a CPU tensor, with memory of 4 MB and more aligned to 2 MB and
// marked MADV_HUGEPAGE where Linux offers it (below 256 KB, and on other systems, the default
// CPU allocator). Why: the loop's outputs and saved tensors are fresh tens of MB on every call,
// and first touching them cost more than computing them: on the dev VM a fresh 26 MB buffer
// took 13 ms of page faults in 4 KB pages against 2.4 ms in 2 MB ones (thread CPU time,
// torch.empty + fill_ vs the same under torch's THP_MEM_ALLOC_ENABLE=1), the LSTM forward with
// saved tensors at H=256 B=32 T=200 writes 39 MB per layer and its backward 26 MB more.
// Freed blocks of 256 KB and more are kept (up to buffer_cache_limit(), default 256 MB) and
// handed out again for the next call's buffers of about the same size, which then cost no page
// faults at all.
at::Tensor empty_big(at::IntArrayRef sizes, const at::TensorOptions& options);

// The kept blocks (flashseq.ops.cpu_buffer_cache_bytes / empty_cpu_buffer_cache and the
// FLASHSEQ_CPU_BUFFER_CACHE_MB variable, which flashseq/_jit.py applies when it loads the
// extension). Other systems than Linux keep nothing: the byte count stays 0.
constexpr int64_t kDefaultBufferCacheLimit = int64_t(256) << 20;
// Sets the most bytes kept (0: none; negative counts as 0), freeing the oldest kept blocks
// past the new limit; returns the previous limit.
int64_t set_buffer_cache_limit(int64_t bytes);
// Bytes kept now (blocks no tensor uses).
int64_t buffer_cache_bytes();
// Frees every kept block; blocks in use return to the cache when their tensors are freed.
void empty_buffer_cache();

}  // namespace cpu
}  // namespace flashseq
