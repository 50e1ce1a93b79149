// torch.nn.LSTM's cell, pointwise forward and backward (see flashseq/cells/lstm.py).
//
// Gates (i, f, g, o), states (h, c). Per unit, with pre = wx + rh:
//   i, f, o = sigmoid(pre_i, pre_f, pre_o), g = tanh(pre_g), c = f*c_prev + i*g, h = o*tanh(c).
// Saved per step: the four activations. The backward recomputes c from them and c_prev,
// so c_prev (the previous step's state) is all it needs besides.
#pragma once

#include "common.h"

namespace flashseq {
namespace cells {

struct LstmCell {
  static constexpr int kNumGates = 4;   // i, f, g, o
  static constexpr int kNumStates = 2;  // h, c
  static constexpr int kNumSaved = 4;   // i, f, g, o after their activations

  // wx[kNumGates], rh[kNumGates] (bias included), prev[kNumStates] -> next[kNumStates],
  // saved[kNumSaved].
  template <typename T>
  FLASHSEQ_HOST_DEVICE static inline void forward(const T* wx, const T* rh, const T* prev,
                                                  T* next, T* saved) {
    const T i = sigmoid(wx[0] + rh[0]);
    const T f = sigmoid(wx[1] + rh[1]);
    const T g = tanh_of(wx[2] + rh[2]);
    const T o = sigmoid(wx[3] + rh[3]);
    const T c = f * prev[1] + i * g;
    next[0] = o * tanh_of(c);
    next[1] = c;
    saved[0] = i;
    saved[1] = f;
    saved[2] = g;
    saved[3] = o;
  }

  // dnext[kNumStates]: gradient of the loss w.r.t. this step's new states (dh includes the
  // step's output gradient). Writes d(wx)[kNumGates], d(rh)[kNumGates] and the direct part of
  // d(prev)[kNumStates] (h_prev also reaches rh; the caller adds d(rh) @ r^T).
  template <typename T>
  FLASHSEQ_HOST_DEVICE static inline void backward(const T* saved, const T* prev, T /*h_next*/,
                                                   const T* dnext, T* dwx, T* drh, T* dprev) {
    const T i = saved[0], f = saved[1], g = saved[2], o = saved[3];
    const T c_prev = prev[1];
    const T tc = tanh_of(f * c_prev + i * g);
    const T dh = dnext[0];
    const T dc = dnext[1] + dh * o * (T(1) - tc * tc);
    dwx[0] = dc * g * i * (T(1) - i);
    dwx[1] = dc * c_prev * f * (T(1) - f);
    dwx[2] = dc * i * (T(1) - g * g);
    dwx[3] = dh * tc * o * (T(1) - o);
    for (int k = 0; k < kNumGates; ++k) drh[k] = dwx[k];
    dprev[0] = T(0);
    dprev[1] = dc * f;
  }
};

static_assert(LstmCell::kNumGates == 4 && LstmCell::kNumStates == 2, "LSTM: gates i,f,g,o; states h,c");

}  // namespace cells
}  // namespace flashseq
