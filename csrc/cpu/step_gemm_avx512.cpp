// The float32 register tile of step_gemm.h on AVX-512 (16-float zmm vectors), chosen at run time.
//
// Why: on a Zen 5 (or any AVX-512 core with full-width FMA units) the AVX2 tile uses half the
// FMA width. torch.nn.LSTM/GRU run oneDNN's RNN primitive, which JIT-compiles AVX-512 code, so
// the AVX2 loop lost to it by 2-3x there. The extension is built with AVX2 flags for every
// x86-64 host; only this file's kernel is compiled for AVX-512 (the pragma below), and it runs
// only when the CPU reports AVX-512F (use_avx512_tile()).
//
// Tile: 8 rows x 3 vectors (48 columns) of C in 24 accumulators, 3 panel vectors and one
// broadcast of A: 28 of the 32 zmm registers, 24 independent FMA chains. Fewer rows keep more
// chains busy by spreading consecutive k over 2 or 3 sets of accumulators.
//
// Only raw pointers cross into this file: no ATen or standard-library inline code is compiled
// under the AVX-512 target, so no AVX-512 copy of a shared inline function can be picked by the
// linker for code that runs on other CPUs.
#include <atomic>
#include <cstdint>

#include "step_gemm_avx512.h"

#if defined(FLASHSEQ_HAVE_AVX512_TILE)
#include <immintrin.h>

namespace flashseq {
namespace cpu {

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

bool& avx512_tile_allowed() {
  static bool allowed = true;
  return allowed;
}

namespace {
std::atomic<int64_t> transposed_pack_calls{0};
}  // namespace

void count_transposed_pack() { ++transposed_pack_calls; }

int64_t transposed_packs(bool reset) {
  return reset ? transposed_pack_calls.exchange(0) : transposed_pack_calls.load();
}

}  // namespace cpu
}  // namespace flashseq

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")

#include "avx512_mask.h"

namespace flashseq {
namespace cpu {
namespace {

constexpr int kVecs = 3;      // zmm vectors of C columns per tile (and per packed panel)
constexpr int kWidth = 16;    // floats per zmm
static_assert(kVecs * kWidth == kAvx512PanelCols, "panel width must be the tile width");

// kV of the panel's kVecs vectors (the last panel of an N that is not a multiple of 48 needs
// fewer: at N = 4 H = 1024 it holds 16 columns, and the full-width tile spent 2 of every 66 FMA
// groups of the step on its zero padding). Fewer accumulator chains than 9 spread consecutive k
// over 2 or 3 sets, as for few rows.
template <int kRows, int kV = kVecs>
inline void tile(int64_t K, const float* A, int64_t lda, const float* panel, float* C,
                 int64_t ldc, int64_t cols, bool accumulate) {
  constexpr int kChains = kRows * kV;
  constexpr int kSets = kChains >= 9 ? 1 : (kChains >= 6 ? 2 : 3);
  constexpr int64_t P = kAvx512PanelCols;
  __mmask16 mask[kV];
  for (int v = 0; v < kV; ++v) mask[v] = lanes_below(cols - v * kWidth);
  __m512 acc[kSets][kRows][kV];
  for (int q = 0; q < kSets; ++q)
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < kV; ++v) acc[q][r][v] = _mm512_setzero_ps();
  if (accumulate) {
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < kV; ++v)
        acc[0][r][v] = _mm512_maskz_loadu_ps(mask[v], C + r * ldc + v * kWidth);
  }
  int64_t k = 0;
  for (; k + kSets <= K; k += kSets) {
    for (int q = 0; q < kSets; ++q) {
      // the panel is zero past column `cols`, so whole vectors are safe to load
      const float* row = panel + (k + q) * P;
      __m512 b[kV];
      for (int v = 0; v < kV; ++v) b[v] = _mm512_loadu_ps(row + v * kWidth);
      for (int r = 0; r < kRows; ++r) {
        const __m512 a = _mm512_set1_ps(A[r * lda + k + q]);
        for (int v = 0; v < kV; ++v) acc[q][r][v] = _mm512_fmadd_ps(a, b[v], acc[q][r][v]);
      }
    }
  }
  for (; k < K; ++k) {
    const float* row = panel + k * P;
    __m512 b[kV];
    for (int v = 0; v < kV; ++v) b[v] = _mm512_loadu_ps(row + v * kWidth);
    for (int r = 0; r < kRows; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + k]);
      for (int v = 0; v < kV; ++v) acc[0][r][v] = _mm512_fmadd_ps(a, b[v], acc[0][r][v]);
    }
  }
  for (int q = 1; q < kSets; ++q)
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < kV; ++v) acc[0][r][v] = _mm512_add_ps(acc[0][r][v], acc[q][r][v]);
  for (int r = 0; r < kRows; ++r) {
    float* c = C + r * ldc;
    if (cols == kV * kWidth) {
      for (int v = 0; v < kV; ++v) _mm512_storeu_ps(c + v * kWidth, acc[0][r][v]);
    } else {
      for (int v = 0; v < kV; ++v) _mm512_mask_storeu_ps(c + v * kWidth, mask[v], acc[0][r][v]);
    }
  }
}

}  // namespace

namespace {

// t[c] = column c of the 16 x 16 block whose rows are r[0..15] (r is overwritten): pairs of rows
// interleaved, then pairs of pairs (as doubles), then the four 128-bit lanes gathered in two
// rounds of shuffle_f32x4.
inline void transpose16x16(__m512* r, __m512* t) {
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4 i + q], lane j: column 4 j + q of rows 4 i .. 4 i + 3
    const __m512d a0 = _mm512_castps_pd(t[4 * i]), a1 = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d a2 = _mm512_castps_pd(t[4 * i + 2]), a3 = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
  }
  for (int q = 0; q < 4; ++q) {
    const __m512 w0 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0x88);
    const __m512 w1 = _mm512_shuffle_f32x4(r[q], r[4 + q], 0xDD);
    const __m512 w2 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0x88);
    const __m512 w3 = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0xDD);
    t[q] = _mm512_shuffle_f32x4(w0, w2, 0x88);       // column q
    t[4 + q] = _mm512_shuffle_f32x4(w1, w3, 0x88);   // column 4 + q
    t[8 + q] = _mm512_shuffle_f32x4(w0, w2, 0xDD);   // column 8 + q
    t[12 + q] = _mm512_shuffle_f32x4(w1, w3, 0xDD);  // column 12 + q
  }
}

}  // namespace

void transpose_columns16_avx512(const float* const* col, int64_t ncols, int64_t K, float* dst,
                                int64_t ldd) {
  for (int64_t k0 = 0; k0 < K; k0 += kWidth) {
    const int64_t kn = K - k0 < kWidth ? K - k0 : kWidth;
    const __mmask16 m = lanes_below(kn);
    __m512 r[16], t[16];
    for (int c = 0; c < 16; ++c)
      r[c] = c < ncols ? _mm512_maskz_loadu_ps(m, col[c] + k0) : _mm512_setzero_ps();
    transpose16x16(r, t);
    for (int64_t k = 0; k < kn; ++k) _mm512_storeu_ps(dst + (k0 + k) * ldd, t[k]);
  }
}

void transpose_rows16_avx512(const float* src, int64_t n, int64_t cols, int64_t lds, float* dst,
                             int64_t ldd) {
  const __mmask16 rows = lanes_below(n);
  for (int64_t j0 = 0; j0 < cols; j0 += kWidth) {
    const int64_t jn = cols - j0 < kWidth ? cols - j0 : kWidth;
    const __mmask16 m = lanes_below(jn);
    __m512 r[16], t[16];
    for (int c = 0; c < 16; ++c)
      r[c] = c < n ? _mm512_maskz_loadu_ps(m, src + c * lds + j0) : _mm512_setzero_ps();
    transpose16x16(r, t);
    for (int64_t j = 0; j < jn; ++j) _mm512_mask_storeu_ps(dst + (j0 + j) * ldd, rows, t[j]);
  }
}

namespace {

template <int kV>
void panel_rows_v(int64_t M, int64_t K, const float* A, int64_t lda, const float* panel,
                  float* C, int64_t ldc, int64_t cols, bool accumulate) {
  constexpr int kTile = 8;
  int64_t m = 0;
  for (; m + kTile <= M; m += kTile)
    tile<kTile, kV>(K, A + m * lda, lda, panel, C + m * ldc, ldc, cols, accumulate);
  A += m * lda;
  C += m * ldc;
  switch (M - m) {
    case 7: tile<7, kV>(K, A, lda, panel, C, ldc, cols, accumulate); break;
    case 6: tile<6, kV>(K, A, lda, panel, C, ldc, cols, accumulate); break;
    case 5: tile<5, kV>(K, A, lda, panel, C, ldc, cols, accumulate); break;
    case 4: tile<4, kV>(K, A, lda, panel, C, ldc, cols, accumulate); break;
    case 3: tile<3, kV>(K, A, lda, panel, C, ldc, cols, accumulate); break;
    case 2: tile<2, kV>(K, A, lda, panel, C, ldc, cols, accumulate); break;
    case 1: tile<1, kV>(K, A, lda, panel, C, ldc, cols, accumulate); break;
    default: break;
  }
}

}  // namespace

void panel_rows_avx512(int64_t M, int64_t K, const float* A, int64_t lda, const float* panel,
                       float* C, int64_t ldc, int64_t cols, bool accumulate) {
  // Measured (1 thread, CPU time, paired, AMD EPYC Zen 5, module no_grad forward I=64 H=256 B=32
  // T=200 2 layers, whose last panel holds 16 columns): 0.982-0.988 of the full-width tiles'
  // time in three runs of 33-50 pairs.
  if (cols > 2 * kWidth) {
    panel_rows_v<kVecs>(M, K, A, lda, panel, C, ldc, cols, accumulate);
  } else if (cols > kWidth) {
    panel_rows_v<2>(M, K, A, lda, panel, C, ldc, cols, accumulate);
  } else {
    panel_rows_v<1>(M, K, A, lda, panel, C, ldc, cols, accumulate);
  }
}

}  // namespace cpu
}  // namespace flashseq

#pragma GCC pop_options

#endif  // FLASHSEQ_HAVE_AVX512_TILE
