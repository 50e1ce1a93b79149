// See row_gemv_avx512.h. Compiled for AVX-512 by the pragma below (as step_gemm_avx512.cpp: only
// raw pointers cross into this file, no ATen inline code is compiled under the AVX-512 target).
#include <cstdint>
#include <utility>

#include "row_gemv_avx512.h"

#if defined(FLASHSEQ_HAVE_AVX512_TILE)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")

#include "avx512_mask.h"

namespace flashseq {
namespace cpu {
namespace {

constexpr int kWidth = 16;       // floats per zmm
constexpr int kChunkVecs = 16;   // accumulators: 256 columns per pass over the rows

// out[0 .. cols) += sum_k x[k] * (base + row_offset[k])[0 .. cols), kVecs vectors of columns
// (the last one masked to `cols`) held in registers over all K rows. Up to 8 vectors, two sets
// of accumulators take alternate rows: 2 FMA units x 4 cycles of latency want 8+ independent
// chains, and each accumulator gets one FMA per row.
template <int kVecs>
void chunk(int64_t K, int64_t cols, const float* x, const float* base, const int64_t* row_offset,
           float* out, bool descending) {
  constexpr int kSets = kVecs <= 8 ? 2 : 1;
  const __mmask16 tail = lanes_below(cols - (kVecs - 1) * kWidth);
  __m512 acc[kSets][kVecs];
  for (int v = 0; v < kVecs - 1; ++v) acc[0][v] = _mm512_loadu_ps(out + v * kWidth);
  acc[0][kVecs - 1] = _mm512_maskz_loadu_ps(tail, out + (kVecs - 1) * kWidth);
  for (int q = 1; q < kSets; ++q)
    for (int v = 0; v < kVecs; ++v) acc[q][v] = _mm512_setzero_ps();
  const int64_t step = descending ? -1 : 1;
  int64_t i = 0, k = descending ? K - 1 : 0;
  for (; i + kSets <= K; i += kSets) {
    for (int q = 0; q < kSets; ++q, k += step) {
      const float* row = base + row_offset[k];
      const __m512 a = _mm512_set1_ps(x[k]);
      for (int v = 0; v < kVecs - 1; ++v)
        acc[q][v] = _mm512_fmadd_ps(a, _mm512_loadu_ps(row + v * kWidth), acc[q][v]);
      acc[q][kVecs - 1] = _mm512_fmadd_ps(
          a, _mm512_maskz_loadu_ps(tail, row + (kVecs - 1) * kWidth), acc[q][kVecs - 1]);
    }
  }
  for (; i < K; ++i, k += step) {
    const float* row = base + row_offset[k];
    const __m512 a = _mm512_set1_ps(x[k]);
    for (int v = 0; v < kVecs - 1; ++v)
      acc[0][v] = _mm512_fmadd_ps(a, _mm512_loadu_ps(row + v * kWidth), acc[0][v]);
    acc[0][kVecs - 1] = _mm512_fmadd_ps(
        a, _mm512_maskz_loadu_ps(tail, row + (kVecs - 1) * kWidth), acc[0][kVecs - 1]);
  }
  for (int q = 1; q < kSets; ++q)
    for (int v = 0; v < kVecs; ++v) acc[0][v] = _mm512_add_ps(acc[0][v], acc[q][v]);
  for (int v = 0; v < kVecs - 1; ++v) _mm512_storeu_ps(out + v * kWidth, acc[0][v]);
  _mm512_mask_storeu_ps(out + (kVecs - 1) * kWidth, tail, acc[0][kVecs - 1]);
}

using ChunkFn = void (*)(int64_t, int64_t, const float*, const float*, const int64_t*, float*, bool);

template <int... V>
constexpr ChunkFn chunk_for(int vecs, std::integer_sequence<int, V...>) {
  ChunkFn table[] = {chunk<V + 1>...};
  return table[vecs - 1];
}

}  // namespace

void row_gemv_avx512(int64_t K, int64_t N, const float* x, const float* base,
                     const int64_t* row_offset, float* out, bool descending) {
  for (int64_t c0 = 0; c0 < N; c0 += kChunkVecs * kWidth) {
    const int64_t cols = N - c0 < kChunkVecs * kWidth ? N - c0 : kChunkVecs * kWidth;
    const int vecs = static_cast<int>((cols + kWidth - 1) / kWidth);
    chunk_for(vecs, std::make_integer_sequence<int, kChunkVecs>{})(K, cols, x, base + c0,
                                                                     row_offset, out + c0,
                                                                     descending);
  }
}

}  // namespace cpu
}  // namespace flashseq

#pragma GCC pop_options

#endif  // FLASHSEQ_HAVE_AVX512_TILE
