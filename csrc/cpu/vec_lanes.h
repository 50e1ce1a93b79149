// How the CPU loops feed the cell headers: one SIMD vector of consecutive units at a time when the
// extension is built for AVX2 (flags chosen in flashseq/_jit.py), one scalar at a time otherwise.
//
// Lanes<scalar_t>::V is the value type the cell templates are instantiated with; load/store move
// `count` <= kWidth consecutive elements (a short tail when DH is not a multiple of kWidth; the
// unused lanes compute on zeros and are never stored).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cells/common.h"

#if defined(CPU_CAPABILITY_AVX2)
#include <ATen/cpu/vec/vec.h>
#endif

namespace flashseq {

#if defined(CPU_CAPABILITY_AVX2)
namespace cells {

// float tanh from one exp: Sleef's 1-ulp tanh costs ~3x an exp (4.3 vs 1.5 ns per value, 1
// thread here) and an LSTM step calls it twice per unit. tanh(x) = 1 - 2 / (1 + exp(2x)) is
// within a few ulp of 1.0 in absolute terms; that is a large relative error only where
// tanh(x) ~ x is small, so |x| < 1/4 takes the odd Taylor series to x^9 instead (truncation
// < 1e-8 relative there). Measured worst relative error 5e-7 (torch's tanh: 6e-8). Saturates
// to +-1 through exp's inf/0; NaN stays NaN.
inline at::vec::Vectorized<float> tanh_from_exp(const at::vec::Vectorized<float>& x) {
  using V = at::vec::Vectorized<float>;
  const V one(1.0f), two(2.0f);
  const V from_exp = one - two / (one + (x + x).exp());
  const V x2 = x * x;
  const V series = x * (one + x2 * (V(-1.0f / 3) + x2 * (V(2.0f / 15) + x2 * (V(-17.0f / 315)
                                                                              + x2 * V(62.0f / 2835)))));
  return V::blendv(from_exp, series, x.abs() < V(0.25f));
}

// The cells' math on SIMD vectors: Sleef routines with 1-ulp error bounds (the *_u10 variants
// that torch's own kernels use), except float tanh (tanh_from_exp above).
template <typename scalar_t>
struct MathOps<at::vec::Vectorized<scalar_t>> {
  using V = at::vec::Vectorized<scalar_t>;
  static V exp(const V& x) { return x.exp(); }
  static V tanh(const V& x) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      return tanh_from_exp(x);
    } else {
      return x.tanh();
    }
  }
  static V log1p(const V& x) { return x.log1p(); }
  static V abs(const V& x) { return x.abs(); }
  static V min(const V& a, const V& b) { return at::vec::minimum(a, b); }
  static V select_ge(const V& a, const V& b, const V& x, const V& y) {
    return V::blendv(y, x, a >= b);  // a >= b sets all bits of a lane: take x there
  }
};

}  // namespace cells

namespace cpu {
template <typename scalar_t>
struct Lanes {
  using V = at::vec::Vectorized<scalar_t>;
  static constexpr int64_t kWidth = V::size();
  static V load(const scalar_t* p, int64_t count) { return V::loadu(p, count); }
  static void store(const V& v, scalar_t* p, int64_t count) { v.store(p, count); }
};
}  // namespace cpu

#else

namespace cpu {
template <typename scalar_t>
struct Lanes {
  using V = scalar_t;
  static constexpr int64_t kWidth = 1;
  static V load(const scalar_t* p, int64_t) { return *p; }
  static void store(V v, scalar_t* p, int64_t) { *p = v; }
};
}  // namespace cpu

#endif

}  // namespace flashseq
