// Weight gradients sum_k a[k]^T d[k] over many rows k on the AVX-512 step GEMM tile
// (weight_grad.cpp), for the CPU loop's d(r) and the modules' input projection.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "step_gemm_avx512.h"

namespace flashseq {
namespace cpu {

#if defined(FLASHSEQ_HAVE_AVX512_TILE)
// C [R, N] = At [R, K] @ D [K, N] over the rows k in `ranges` ([begin, end) pairs; other rows
// are left out), and colsum [N] = the column sums of D over the same rows; both overwritten.
// At's rows are lda apart (k contiguous), D's rows ldd apart (n contiguous), C dense [R, N].
//
// Why not one library GEMM: the product contracts the row axis of D, and oneDNN's linear wants
// the contracted axis contiguous in both operands, so it made a transposed copy of D first
// (d(rh) at H=256 B=32 T=200 is 26 MB: 41 ms of thread time against 18 ms for the GEMM alone
// on contiguous operands). Here D is read once, in k-blocks: each 48-column block of a k-block
// is copied into a panel (its column sums taken on the way) and the tile of step_gemm runs all
// R rows of At's block against it. The k-blocks are the outer loop so At's block stays in L2
// while every panel uses it.
void blocked_grad_gemm(const float* At, int64_t lda, const float* D, int64_t ldd, int64_t R,
                       int64_t N, const std::vector<std::pair<int64_t, int64_t>>& ranges,
                       float* C, float* colsum);
#endif

// Floats of At's k-block in blocked_grad_gemm: half this CPU's L2 (256 KB to 1 MB).
int64_t grad_block_floats();
// The most rows R of At (the recurrent d(W)'s DH, the projection's input features) for which the
// loop and the modules use blocked_grad_gemm rather than oneDNN: 256, or 512 with an L2 of 1 MB
// and more.
int64_t grad_gemm_max_rows();

// dst[j * ldd + i] = src[i * lds + j] for i < rows, j < cols (float32): a transpose with
// row strides on both sides (ldd >= rows, lds >= cols).
void transpose_blocked(const float* src, int64_t rows, int64_t cols, int64_t lds, float* dst,
                       int64_t ldd);

// float32 CPU x [M, K], dy [M, N] -> (dy^T @ x [N, K], dy.sum(0) [N]), the weight and bias
// gradients of a linear layer, through blocked_grad_gemm (dy is never transposed in memory).
std::tuple<at::Tensor, at::Tensor> linear_weight_grad(const at::Tensor& x, const at::Tensor& dy);

// Whether linear_weight_grad runs the AVX-512 kernel here (else it uses at::mm and at::sum).
bool linear_weight_grad_fast();

}  // namespace cpu
}  // namespace flashseq
