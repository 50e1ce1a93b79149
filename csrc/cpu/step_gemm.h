// The per-step recurrent product C[M, N] (+)= A[M, K] @ Bm[K, N] (row-major, unit column
// stride, M = batch rows, N and K a few hundred at most per head).
//
// Why not always at::mm: at small batch each step's product is a few microseconds of work and
// ATen's dispatch plus MKL's per-call packing of the weight cost as much again (B=1, H=128: our
// step took 13.6 us against oneDNN's 8.5 us). This kernel streams Bm once per pair of rows,
// keeping a kRows x kTileVecs tile of C in vector registers: at one row that is still 4
// independent FMA chains, enough to hide the FMA latency. Above `max_batch` rows MKL (through
// at::mm) wins and is used instead; the threshold is measured, see cpu.py's docstring.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "vec_lanes.h"

namespace flashseq {
namespace cpu {

// Largest batch for which the loops use step_gemm instead of at::mm (default 4, measured in
// fused_rnn_forward.cpp; settable for benchmarks and tests).
int64_t& step_gemm_max_batch();

#if defined(CPU_CAPABILITY_AVX2)

constexpr int kTileVecs = 4;  // vectors of C columns per tile
constexpr int kTileRows = 2;  // rows of C per tile: 2 x 4 accumulators + 4 loads fit 16 registers

template <typename scalar_t, int kRows>
inline void step_gemm_tile(int64_t K, const scalar_t* A, int64_t lda, const scalar_t* Bm,
                           int64_t ldb, scalar_t* C, int64_t ldc, bool accumulate) {
  using V = at::vec::Vectorized<scalar_t>;
  constexpr int kVecs = kTileVecs;
  V acc[kRows][kVecs];
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVecs; ++v) {
      acc[r][v] = accumulate ? V::loadu(C + r * ldc + v * V::size()) : V(scalar_t(0));
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    V b[kVecs];
    for (int v = 0; v < kVecs; ++v) b[v] = V::loadu(Bm + k * ldb + v * V::size());
    for (int r = 0; r < kRows; ++r) {
      const V a(A[r * lda + k]);
      for (int v = 0; v < kVecs; ++v) acc[r][v] = at::vec::fmadd(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVecs; ++v) acc[r][v].store(C + r * ldc + v * V::size());
  }
}

// Columns [n0, n1) of C for all M rows; n1 - n0 a multiple of the tile width except at the end.
template <typename scalar_t>
inline void step_gemm_columns(int64_t M, int64_t n0, int64_t n1, int64_t K, const scalar_t* A,
                              int64_t lda, const scalar_t* Bm, int64_t ldb, scalar_t* C,
                              int64_t ldc, bool accumulate) {
  constexpr int64_t kTileCols = kTileVecs * at::vec::Vectorized<scalar_t>::size();
  static_assert(kTileRows == 2, "the row loop below handles pairs plus one odd row");
  int64_t n = n0;
  for (; n + kTileCols <= n1; n += kTileCols) {
    int64_t m = 0;
    for (; m + 2 <= M; m += 2)
      step_gemm_tile<scalar_t, 2>(K, A + m * lda, lda, Bm + n, ldb, C + m * ldc + n, ldc, accumulate);
    if (m < M)
      step_gemm_tile<scalar_t, 1>(K, A + m * lda, lda, Bm + n, ldb, C + m * ldc + n, ldc, accumulate);
  }
  for (; n < n1; ++n) {  // the last N % kTileCols columns
    for (int64_t m = 0; m < M; ++m) {
      scalar_t sum = accumulate ? C[m * ldc + n] : scalar_t(0);
      for (int64_t k = 0; k < K; ++k) sum += A[m * lda + k] * Bm[k * ldb + n];
      C[m * ldc + n] = sum;
    }
  }
}

// For each of H heads h: C_h (+)= A_h @ B_h, heads `a_head`, `b_head`, `c_head` elements apart.
template <typename scalar_t>
void step_gemm(int64_t H, int64_t M, int64_t N, int64_t K, const scalar_t* A, int64_t lda,
               int64_t a_head, const scalar_t* Bm, int64_t ldb, int64_t b_head, scalar_t* C,
               int64_t ldc, int64_t c_head, bool accumulate) {
  constexpr int64_t kTileCols = kTileVecs * at::vec::Vectorized<scalar_t>::size();
  const int64_t blocks = (N + kTileCols - 1) / kTileCols;  // column blocks per head
  // A task of at least ~64K multiply-adds keeps OpenMP's hand-off cost small next to it.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, M * K * kTileCols));
  at::parallel_for(0, H * blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t h = i / blocks, first = i % blocks;
      const int64_t last = std::min(blocks, first + (end - i));  // stay within head h
      step_gemm_columns(M, first * kTileCols, std::min(N, last * kTileCols), K, A + h * a_head,
                        lda, Bm + h * b_head, ldb, C + h * c_head, ldc, accumulate);
      i += last - first;
    }
  });
}

inline bool use_step_gemm(int64_t batch) { return batch <= step_gemm_max_batch(); }

#else

inline bool use_step_gemm(int64_t) { return false; }

template <typename scalar_t>
void step_gemm(int64_t, int64_t, int64_t, int64_t, const scalar_t*, int64_t, int64_t,
               const scalar_t*, int64_t, int64_t, scalar_t*, int64_t, int64_t, bool) {
  TORCH_CHECK(false, "step_gemm needs the AVX2 build");
}

#endif

}  // namespace cpu
}  // namespace flashseq
