// The AVX-512 float32 tile of the per-step GEMM (step_gemm_avx512.cpp), declared for step_gemm.h.
// Plain declarations only: this header is included both by that file and by AVX2-built code.
#pragma once

#include <cstdint>

// GCC and Clang on x86-64 can compile one function for AVX-512 in an otherwise AVX2 build.
#if defined(CPU_CAPABILITY_AVX2) && defined(__x86_64__) && defined(__GNUC__)
#define FLASHSEQ_HAVE_AVX512_TILE 1
#endif

namespace flashseq {
namespace cpu {

// Columns per packed panel for the AVX-512 tile (3 vectors of 16 floats).
constexpr int64_t kAvx512PanelCols = 48;

#if defined(FLASHSEQ_HAVE_AVX512_TILE)
// Whether this CPU runs AVX-512F instructions (asked once).
bool cpu_has_avx512();
// Switch for tests and benchmarks (default true): false keeps float32 on the AVX2 tile.
bool& avx512_tile_allowed();
// C[M, cols] (+)= A[M, K] @ panel[K, cols], the panel packed kAvx512PanelCols wide and zero past
// `cols` (<= kAvx512PanelCols); A rows lda apart, C rows ldc apart.
void panel_rows_avx512(int64_t M, int64_t K, const float* A, int64_t lda, const float* panel,
                       float* C, int64_t ldc, int64_t cols, bool accumulate);
// dst[k * ldd + c] = col[c][k] for k < K and c < ncols (<= 16), 0 for ncols <= c < 16: sixteen
// columns each dense along k, written as K rows of 16 (the weight packers' transpose; 16 x 16
// blocks in registers where a scalar loop stored one float per cache line).
// For tests: weight packings (one per pack_panels / pack_lstm_gate_panels call) that went
// through transpose_columns16_avx512; reset(true) zeroes the count.
void count_transposed_pack();
int64_t transposed_packs(bool reset);
void transpose_columns16_avx512(const float* const* col, int64_t ncols, int64_t K, float* dst,
                                int64_t ldd);
// dst[j * ldd + c] = src[c * lds + j] for c < n (<= 16) and j < cols: n rows transposed 16 x 16
// in registers, only the n lanes of each dst row stored (transpose_blocked's AVX-512 path).
void transpose_rows16_avx512(const float* src, int64_t n, int64_t cols, int64_t lds, float* dst,
                             int64_t ldd);
inline bool use_avx512_tile() { return avx512_tile_allowed() && cpu_has_avx512(); }
#else
inline bool use_avx512_tile() { return false; }
#endif

}  // namespace cpu
}  // namespace flashseq
