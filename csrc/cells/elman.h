// Elman / tanh RNN cell, pointwise forward and backward (see flashseq/cells/elman.py).
//
// One gate (x), one state (h): h = tanh(wx + rh). The backward needs only h itself, which the
// caller passes as h_next, so nothing is saved per step.
#pragma once

#include "common.h"

namespace flashseq {
namespace cells {

struct ElmanCell {
  static constexpr int kNumGates = 1;   // x
  static constexpr int kNumStates = 1;  // h
  static constexpr int kNumSaved = 0;

  template <typename T>
  FLASHSEQ_HOST_DEVICE static inline void forward(const T* wx, const T* rh, const T* /*prev*/,
                                                  T* next, T* /*saved*/) {
    next[0] = tanh_of(wx[0] + rh[0]);
  }

  // Same contract as LstmCell::backward.
  template <typename T>
  FLASHSEQ_HOST_DEVICE static inline void backward(const T* /*saved*/, const T* /*prev*/,
                                                   T h_next, const T* dnext, T* dwx, T* drh,
                                                   T* dprev) {
    dwx[0] = dnext[0] * (T(1) - h_next * h_next);
    drh[0] = dwx[0];
    dprev[0] = T(0);
  }
};

static_assert(ElmanCell::kNumGates == 1 && ElmanCell::kNumStates == 1, "Elman: gate x; state h");

}  // namespace cells
}  // namespace flashseq
