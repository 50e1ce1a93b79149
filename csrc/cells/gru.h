// torch.nn.GRU's cell, pointwise forward and backward (see flashseq/cells/gru.py).
//
// Gates (r, z, n), state (h):
//   r = sigmoid(wx_r + rh_r), z = sigmoid(wx_z + rh_z), n = tanh(wx_n + r*rh_n),
//   h = (1-z)*n + z*h_prev.
// The reset gate scales the recurrent part of the candidate only, so d(rh_n) = d(pre_n)*r
// differs from d(wx_n) = d(pre_n), and d(r) needs rh_n: it is saved with the activations.
#pragma once

#include "common.h"

namespace flashseq {
namespace cells {

struct GruCell {
  static constexpr int kNumGates = 3;   // r, z, n
  static constexpr int kNumStates = 1;  // h
  static constexpr int kNumSaved = 4;   // r, z, n after their activations, and rh_n

  // wx[kNumGates], rh[kNumGates] (bias included), prev[kNumStates] -> next[kNumStates],
  // saved[kNumSaved].
  template <typename T>
  FLASHSEQ_HOST_DEVICE static inline void forward(const T* wx, const T* rh, const T* prev,
                                                  T* next, T* saved) {
    const T r = sigmoid(wx[0] + rh[0]);
    const T z = sigmoid(wx[1] + rh[1]);
    const T n = tanh_of(wx[2] + r * rh[2]);
    next[0] = (T(1) - z) * n + z * prev[0];
    saved[0] = r;
    saved[1] = z;
    saved[2] = n;
    saved[3] = rh[2];
  }

  // Same contract as LstmCell::backward.
  template <typename T>
  FLASHSEQ_HOST_DEVICE static inline void backward(const T* saved, const T* prev, T /*h_next*/,
                                                   const T* dnext, T* dwx, T* drh, T* dprev) {
    const T r = saved[0], z = saved[1], n = saved[2], rh_n = saved[3];
    const T dh = dnext[0];
    const T dpre_n = dh * (T(1) - z) * (T(1) - n * n);
    const T dpre_r = dpre_n * rh_n * r * (T(1) - r);
    const T dpre_z = dh * (prev[0] - n) * z * (T(1) - z);
    dwx[0] = dpre_r;
    dwx[1] = dpre_z;
    dwx[2] = dpre_n;
    drh[0] = dpre_r;
    drh[1] = dpre_z;
    drh[2] = dpre_n * r;
    dprev[0] = dh * z;
  }
};

static_assert(GruCell::kNumGates == 3 && GruCell::kNumStates == 1, "GRU: gates r,z,n; state h");

}  // namespace cells
}  // namespace flashseq
