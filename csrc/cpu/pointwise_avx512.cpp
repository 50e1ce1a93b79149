// The forward and backward pointwise passes of the LSTM and GRU cells on AVX-512 float32 vectors (16 units at
// a time), chosen at run time like the step GEMM's AVX-512 tile (step_gemm_avx512.h).
//
// Why: with the AVX-512 step GEMM, the AVX2 pointwise pass (Sleef's 1-ulp expf, 8 lanes) became
// the larger part of an LSTM step at H=128 (perf, B=16 T=512: 26% of samples in the pointwise
// loop and expf against 18% in the GEMM tile). Here the cell formulas are the same shared
// headers of csrc/cells/, instantiated with a 16-lane value type whose exp is a degree-6
// polynomial after range reduction (Cephes' expf coefficients, ~1 ulp) scaled by vscalefps,
// whose division is a Newton-refined reciprocal, and whose tanh is 1 - 2/(1 + exp(2x)) with
// the odd series below |x| = 1/4 (as vec_lanes.h).
//
// The cell headers are included after the target pragma so that their templates instantiate
// for AVX-512; only the 16-lane instantiations are used in this file (the scalar MathOps inline
// members are never emitted here), and only raw pointers cross its boundary.
#include <math.h>

#include <cstdint>

#include "pointwise_avx512.h"

#if defined(FLASHSEQ_HAVE_AVX512_TILE)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")

#include "avx512_mask.h"

#include "cells/gru.h"
#include "cells/lstm.h"
#include "lstm_update_avx512.h"

namespace flashseq {
namespace cpu {
namespace {

// Forced inline: see lstm_update16.
#define FLASHSEQ_FORCE_INLINE inline __attribute__((always_inline))

// 16 float lanes with the arithmetic the cell headers use.
struct F16 {
  __m512 v;
  F16() = default;
  explicit F16(__m512 x) : v(x) {}
  F16(float x) : v(_mm512_set1_ps(x)) {}  // NOLINT: T(1) in the cell formulas
};
inline F16 operator+(F16 a, F16 b) { return F16(_mm512_add_ps(a.v, b.v)); }
inline F16 operator-(F16 a, F16 b) { return F16(_mm512_sub_ps(a.v, b.v)); }
inline F16 operator*(F16 a, F16 b) { return F16(_mm512_mul_ps(a.v, b.v)); }
// a / b as a * (1/b): 1/b from vrcp14ps (14 bits) and one Newton step (about 1 ulp), several
// times cheaper than vdivps. b must be finite: the cells divide only by 1 + exp(..), which
// exp16's clamp keeps finite.
inline F16 operator/(F16 a, F16 b) {
  const __m512 x0 = _mm512_rcp14_ps(b.v);
  const __m512 x1 = _mm512_mul_ps(x0, _mm512_fnmadd_ps(b.v, x0, _mm512_set1_ps(2.0f)));
  return F16(_mm512_mul_ps(a.v, x1));
}
inline F16 operator-(F16 a) {  // flip the sign bit (an AVX-512F integer xor; xor_ps needs DQ)
  return F16(_mm512_castsi512_ps(
      _mm512_xor_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(static_cast<int>(0x80000000u)))));
}

FLASHSEQ_FORCE_INLINE F16 exp16(F16 x) {
  // Clamp first (NaN passes: min/max return their second operand, x, when either is NaN).
  // Below -104 the result is 0; above 88 it stays exp(88) ~ 1.7e38 instead of overflowing, so
  // 1 + exp(..) stays finite for operator/ (sigmoid and tanh are exactly 0 / +-1 there anyway).
  __m512 a = _mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_min_ps(_mm512_set1_ps(88.0f), x.v));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(a, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = a - n*ln2 in two parts, so r keeps full precision
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), a);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return F16(_mm512_scalef_ps(p, n));
}

FLASHSEQ_FORCE_INLINE F16 tanh16(F16 x) {
  const F16 one(1.0f), two(2.0f);
  const F16 from_exp = one - two / (one + exp16(x + x));
  const F16 x2 = x * x;
  const F16 series = x * (one + x2 * (F16(-1.0f / 3) + x2 * (F16(2.0f / 15) + x2 * (F16(-17.0f / 315)
                                                                                   + x2 * F16(62.0f / 2835)))));
  const __mmask16 small = _mm512_cmp_ps_mask(_mm512_abs_ps(x.v), _mm512_set1_ps(0.25f), _CMP_LT_OQ);
  return F16(_mm512_mask_blend_ps(small, from_exp.v, series.v));
}

// Two independent 16-lane vectors (32 units) as one value. Why: one 16-unit LSTM chunk is a
// chain of dependent long-latency steps (exp, reciprocal, Newton step, then c and tanh(c) on the
// result), and the out-of-order core overlapped little of consecutive chunks: perf put the pass
// at ~4 cycles per gate value (H=128 B=16), several times its instruction count. With pairs
// every operation is issued twice back to back on independent data, so two chains run at once.
struct F16x2 {
  F16 a, b;
  F16x2() = default;
  F16x2(F16 x, F16 y) : a(x), b(y) {}
  F16x2(float x) : a(x), b(x) {}  // NOLINT: T(1) in the cell formulas
};
inline F16x2 operator+(F16x2 x, F16x2 y) { return {x.a + y.a, x.b + y.b}; }
inline F16x2 operator-(F16x2 x, F16x2 y) { return {x.a - y.a, x.b - y.b}; }
inline F16x2 operator*(F16x2 x, F16x2 y) { return {x.a * y.a, x.b * y.b}; }
inline F16x2 operator/(F16x2 x, F16x2 y) { return {x.a / y.a, x.b / y.b}; }
inline F16x2 operator-(F16x2 x) { return {-x.a, -x.b}; }

}  // namespace
}  // namespace cpu

namespace cells {
template <>
struct MathOps<cpu::F16x2> {
  using V = cpu::F16x2;
  static V exp(V x) { return {cpu::exp16(x.a), cpu::exp16(x.b)}; }
  static V tanh(V x) { return {cpu::tanh16(x.a), cpu::tanh16(x.b)}; }
  static V abs(V x) { return {cpu::F16(_mm512_abs_ps(x.a.v)), cpu::F16(_mm512_abs_ps(x.b.v))}; }
  static V min(V x, V y) {
    return {cpu::F16(_mm512_min_ps(x.a.v, y.a.v)), cpu::F16(_mm512_min_ps(x.b.v, y.b.v))};
  }
  static V select_ge(V a, V b, V x, V y) {
    return {cpu::F16(_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.a.v, b.a.v, _CMP_GE_OQ), y.a.v, x.a.v)),
            cpu::F16(_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.b.v, b.b.v, _CMP_GE_OQ), y.b.v, x.b.v))};
  }
};

template <>
struct MathOps<cpu::F16> {
  using V = cpu::F16;
  static V exp(V x) { return cpu::exp16(x); }
  static V tanh(V x) { return cpu::tanh16(x); }
  static V abs(V x) { return V(_mm512_abs_ps(x.v)); }
  static V min(V a, V b) { return V(_mm512_min_ps(a.v, b.v)); }
  static V select_ge(V a, V b, V x, V y) {
    return V(_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_GE_OQ), y.v, x.v));
  }
};
}  // namespace cells

namespace cpu {
namespace {

// Masked loads and stores of one value at p (16 lanes) or of a pair at p and p + 16.
struct Chunk1 {
  using V = F16;
  __mmask16 m;
  explicit Chunk1(int64_t n) : m(lanes_below(n)) {}
  V load(const float* p) const { return F16(_mm512_maskz_loadu_ps(m, p)); }
  void store(float* p, V v) const { _mm512_mask_storeu_ps(p, m, v.v); }
};
struct Chunk2 {
  using V = F16x2;
  __mmask16 m0, m1;
  explicit Chunk2(int64_t n) : m0(lanes_below(n)), m1(lanes_below(n - 16)) {}
  V load(const float* p) const {
    return {F16(_mm512_maskz_loadu_ps(m0, p)), F16(_mm512_maskz_loadu_ps(m1, p + 16))};
  }
  void store(float* p, V v) const {
    _mm512_mask_storeu_ps(p, m0, v.a.v);
    _mm512_mask_storeu_ps(p + 16, m1, v.b.v);
  }
};

// Units e .. e + n - 1 of the row (n <= 16 for Chunk1, <= 32 for Chunk2).
template <typename Cell, typename C>
inline void forward_chunk(const PointwiseRow& a, int64_t e, const C& c) {
  constexpr int G = Cell::kNumGates, S = Cell::kNumStates, K = Cell::kNumSaved;
  using V = typename C::V;
  const int64_t DH = a.DH;
  V wx[G], rh[G], prev[S], next[S], saved[K];
  for (int g = 0; g < G; ++g) {
    wx[g] = c.load(a.wx + g * a.wx_gate_stride + e);
    rh[g] = c.load(a.rh + g * DH + e) + c.load(a.bias + g * DH + e);
  }
  for (int s = 0; s < S; ++s) prev[s] = c.load(a.carry + s * a.state_stride + e);
  Cell::forward(wx, rh, prev, next, saved);
  for (int s = 0; s < S; ++s) c.store(a.carry + s * a.state_stride + e, next[s]);
  c.store(a.h_out + e, next[0]);
  if (a.gates != nullptr) {
    for (int k = 0; k < K; ++k) c.store(a.gates + k * DH + e, saved[k]);
    for (int s = 1; s < S; ++s) c.store(a.saved_states + (s - 1) * a.saved_state_stride + e, next[s]);
  }
}

// Units e .. e + 15 of a no_grad LSTM row (fewer under the mask m when not kFull), through
// lstm_update16.
template <bool kFull>
FLASHSEQ_FORCE_INLINE void lstm_nograd_chunk(const PointwiseRow& a, int64_t e, __mmask16 m) {
  const auto load = [m](const float* p) {
    return kFull ? F16(_mm512_loadu_ps(p)) : F16(_mm512_maskz_loadu_ps(m, p));
  };
  const auto store = [m](float* p, F16 v) {
    if (kFull) {
      _mm512_storeu_ps(p, v.v);
    } else {
      _mm512_mask_storeu_ps(p, m, v.v);
    }
  };
  F16 pre[4];
  for (int g = 0; g < 4; ++g)
    pre[g] = load(a.wx + g * a.wx_gate_stride + e) + load(a.rh + g * a.DH + e) +
             load(a.bias + g * a.DH + e);
  __m512 c = load(a.carry + a.state_stride + e).v;
  const __m512 raw[4] = {pre[0].v, pre[1].v, pre[2].v, pre[3].v};
  const F16 h(lstm_update16(raw, c));
  store(a.carry + a.state_stride + e, F16(c));
  store(a.carry + e, h);
  store(a.h_out + e, h);
}

// A no_grad LSTM row: whole 16-unit chunks two at a time (two independent chains, as F16x2),
// then the masked tail.
void lstm_nograd_row(const PointwiseRow& a) {
  const int64_t DH = a.DH;
  int64_t e = 0;
  for (; e + 32 <= DH; e += 32) {
    lstm_nograd_chunk<true>(a, e, 0xFFFF);
    lstm_nograd_chunk<true>(a, e + 16, 0xFFFF);
  }
  for (; e + 16 <= DH; e += 16) lstm_nograd_chunk<true>(a, e, 0xFFFF);
  if (e < DH) lstm_nograd_chunk<false>(a, e, lanes_below(DH - e));
}

template <typename Cell>
void forward_row(const PointwiseRow& a) {
  const int64_t DH = a.DH;
  int64_t e = 0;
  for (; DH - e > 16; e += 32) forward_chunk<Cell>(a, e, Chunk2(DH - e));  // 17..32+ units left
  if (e < DH) forward_chunk<Cell>(a, e, Chunk1(DH - e));
}

template <typename Cell, typename C>
inline void backward_chunk(const BackwardRow& a, int64_t e, const C& c) {
  constexpr int G = Cell::kNumGates, S = Cell::kNumStates, K = Cell::kNumSaved;
  static_assert(S <= 2, "BackwardRow holds two previous states");
  using V = typename C::V;
  const int64_t DH = a.DH;
  V saved[K], prev[S], dnext[S], dwx[G], drh[G], dprev[S];
  for (int k = 0; k < K; ++k) saved[k] = c.load(a.saved + k * DH + e);
  for (int s = 0; s < S; ++s) {
    prev[s] = c.load(a.prev[s] + e);
    dnext[s] = c.load(a.dcarry + s * a.state_stride + e);
  }
  if (a.dh != nullptr) dnext[0] = dnext[0] + c.load(a.dh + e);
  Cell::backward(saved, prev, c.load(a.h_next + e), dnext, dwx, drh, dprev);
  for (int g = 0; g < G; ++g) {
    c.store(a.dwx + g * a.dwx_gate_stride + e, dwx[g]);
    if (a.drh != nullptr) c.store(a.drh + g * DH + e, drh[g]);
  }
  for (int s = 0; s < S; ++s) c.store(a.dcarry + s * a.state_stride + e, dprev[s]);
}

template <typename Cell>
void backward_row(const BackwardRow& a) {
  const int64_t DH = a.DH;
  int64_t e = 0;
  for (; DH - e > 16; e += 32) backward_chunk<Cell>(a, e, Chunk2(DH - e));
  if (e < DH) backward_chunk<Cell>(a, e, Chunk1(DH - e));
}

// The cell update of rows r0 (and r0 + 1 when V is a pair) from their accumulated gates.
template <typename V>
struct FusedRows;
template <>
struct FusedRows<F16> {
  static F16 load(const float* p, int64_t, __mmask16 m) { return F16(_mm512_maskz_loadu_ps(m, p)); }
  static F16 pick(const __m512* acc, int) { return F16(acc[0]); }
  static void store(float* p, int64_t, __mmask16 m, F16 v) { _mm512_mask_storeu_ps(p, m, v.v); }
};
template <>
struct FusedRows<F16x2> {
  // two rows `row` elements apart
  static F16x2 load(const float* p, int64_t row, __mmask16 m) {
    return {F16(_mm512_maskz_loadu_ps(m, p)), F16(_mm512_maskz_loadu_ps(m, p + row))};
  }
  static F16x2 pick(const __m512* acc, int g) { return {F16(acc[g]), F16(acc[4 + g])}; }
  static void store(float* p, int64_t row, __mmask16 m, F16x2 v) {
    _mm512_mask_storeu_ps(p, m, v.a.v);
    _mm512_mask_storeu_ps(p + row, m, v.b.v);
  }
};

// acc: the gates of the rows, [row][gate] (4 per row, the pair's second row 4 further).
template <typename V>
inline void fused_update(const LstmFusedBlock& a, int64_t m, const __m512* acc, __mmask16 mask) {
  using R = FusedRows<V>;
  V wx[4], rh[4], prev[2], next[2], saved[4];
  const float* wx_m = a.wx + m * a.wx_row;
  for (int g = 0; g < 4; ++g) {
    if constexpr (std::is_same_v<V, F16>) {
      rh[g] = F16(acc[g]);
    } else {
      rh[g] = F16x2(F16(acc[g]), F16(acc[4 + g]));
    }
    rh[g] = rh[g] + V(R::load(a.bias + g * a.bias_gate, 0, mask));
    wx[g] = R::load(wx_m + g * a.wx_gate, a.wx_row, mask);
    if (a.wx_next != 0) {  // this row's input of the next step, into L2 only
      _mm_prefetch(reinterpret_cast<const char*>(wx_m + g * a.wx_gate + a.wx_next), _MM_HINT_T1);
      if constexpr (!std::is_same_v<V, F16>) {
        _mm_prefetch(reinterpret_cast<const char*>(wx_m + a.wx_row + g * a.wx_gate + a.wx_next),
                     _MM_HINT_T1);
      }
    }
  }
  prev[0] = V(0.0f);  // h_prev enters only through the GEMM
  prev[1] = R::load(a.c + m * a.c_row, a.c_row, mask);
  cells::LstmCell::forward(wx, rh, prev, next, saved);
  R::store(a.c + m * a.c_row, a.c_row, mask, next[1]);
  R::store(a.h + m * a.h_row, a.h_row, mask, next[0]);
}

// kRows rows x 64 columns (the 4 gates of 16 units) in 4 kRows accumulators; 6 rows use 24 of
// the 32 zmm registers, plus 4 panel vectors and a broadcast. Fewer rows spread consecutive k
// over more accumulator sets to keep enough independent FMA chains.
template <int kRows>
inline void fused_tile(const LstmFusedBlock& a, int64_t m0, __mmask16 mask) {
  constexpr int kSets = kRows == 1 ? 3 : (kRows == 2 ? 2 : 1);
  constexpr int64_t P = kLstmGatePanelCols;
  const int64_t K = a.K;
  const float* A = a.A + m0 * a.lda;
  __m512 acc[kSets][kRows][4];
  for (int q = 0; q < kSets; ++q)
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < 4; ++v) acc[q][r][v] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + kSets <= K; k += kSets) {
    for (int q = 0; q < kSets; ++q) {
      const float* row = a.panel + (k + q) * P;
      __m512 b[4];
      for (int v = 0; v < 4; ++v) b[v] = _mm512_loadu_ps(row + v * 16);
      for (int r = 0; r < kRows; ++r) {
        const __m512 x = _mm512_set1_ps(A[r * a.lda + k + q]);
        for (int v = 0; v < 4; ++v) acc[q][r][v] = _mm512_fmadd_ps(x, b[v], acc[q][r][v]);
      }
    }
  }
  for (; k < K; ++k) {
    const float* row = a.panel + k * P;
    __m512 b[4];
    for (int v = 0; v < 4; ++v) b[v] = _mm512_loadu_ps(row + v * 16);
    for (int r = 0; r < kRows; ++r) {
      const __m512 x = _mm512_set1_ps(A[r * a.lda + k]);
      for (int v = 0; v < 4; ++v) acc[0][r][v] = _mm512_fmadd_ps(x, b[v], acc[0][r][v]);
    }
  }
  for (int q = 1; q < kSets; ++q)
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < 4; ++v) acc[0][r][v] = _mm512_add_ps(acc[0][r][v], acc[q][r][v]);
  if (lstm_fast_update_allowed()) {
    for (int r = 0; r < kRows; ++r) fused_update_fast(a, m0 + r, &acc[0][r][0], mask);
    return;
  }
  int r = 0;
  for (; r + 2 <= kRows; r += 2) fused_update<F16x2>(a, m0 + r, &acc[0][r][0], mask);
  if (r < kRows) fused_update<F16>(a, m0 + r, &acc[0][r][0], mask);
}

}  // namespace

void lstm_backward_row_avx512(const BackwardRow& row) {
  if (lstm_fast_train_allowed()) {
    lstm_backward_row_fast_avx512(row);
  } else {
    backward_row<cells::LstmCell>(row);
  }
}
void gru_backward_row_avx512(const BackwardRow& row) { backward_row<cells::GruCell>(row); }

void lstm_forward_row_avx512(const PointwiseRow& row) {
  if (row.gates == nullptr && lstm_fast_update_allowed()) {
    lstm_nograd_row(row);
  } else if (row.gates != nullptr && lstm_fast_train_allowed()) {
    lstm_train_row_avx512(row);
  } else {
    forward_row<cells::LstmCell>(row);
  }
}

void lstm_fused_block_avx512(const LstmFusedBlock& a) {
  const __mmask16 mask = lanes_below(a.units);
  // Rows spread evenly over the fewest tiles of at most 6 (8 = 4 + 4, not 6 + 2): a tile of few
  // rows loads 4 panel vectors per k for few FMAs.
  const int64_t tiles = (a.M + 5) / 6;
  int64_t m = 0;
  for (int64_t j = 0; j < tiles; ++j) {
    const int64_t rows = a.M / tiles + (j < a.M % tiles ? 1 : 0);
    switch (rows) {
      case 6: fused_tile<6>(a, m, mask); break;
      case 5: fused_tile<5>(a, m, mask); break;
      case 4: fused_tile<4>(a, m, mask); break;
      case 3: fused_tile<3>(a, m, mask); break;
      case 2: fused_tile<2>(a, m, mask); break;
      default: fused_tile<1>(a, m, mask); break;
    }
    m += rows;
  }
}
void gru_forward_row_avx512(const PointwiseRow& row) { forward_row<cells::GruCell>(row); }

}  // namespace cpu
}  // namespace flashseq

#pragma GCC pop_options

#endif  // FLASHSEQ_HAVE_AVX512_TILE
