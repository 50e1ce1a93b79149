// xLSTM's sLSTM cell, pointwise forward and backward (see flashseq/cells/slstm.py).
//
// Gates (i, f, z, o), states (h, c, n, m). With x~ = wx_x + rh_x:
//   lf = logsigmoid(f~), m = max(lf + m_prev, i~), i = exp(i~ - m), f = exp(lf + m_prev - m),
//   c = f*c_prev + i*tanh(z~), n = f*n_prev + i, h = sigmoid(o~) * c / n.
// Saved per step: the four pre-activations. The backward recomputes the gates from them and the
// previous states (a few exp/tanh per unit, cheaper than storing them).
//
// m is a returned state, so its gradient dm flows back; i and f depend on m, which is how it
// enters. At a tie lf + m_prev == i~ the whole gradient of m goes to lf + m_prev (the fixed
// sub-gradient every flashseq kernel reproduces).
#pragma once

#include "common.h"

namespace flashseq {
namespace cells {

struct SlstmCell {
  static constexpr int kNumGates = 4;   // i, f, z, o
  static constexpr int kNumStates = 4;  // h, c, n, m
  static constexpr int kNumSaved = 4;   // i~, f~, z~, o~ (pre-activations)

  // wx[kNumGates], rh[kNumGates] (bias included), prev[kNumStates] -> next[kNumStates],
  // saved[kNumSaved].
  template <typename T>
  FLASHSEQ_HOST_DEVICE static inline void forward(const T* wx, const T* rh, const T* prev,
                                                  T* next, T* saved) {
    const T it = wx[0] + rh[0], ft = wx[1] + rh[1], zt = wx[2] + rh[2], ot = wx[3] + rh[3];
    const T lf_m = log_sigmoid(ft) + prev[3];
    const T m = select_ge(lf_m, it, lf_m, it);  // ties take lf + m_prev
    const T i = exp_of(it - m);
    const T f = exp_of(lf_m - m);
    const T c = f * prev[1] + i * tanh_of(zt);
    const T n = f * prev[2] + i;
    next[0] = sigmoid(ot) * c / n;
    next[1] = c;
    next[2] = n;
    next[3] = m;
    saved[0] = it;
    saved[1] = ft;
    saved[2] = zt;
    saved[3] = ot;
  }

  // Same contract as LstmCell::backward.
  template <typename T>
  FLASHSEQ_HOST_DEVICE static inline void backward(const T* saved, const T* prev, T /*h_next*/,
                                                   const T* dnext, T* dwx, T* drh, T* dprev) {
    const T it = saved[0], ft = saved[1], zt = saved[2], ot = saved[3];
    const T c_prev = prev[1], n_prev = prev[2];
    const T lf_m = log_sigmoid(ft) + prev[3];
    const T m = select_ge(lf_m, it, lf_m, it);
    const T i = exp_of(it - m);
    const T f = exp_of(lf_m - m);
    const T z = tanh_of(zt);
    const T o = sigmoid(ot);
    const T c = f * c_prev + i * z;
    const T inv_n = T(1) / (f * n_prev + i);

    const T dh = dnext[0];
    const T dc = dnext[1] + dh * o * inv_n;
    const T dn = dnext[2] - dh * o * c * inv_n * inv_n;
    // Gradients w.r.t. the exponents of i = exp(i~ - m) and f = exp(lf + m_prev - m).
    const T d_iexp = (dc * z + dn) * i;
    const T d_fexp = (dc * c_prev + dn * n_prev) * f;
    const T dm = dnext[3] - d_iexp - d_fexp;
    const T d_lf_m = d_fexp + select_ge(lf_m, it, dm, T(0));
    dwx[0] = d_iexp + select_ge(lf_m, it, T(0), dm);
    dwx[1] = d_lf_m * sigmoid(-ft);  // d logsigmoid(x)/dx = sigmoid(-x)
    dwx[2] = dc * i * (T(1) - z * z);
    dwx[3] = dh * c * inv_n * o * (T(1) - o);
    for (int k = 0; k < kNumGates; ++k) drh[k] = dwx[k];
    dprev[0] = T(0);
    dprev[1] = dc * f;
    dprev[2] = dn * f;
    dprev[3] = d_lf_m;
  }
};

static_assert(SlstmCell::kNumGates == 4 && SlstmCell::kNumStates == 4,
              "sLSTM: gates i,f,z,o; states h,c,n,m");

}  // namespace cells
}  // namespace flashseq
