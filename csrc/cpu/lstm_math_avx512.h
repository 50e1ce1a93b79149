// The exp, expm1 and division chains of the forced-inline AVX-512 LSTM cell updates: the no_grad
// lstm_update16 (pointwise_avx512.cpp) and the training forward and backward passes
// (lstm_train_avx512.cpp). Include only after `#pragma GCC target("avx512f,avx2,fma")`: the
// functions compile for AVX-512 and sit in an anonymous namespace, so every including file gets
// its own copies and no AVX-512 code can be picked by the linker for another file's callers.
#pragma once

#include <immintrin.h>

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

}  // namespace
}  // namespace cpu
}  // namespace flashseq
