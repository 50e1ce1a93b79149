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

#include "cells/gru.h"
#include "cells/lstm.h"

namespace flashseq {
namespace cpu {
namespace {

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

inline F16 exp16(F16 x) {
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

inline F16 tanh16(F16 x) {
  const F16 one(1.0f), two(2.0f);
  const F16 from_exp = one - two / (one + exp16(x + x));
  const F16 x2 = x * x;
  const F16 series = x * (one + x2 * (F16(-1.0f / 3) + x2 * (F16(2.0f / 15) + x2 * (F16(-17.0f / 315)
                                                                                   + x2 * F16(62.0f / 2835)))));
  const __mmask16 small = _mm512_cmp_ps_mask(_mm512_abs_ps(x.v), _mm512_set1_ps(0.25f), _CMP_LT_OQ);
  return F16(_mm512_mask_blend_ps(small, from_exp.v, series.v));
}

}  // namespace
}  // namespace cpu

namespace cells {
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

inline __mmask16 lanes_below(int64_t n) {  // lanes 0 .. n-1 set, n clamped to 0..16
  return n >= 16 ? static_cast<__mmask16>(0xFFFF)
                 : (n <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << n) - 1u));
}

template <typename Cell>
void forward_row(const PointwiseRow& a) {
  constexpr int G = Cell::kNumGates, S = Cell::kNumStates, K = Cell::kNumSaved;
  const int64_t DH = a.DH;
  for (int64_t e = 0; e < DH; e += 16) {
    const __mmask16 m = lanes_below(DH - e);
    F16 wx[G], rh[G], prev[S], next[S], saved[K];
    for (int g = 0; g < G; ++g) {
      wx[g] = F16(_mm512_maskz_loadu_ps(m, a.wx + g * a.wx_gate_stride + e));
      rh[g] = F16(_mm512_add_ps(_mm512_maskz_loadu_ps(m, a.rh + g * DH + e),
                                _mm512_maskz_loadu_ps(m, a.bias + g * DH + e)));
    }
    for (int s = 0; s < S; ++s) prev[s] = F16(_mm512_maskz_loadu_ps(m, a.carry + s * a.state_stride + e));
    Cell::forward(wx, rh, prev, next, saved);
    for (int s = 0; s < S; ++s) _mm512_mask_storeu_ps(a.carry + s * a.state_stride + e, m, next[s].v);
    _mm512_mask_storeu_ps(a.h_out + e, m, next[0].v);
    if (a.gates != nullptr) {
      for (int k = 0; k < K; ++k) _mm512_mask_storeu_ps(a.gates + k * DH + e, m, saved[k].v);
      for (int s = 1; s < S; ++s)
        _mm512_mask_storeu_ps(a.saved_states + (s - 1) * a.saved_state_stride + e, m, next[s].v);
    }
  }
}

template <typename Cell>
void backward_row(const BackwardRow& a) {
  constexpr int G = Cell::kNumGates, S = Cell::kNumStates, K = Cell::kNumSaved;
  static_assert(S <= 2, "BackwardRow holds two previous states");
  const int64_t DH = a.DH;
  for (int64_t e = 0; e < DH; e += 16) {
    const __mmask16 m = lanes_below(DH - e);
    F16 saved[K], prev[S], dnext[S], dwx[G], drh[G], dprev[S];
    for (int k = 0; k < K; ++k) saved[k] = F16(_mm512_maskz_loadu_ps(m, a.saved + k * DH + e));
    for (int s = 0; s < S; ++s) {
      prev[s] = F16(_mm512_maskz_loadu_ps(m, a.prev[s] + e));
      dnext[s] = F16(_mm512_maskz_loadu_ps(m, a.dcarry + s * a.state_stride + e));
    }
    if (a.dh != nullptr) dnext[0] = dnext[0] + F16(_mm512_maskz_loadu_ps(m, a.dh + e));
    Cell::backward(saved, prev, F16(_mm512_maskz_loadu_ps(m, a.h_next + e)), dnext, dwx, drh, dprev);
    for (int g = 0; g < G; ++g) {
      _mm512_mask_storeu_ps(a.dwx + g * a.dwx_gate_stride + e, m, dwx[g].v);
      if (a.drh != nullptr) _mm512_mask_storeu_ps(a.drh + g * DH + e, m, drh[g].v);
    }
    for (int s = 0; s < S; ++s) _mm512_mask_storeu_ps(a.dcarry + s * a.state_stride + e, m, dprev[s].v);
  }
}

}  // namespace

void lstm_backward_row_avx512(const BackwardRow& row) { backward_row<cells::LstmCell>(row); }
void gru_backward_row_avx512(const BackwardRow& row) { backward_row<cells::GruCell>(row); }

void lstm_forward_row_avx512(const PointwiseRow& row) { forward_row<cells::LstmCell>(row); }
void gru_forward_row_avx512(const PointwiseRow& row) { forward_row<cells::GruCell>(row); }

}  // namespace cpu
}  // namespace flashseq

#pragma GCC pop_options

#endif  // FLASHSEQ_HAVE_AVX512_TILE
