// Large one-off GEMMs of the CPU backward through oneDNN when torch has it (onednn_gemm.cpp).
#pragma once

#include <ATen/ATen.h>

namespace flashseq {
namespace cpu {

// a [M, K] @ b_t^T with b_t [N, K] (either may be a transposed view) -> [M, N], float32:
// through torch's oneDNN linear op (mkldnn::_linear_pointwise) when this torch registers it,
// else at::mm. Why: at::mm calls MKL's sgemm, which takes a slow path on AMD processors
// (2048x512x2048 on the Zen 5 dev box, 1 thread: 120 ms vs 42 ms through oneDNN).
at::Tensor mm_transposed_b(const at::Tensor& a, const at::Tensor& b_t);

}  // namespace cpu
}  // namespace flashseq
