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
// Freed blocks are kept (up to 256 MB, big_alloc.cpp) and handed out again for the next
// call's buffers of about the same size, which then cost no page faults at all.
at::Tensor empty_big(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace cpu
}  // namespace flashseq
