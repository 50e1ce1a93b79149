// The per-step recurrent product C[M, N] (+)= A[M, K] @ Bm[K, N] (row-major, M = live batch
// rows, N and K a few hundred to a few thousand per head).
//
// Why not at::mm every step: at::mm hands the same weight to MKL T times, and MKL re-packs it
// on every call (a third of the GEMM time at B=16, H=128 under perf: sgemm_scopy_down16), plus
// ATen's dispatch. Here the weight is packed ONCE per sequence into column panels, each a
// contiguous [K, kPanelCols] block, and every step streams the panels: a panel of 16 columns is
// 8 KB at K=128 and 32 KB at K=512, so it stays in L1/L2 while all row tiles of the step use it.
// Reading the unpacked weight instead (row stride G*DH floats, 8 KB at H=512) maps every k row
// of a panel to the same few cache sets, and the panel fell out of cache between row tiles:
// that is why the first, unpacked version of this kernel ran at half MKL's speed at B=16.
//
// The register tile is the classic AVX2 one: 6 rows x 2 vectors (16 floats) of C in 12
// accumulators, 2 panel vectors and 1 broadcast of A per k: 15 of the 16 ymm registers, 12
// independent FMA chains (enough to cover 2 FMA units x 5 cycles latency).
#pragma once

#include <algorithm>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include "big_alloc.h"
#include "step_gemm_avx512.h"
#include "vec_lanes.h"

namespace flashseq {
namespace cpu {

// Largest live batch for which the loops use this kernel instead of at::mm (set in
// fused_rnn_forward.cpp from measurements; settable for benchmarks and tests).
int64_t& step_gemm_max_batch();
// Whether step_gemm's AVX-512 tile splits panels across threads by columns (default true) or
// in OpenMP's equal counts of panels; a switch for paired benchmarks and tests.
inline bool& step_gemm_balanced() {
  static bool balanced = true;
  return balanced;
}

#if defined(CPU_CAPABILITY_AVX2)

constexpr int kPanelVecs = 2;  // vectors of C columns per tile (and per packed panel)
constexpr int kTileRows = 6;   // rows of C per tile: 6 x 2 accumulators + 3 operands in 16 ymm

// Columns per packed panel: the AVX-512 tile's 48 for float32 on a CPU that has it
// (step_gemm_avx512.cpp), else 2 AVX2 vectors. step_gemm reads the width back from the packed
// tensor, so panels packed for one tile are never run through the other.
template <typename scalar_t>
inline int64_t panel_cols() {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (use_avx512_tile()) return kAvx512PanelCols;
  }
  return kPanelVecs * (32 / static_cast<int64_t>(sizeof(scalar_t)));  // 256-bit vectors
}

// Packs H matrices [K, N] into [H, panels, K, panel_cols] (panels = ceil(N / panel_cols), zero
// past column N). Element (h, k, n) is src[h * head_stride + row_offset[k] + col_offset[n]]:
// offsets rather than a dense source, so the panels are filled straight from the caller's r
// whatever its strides, once per sequence.
template <typename scalar_t>
at::Tensor pack_panels(const scalar_t* src, int64_t H, int64_t head_stride,
                       const std::vector<int64_t>& row_offset,
                       const std::vector<int64_t>& col_offset, const at::TensorOptions& options) {
  const int64_t P = panel_cols<scalar_t>();
  const int64_t K = static_cast<int64_t>(row_offset.size());
  const int64_t N = static_cast<int64_t>(col_offset.size());
  const int64_t panels = (N + P - 1) / P;
  at::Tensor packed = empty_big({H, panels, K, P}, options);  // reused across calls
  scalar_t* out = packed.data_ptr<scalar_t>();
  // Read along whichever axis of the source is closer to contiguous: the forward packs r with
  // its d axis dense (a transposed view of weight_hh), where a k-outer loop read one value per
  // cache line (3% of an LSTM forward at H=200 T=35 under perf).
  const bool columns_outer = K > 1 && N > 1 &&
                             std::abs(row_offset[1] - row_offset[0]) < std::abs(col_offset[1] - col_offset[0]);
  // Columns dense along k (the forward's r, a transposed view of weight_hh) into the AVX-512
  // tile's float32 panels: transposed 16 x 16 in registers (transpose_columns16_avx512), 2.5x
  // faster than the scalar loop below (H=256: 34 vs 89 us per call).
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
  bool transpose16 = std::is_same_v<scalar_t, float> && P == kAvx512PanelCols && columns_outer;
#else
  bool transpose16 = false;
#endif
  for (int64_t k = 0; transpose16 && k < K; ++k) transpose16 = row_offset[k] == row_offset[0] + k;
  // Rows dense along n (the backward's Wt from the modules' r): each panel row is one straight
  // copy instead of an indexed gather per float (H=200: the backward's pack took a twentieth of
  // its time, perf).
  bool dense_cols = !columns_outer;
  for (int64_t n = 0; dense_cols && n < N; ++n) dense_cols = col_offset[n] == col_offset[0] + n;
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
  if (transpose16) count_transposed_pack();
#endif
  at::parallel_for(0, H * panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t h = i / panels, n0 = (i % panels) * P, cols = std::min(P, N - n0);
      const int64_t* cols_at = col_offset.data() + n0;
      const scalar_t* head = src + h * head_stride;
      scalar_t* dst = out + i * K * P;
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (transpose16) {  // 16 columns at a time through registers; zeros past column N
          for (int64_t c0 = 0; c0 < P; c0 += 16) {
            const int64_t group = std::max<int64_t>(0, std::min<int64_t>(16, cols - c0));
            const float* col[16];
            for (int64_t c = 0; c < 16; ++c)
              col[c] = c < group ? head + cols_at[c0 + c] + row_offset[0] : nullptr;
            transpose_columns16_avx512(col, group, K, dst + c0, P);
          }
          continue;
        }
      }
#endif
      if (columns_outer) {
        for (int64_t c = 0; c < cols; ++c) {
          const scalar_t* col = head + cols_at[c];
          for (int64_t k = 0; k < K; ++k) dst[k * P + c] = col[row_offset[k]];
        }
      } else if (dense_cols) {
        for (int64_t k = 0; k < K; ++k) std::copy_n(head + row_offset[k] + cols_at[0], cols, dst + k * P);
      } else {
        for (int64_t k = 0; k < K; ++k) {
          const scalar_t* row = head + row_offset[k];
          for (int64_t c = 0; c < cols; ++c) dst[k * P + c] = row[cols_at[c]];
        }
      }
      for (int64_t k = 0; k < K && cols < P; ++k) {  // zero past column N: the tiles read it
        for (int64_t c = cols; c < P; ++c) dst[k * P + c] = scalar_t(0);
      }
    }
  });
  return packed;
}

// The few AVX2 operations the tile needs, on raw registers: through at::vec::Vectorized GCC
// kept the 12 accumulators mirrored in memory (a store each per k) because the partial
// load/store members go through the object's address.
template <typename scalar_t>
struct Simd;

template <>
struct Simd<float> {
  using R = __m256;
  static constexpr int64_t kWidth = 8;
  static R zero() { return _mm256_setzero_ps(); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static R broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static __m256i mask(int64_t n) {  // lanes < n set
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static R load(const float* p, int64_t n) { return _mm256_maskload_ps(p, mask(n)); }
  static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  static void store(float* p, R v, int64_t n) { _mm256_maskstore_ps(p, mask(n), v); }
};

template <>
struct Simd<double> {
  using R = __m256d;
  static constexpr int64_t kWidth = 4;
  static R zero() { return _mm256_setzero_pd(); }
  static R load(const double* p) { return _mm256_loadu_pd(p); }
  static R broadcast(const double* p) { return _mm256_broadcast_sd(p); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static R add(R a, R b) { return _mm256_add_pd(a, b); }
  static __m256i mask(int64_t n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static R load(const double* p, int64_t n) { return _mm256_maskload_pd(p, mask(n)); }
  static void store(double* p, R v) { _mm256_storeu_pd(p, v); }
  static void store(double* p, R v, int64_t n) { _mm256_maskstore_pd(p, mask(n), v); }
};

// C[kRows, cols] (+)= A[kRows, K] @ panel[K, cols], cols <= panel_cols (the last panel's tail
// is loaded and stored under a lane mask; the panel's zero padding keeps unused lanes harmless).
template <typename scalar_t, int kRows>
inline void panel_tile(int64_t K, const scalar_t* A, int64_t lda, const scalar_t* panel,
                       scalar_t* C, int64_t ldc, int64_t cols, bool accumulate) {
  using S = Simd<scalar_t>;
  using R = typename S::R;
  constexpr int64_t W = S::kWidth, P = kPanelVecs * W;
  static_assert(kPanelVecs == 2, "the k loop below is written for two vectors per row");
  const bool full = cols == P;
  const int64_t tail = cols - W;  // columns in the second vector (<= 0: none)
  R acc0[kRows], acc1[kRows];
  for (int r = 0; r < kRows; ++r) {
    scalar_t* c = C + r * ldc;
    if (!accumulate) {
      acc0[r] = acc1[r] = S::zero();
    } else if (full) {
      acc0[r] = S::load(c);
      acc1[r] = S::load(c + W);
    } else {
      acc0[r] = S::load(c, std::min(W, cols));
      acc1[r] = tail > 0 ? S::load(c + W, tail) : S::zero();
    }
  }
  int64_t k = 0;
  // Few rows give few FMA chains (2 per row) for 2 units x 4-5 cycles of latency, so 1- and
  // 2-row tiles spread consecutive k over 4 or 2 sets of accumulators, added up at the end.
  constexpr int kSets = kRows == 1 ? 4 : (kRows == 2 ? 2 : 1);
  if constexpr (kSets > 1) {
    R more0[kSets - 1][kRows], more1[kSets - 1][kRows];
    for (int q = 0; q < kSets - 1; ++q) {
      for (int r = 0; r < kRows; ++r) more0[q][r] = more1[q][r] = S::zero();
    }
    for (; k + kSets <= K; k += kSets) {
      const R b0 = S::load(panel + k * P), b1 = S::load(panel + k * P + W);
      for (int r = 0; r < kRows; ++r) {
        const R a = S::broadcast(A + r * lda + k);
        acc0[r] = S::fma(a, b0, acc0[r]);
        acc1[r] = S::fma(a, b1, acc1[r]);
      }
      for (int q = 0; q < kSets - 1; ++q) {
        const scalar_t* row = panel + (k + 1 + q) * P;
        const R c0 = S::load(row), c1 = S::load(row + W);
        for (int r = 0; r < kRows; ++r) {
          const R a = S::broadcast(A + r * lda + k + 1 + q);
          more0[q][r] = S::fma(a, c0, more0[q][r]);
          more1[q][r] = S::fma(a, c1, more1[q][r]);
        }
      }
    }
    for (int q = 0; q < kSets - 1; ++q) {
      for (int r = 0; r < kRows; ++r) {
        acc0[r] = S::add(acc0[r], more0[q][r]);
        acc1[r] = S::add(acc1[r], more1[q][r]);
      }
    }
  }
  for (; k < K; ++k) {
    const R b0 = S::load(panel + k * P), b1 = S::load(panel + k * P + W);
    for (int r = 0; r < kRows; ++r) {
      const R a = S::broadcast(A + r * lda + k);
      acc0[r] = S::fma(a, b0, acc0[r]);
      acc1[r] = S::fma(a, b1, acc1[r]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    scalar_t* c = C + r * ldc;
    if (full) {
      S::store(c, acc0[r]);
      S::store(c + W, acc1[r]);
    } else {
      S::store(c, acc0[r], std::min(W, cols));
      if (tail > 0) S::store(c + W, acc1[r], tail);
    }
  }
}

// All M rows of one panel: whole 6-row tiles, then one tile of the remaining 1..5 rows.
template <typename scalar_t>
inline void panel_rows(int64_t M, int64_t K, const scalar_t* A, int64_t lda, const scalar_t* panel,
                       scalar_t* C, int64_t ldc, int64_t cols, bool accumulate) {
  int64_t m = 0;
  for (; m + kTileRows <= M; m += kTileRows)
    panel_tile<scalar_t, kTileRows>(K, A + m * lda, lda, panel, C + m * ldc, ldc, cols, accumulate);
  A += m * lda;
  C += m * ldc;
  switch (M - m) {
    case 5: panel_tile<scalar_t, 5>(K, A, lda, panel, C, ldc, cols, accumulate); break;
    case 4: panel_tile<scalar_t, 4>(K, A, lda, panel, C, ldc, cols, accumulate); break;
    case 3: panel_tile<scalar_t, 3>(K, A, lda, panel, C, ldc, cols, accumulate); break;
    case 2: panel_tile<scalar_t, 2>(K, A, lda, panel, C, ldc, cols, accumulate); break;
    case 1: panel_tile<scalar_t, 1>(K, A, lda, panel, C, ldc, cols, accumulate); break;
    default: break;
  }
}

// For each of H heads h: C_h[M, N] (+)= A_h[M, K] @ B_h, B_h given packed by pack_panels;
// A_h and C_h are `a_head` and `c_head` elements apart.
template <typename scalar_t>
void step_gemm(int64_t H, int64_t M, int64_t N, int64_t K, const scalar_t* A, int64_t lda,
               int64_t a_head, const at::Tensor& packed, scalar_t* C, int64_t ldc, int64_t c_head,
               bool accumulate) {
  const int64_t P = packed.size(3);
  const int64_t panels = packed.size(1);
  const scalar_t* panel0 = packed.data_ptr<scalar_t>();
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (P == kAvx512PanelCols) {
      const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, M * K * P));
      const int64_t items = H * panels;
      const int64_t parts =
          std::min<int64_t>(at::get_num_threads(), (items + grain - 1) / grain);
      const auto run = [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t h = i / panels, n0 = (i % panels) * P;
          panel_rows_avx512(M, K, A + h * a_head, lda, panel0 + i * K * P, C + h * c_head + n0,
                            ldc, std::min(P, N - n0), accumulate);
        }
      };
      if (parts <= 1 || !step_gemm_balanced() || at::in_parallel_region()) {
        at::parallel_for(0, items, grain, run);
        return;
      }
      // Contiguous ranges of panels of about equal columns per thread (a panel costs its
      // columns rounded up to 16-float vectors) where OpenMP's equal counts of panels did not
      // balance a narrow last panel: N=200 (5 panels, the last 8 columns wide) gave one thread
      // 144 columns and the other 56; now 96 and 104. Measured (2 threads, wall clock, paired
      // against the equal counts, module fwd+bwd I=H=200 B=20 T=35 2 layers, AMD EPYC Zen 5):
      // LSTM 0.967 (malloc pinned) and 0.978 (plain), GRU 0.981; H=128, 256, 512 within noise.
      const int64_t last = N - (panels - 1) * P;
      const int64_t panel_cost = P, last_cost = (last + 15) / 16 * 16;
      const int64_t head_cost = (panels - 1) * panel_cost + last_cost;
      const auto cost_before = [&](int64_t i) {  // cost of items [0, i)
        const int64_t h = i / panels, p = i % panels;
        return h * head_cost + p * panel_cost;
      };
      const int64_t total = H * head_cost;
      std::vector<int64_t> bound(parts + 1, items);
      bound[0] = 0;
      for (int64_t j = 1; j < parts; ++j) {
        // the item boundary whose cost before it lies nearest j / parts of the total
        const int64_t target = total * j / parts;
        int64_t i = bound[j - 1];
        while (i < items && cost_before(i + 1) <= target) ++i;
        if (i < items && target - cost_before(i) > cost_before(i + 1) - target) ++i;
        bound[j] = i;
      }
      at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) run(bound[j], bound[j + 1]);
      });
      return;
    }
  }
#endif
  // A task of at least ~64K multiply-adds keeps OpenMP's hand-off cost small next to it.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, M * K * P));
  at::parallel_for(0, H * panels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t h = i / panels, n0 = (i % panels) * P;
      panel_rows(M, K, A + h * a_head, lda, panel0 + i * K * P, C + h * c_head + n0, ldc,
                 std::min(P, N - n0), accumulate);
    }
  });
}

inline bool use_step_gemm(int64_t batch) { return batch <= step_gemm_max_batch(); }

#else

inline bool use_step_gemm(int64_t) { return false; }

template <typename scalar_t>
at::Tensor pack_panels(const scalar_t*, int64_t, int64_t, const std::vector<int64_t>&,
                       const std::vector<int64_t>&, const at::TensorOptions&) {
  TORCH_CHECK(false, "step_gemm needs the AVX2 build");
}

template <typename scalar_t>
void step_gemm(int64_t, int64_t, int64_t, int64_t, const scalar_t*, int64_t, int64_t,
               const at::Tensor&, scalar_t*, int64_t, int64_t, bool) {
  TORCH_CHECK(false, "step_gemm needs the AVX2 build");
}

#endif

}  // namespace cpu
}  // namespace flashseq
