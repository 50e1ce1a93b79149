// The no_grad float32 LSTM cell update on 16 AVX-512 lanes (lstm_update16) and the exp, expm1
// and division it is built from, shared by the separate pointwise pass (pointwise_avx512.cpp)
// and the fused GEMM + update tiles (lstm_fused_avx512.cpp). Include only after the file's
// target pragma, and pointwise_avx512.h and <immintrin.h> before that pragma (so no library
// header is compiled for AVX-512 here); everything here has internal linkage, so no AVX-512 copy
// of a function can be picked by the linker for code that runs on other CPUs.
#pragma once

#if defined(FLASHSEQ_HAVE_AVX512_TILE)

#ifndef FLASHSEQ_FORCE_INLINE
#define FLASHSEQ_FORCE_INLINE inline __attribute__((always_inline))
#endif

namespace flashseq {
namespace cpu {
namespace {

// The exp polynomial of the no_grad LSTM update: e^r ~ 1 + r + r^2 P(r) on |r| <= ln2 / 2 with P of
// degree 4, not exp16's 5 (Cephes'): fitted for relative error (near-minimax, reweighted least
// squares in float64), 3.8e-9 at most with these float32 coefficients, against float32's 6e-8
// spacing, so the sixth coefficient only cost an FMA per exp (five per 16 units). Paired against
// degree 5, same module case as lstm_update16: 0.994-0.996 of its time (three runs).
//
// e^(-x) for x clamped to [lo, hi], without negating x: n = round(-x log2 e), s = x + n ln2 (two
// parts) so the reduced argument is r = -s, and P is evaluated at -s (fnmadd in place of
// fmadd): e^r = 1 - s + s^2 P(-s).
template <int kLo, int kHi>
FLASHSEQ_FORCE_INLINE __m512 exp_neg16(__m512 x) {
  const __m512 xc = _mm512_max_ps(_mm512_set1_ps(static_cast<float>(kLo)),
                                  _mm512_min_ps(_mm512_set1_ps(static_cast<float>(kHi)), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(-1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 s = _mm512_fmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  s = _mm512_fmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), s);
  __m512 p = _mm512_set1_ps(1.3814602280e-3f);
  p = _mm512_fnmadd_ps(p, s, _mm512_set1_ps(8.3687175065e-3f));
  p = _mm512_fnmadd_ps(p, s, _mm512_set1_ps(4.1668388993e-2f));
  p = _mm512_fnmadd_ps(p, s, _mm512_set1_ps(1.6666521132e-1f));
  p = _mm512_fnmadd_ps(p, s, _mm512_set1_ps(4.9999994040e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(s, s), _mm512_sub_ps(_mm512_set1_ps(1.0f), s));
  return _mm512_scalef_ps(p, n);
}

// e^(2x) - 1 for x clamped to [-9, 9] (tanh(x) is +-1 in float32 beyond), for tanh(x) = t / (t + 2).
// Why: 1 - 2 / (1 + e^(2x)) cancels for small |x|, so tanh16 computes a series there as well and
// blends; expm1 keeps its relative accuracy down to 0 (exp16's reduction: e^a - 1 = 2^n (1 + q) - 1
// with q = e^r - 1 from the polynomial above without its leading 1, and 2^n q + (2^n - 1) is exact
// at n = 0), so one exp-sized chain serves every x.
FLASHSEQ_FORCE_INLINE __m512 expm1_2x16(__m512 x) {
  const __m512 xc = _mm512_max_ps(_mm512_set1_ps(-9.0f), _mm512_min_ps(_mm512_set1_ps(9.0f), x));
  const __m512 a = _mm512_add_ps(xc, xc);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(a, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), a);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.3814602280e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3687175065e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1668388993e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666521132e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.9999994040e-1f));
  const __m512 q = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);  // e^r - 1
  const __m512 s = _mm512_scalef_ps(_mm512_set1_ps(1.0f), n);    // 2^n
  return _mm512_fmadd_ps(s, q, _mm512_sub_ps(s, _mm512_set1_ps(1.0f)));
}

// num / den: vrcp14ps and one Newton step, as operator/.
FLASHSEQ_FORCE_INLINE __m512 div16(__m512 num, __m512 den) {
  const __m512 x0 = _mm512_rcp14_ps(den);
  return _mm512_mul_ps(num, _mm512_mul_ps(x0, _mm512_fnmadd_ps(den, x0, _mm512_set1_ps(2.0f))));
}

// The no_grad LSTM update of 16 units, written out and forced inline. Why: through the shared
// cell header (LstmCell::forward) GCC kept the cell an out-of-line call taking its gates and
// states through memory, and the chunk around it loaded every operand under a mask: perf and
// objdump counted ~235 instructions per 16 units, ~130 cycles, against ~140 for the arithmetic
// itself; that pass was a fifth of an LSTM step at H=256 B=32 next to the 8x48 GEMM tile. The
// training forward keeps the header (it saves the gates for the backward).
//
// Fewer operations than the header's formulas, same float32 accuracy (~2e-7 relative against
// float64 over a 2-layer H=256 T=200 run, as before): each tanh from one expm1 without the
// small-|x| series and blend (expm1_2x16), e^-x without the negation (exp_neg16), and
// sigmoid(a) tanh(b) = t / ((1 + e^-a)(t + 2)) with t = e^(2b) - 1, one division for i g and one
// for o tanh(c). e^-a is capped at e^60 there so the product stays finite (t + 2 <= e^18 + 2);
// sigmoid(a) below a = -60 is then e^-60 instead of smaller, an absolute change under 1e-26.
// Measured against the same update with the header's formulas (1 / (1 + e^-x), tanh16), 1 thread,
// CPU time, paired, AMD EPYC Zen 5, module no_grad forward I=64 H=256 B=32 T=200 2 layers: 0.978
// of its time (one run of 29 pairs, interval 0.90-1.00; the update is ~15% of a step there).
//
// pre: the four pre-activations (i, f, g, o) of 16 units; c in and out; returns h.
FLASHSEQ_FORCE_INLINE __m512 lstm_update16(const __m512* pre, __m512& c) {
  const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
  const __m512 f = div16(one, _mm512_add_ps(one, exp_neg16<-88, 104>(pre[1])));
  const __m512 ei = exp_neg16<-60, 104>(pre[0]);
  const __m512 tg = expm1_2x16(pre[2]);
  const __m512 ig = div16(tg, _mm512_mul_ps(_mm512_add_ps(one, ei), _mm512_add_ps(tg, two)));
  c = _mm512_fmadd_ps(f, c, ig);
  const __m512 eo = exp_neg16<-60, 104>(pre[3]);
  const __m512 tc = expm1_2x16(c);
  return div16(tc, _mm512_mul_ps(_mm512_add_ps(one, eo), _mm512_add_ps(tc, two)));
}


// The cell update of row m of a fused tile from its accumulated gates acc[0..3] (i, f, g, o).
FLASHSEQ_FORCE_INLINE void fused_update_fast(const LstmFusedBlock& a, int64_t m, const __m512* acc,
                                             __mmask16 mask) {
  const float* wx_m = a.wx + m * a.wx_row;
  __m512 pre[4];
  for (int g = 0; g < 4; ++g) {
    const __m512 bias = _mm512_maskz_loadu_ps(mask, a.bias + g * a.bias_gate);
    pre[g] = _mm512_add_ps(_mm512_add_ps(acc[g], bias),
                           _mm512_maskz_loadu_ps(mask, wx_m + g * a.wx_gate));
    if (a.wx_next != 0)  // this row's input of the next step, into L2 only
      _mm_prefetch(reinterpret_cast<const char*>(wx_m + g * a.wx_gate + a.wx_next), _MM_HINT_T1);
  }
  __m512 c = _mm512_maskz_loadu_ps(mask, a.c + m * a.c_row);
  const __m512 h = lstm_update16(pre, c);
  _mm512_mask_storeu_ps(a.c + m * a.c_row, mask, c);
  _mm512_mask_storeu_ps(a.h + m * a.h_row, mask, h);
}
}  // namespace
}  // namespace cpu
}  // namespace flashseq

#endif  // FLASHSEQ_HAVE_AVX512_TILE
