// out += x @ Wt for ONE row x on AVX-512, reading Wt's rows where they lie (row_gemv_avx512.cpp):
// the backward's per-step d(h_prev) += d(rh) @ W^T at a live batch of one row.
// Plain declarations only: this header is included by AVX2-built code.
#pragma once

#include <cstdint>

#include "step_gemm_avx512.h"

namespace flashseq {
namespace cpu {

// Switch for tests and benchmarks (fused_rnn_backward.cpp): 2 (the default) lets one-row steps
// run row_gemv_avx512 in alternating directions, 1 always ascending, 0 keeps them on step_gemm.
int& row_gemv_mode();

#if defined(FLASHSEQ_HAVE_AVX512_TILE)
// out[0 .. N) += sum over k < K of x[k] * row_k[0 .. N), row_k = base + row_offset[k] (N dense
// floats each), k ascending, or descending when `descending`.
//
// Why not step_gemm at one row: its packed panels are a second copy of the weight (1 MB at
// H=256 LSTM, packed on every call, 48-column panels padding 256 columns to 288), and one row
// reuses nothing, so the step is a pure stream of the weight. Reading the module's weight_hh
// rows in place streams exactly the weight; alternating the direction every step (the caller
// passes `descending`) starts each step on the rows the previous one read last, which are still
// in L2 when the weight is about L2's size.
void row_gemv_avx512(int64_t K, int64_t N, const float* x, const float* base,
                     const int64_t* row_offset, float* out, bool descending);
#endif

}  // namespace cpu
}  // namespace flashseq
