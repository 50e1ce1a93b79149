// How the CPU loops feed the cell headers: one SIMD vector of consecutive units at a time when the
// extension is built for AVX2 (flags chosen in flashseq/_jit.py), one scalar at a time otherwise.
//
// Lanes<scalar_t>::V is the value type the cell templates are instantiated with; load/store move
// `count` <= kWidth consecutive elements (a short tail when DH is not a multiple of kWidth; the
// unused lanes compute on zeros and are never stored).
#pragma once

#include <algorithm>
#include <cstdint>

#include "cells/common.h"

#if defined(CPU_CAPABILITY_AVX2)
#include <ATen/cpu/vec/vec.h>
#endif

namespace flashseq {

#if defined(CPU_CAPABILITY_AVX2)
namespace cells {

// The cells' math on SIMD vectors: Sleef routines with 1-ulp error bounds (the *_u10 variants
// that torch's own sigmoid/tanh kernels use).
template <typename scalar_t>
struct MathOps<at::vec::Vectorized<scalar_t>> {
  using V = at::vec::Vectorized<scalar_t>;
  static V exp(const V& x) { return x.exp(); }
  static V tanh(const V& x) { return x.tanh(); }
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
