// Per-row math of the extras loop (fused_rnn_extras.h): one (head, batch) row of one step,
// forward and backward, for the plain cells (through their headers in csrc/cells/) and for the
// LayerNorm cells, whose norms reduce over the row and so do not fit the headers' per-unit
// contract. Units go one SIMD vector at a time (vec_lanes.h), the norms' sums in double. The
// LayerNorm placement is that of flashseq/cells/layernorm_lstm.py and layernorm_gru.py (unit
// gain, zero bias, eps 1e-5, biased variance):
//   LSTM: pre = LN(wx) + (LN(hr) + b), c = f*c_prev + i*g, h = o*tanh(LN(c))
//   GRU:  a = LN(wx), u = LN(hr) + b, then torch.nn.GRU's cell on (a, u)
// with LN over the G*DH pre-activations of the head (wx's and hr's separately) and over the DH
// units of c. The backward recomputes the row's forward from hr (saved) instead of storing the
// normalised values.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cells/elman.h"
#include "cells/gru.h"
#include "cells/lstm.h"
#include "cells/slstm.h"
#include "vec_lanes.h"

namespace flashseq {
namespace cpu {
namespace extras {

constexpr double kNormEps = 1e-5;  // torch.nn.LayerNorm's default, as flashseq/cells/layernorm.py

// One row of one step. wx[g * wx_gs + e] is gate g, unit e; hr and bias are [G*DH] dense;
// prev[s] points at DH values of state s before the step (after reset).
template <typename scalar_t>
struct RowIn {
  int64_t DH;
  const scalar_t* wx;
  int64_t wx_gs;
  const scalar_t* hr;
  const scalar_t* bias;
  const scalar_t* prev[4];
  scalar_t* scratch;  // Rows::scratch_size(G, DH) values, private to the calling thread
};

// Gradients of one row: dwx[g * dwx_gs + e], dhr [G*DH] (of h_in @ r, before the norm), db_acc
// [G*DH] (accumulated: the bias gradient summed over the row's steps), dprev[s] (the direct part:
// the caller adds what reaches h_prev through the GEMM).
template <typename scalar_t>
struct RowGrad {
  scalar_t* dwx;
  int64_t dwx_gs;
  scalar_t* dhr;
  scalar_t* db_acc;
  scalar_t* dprev[4];
};

// x [n] -> (x - mean) / sqrt(var + eps) in place; returns 1 / sqrt(var + eps). Sums in double
// so the float32 result matches torch's to rounding.
template <typename scalar_t>
inline scalar_t normalize(scalar_t* x, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const double mean = sum / static_cast<double>(n);
  double sq = 0;
  for (int64_t i = 0; i < n; ++i) sq += (x[i] - mean) * (x[i] - mean);
  const double rstd = 1.0 / std::sqrt(sq / static_cast<double>(n) + kNormEps);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<scalar_t>((x[i] - mean) * rstd);
  return static_cast<scalar_t>(rstd);
}

// Gradient of y = normalize(x) [n]: dx = rstd * (dy - mean(dy) - y * mean(dy * y)), written to
// out[(i / DH) * gs + i % DH] (gs = DH: dense).
template <typename scalar_t>
inline void normalize_backward(const scalar_t* y, scalar_t rstd, const scalar_t* dy, int64_t n,
                               scalar_t* out, int64_t DH, int64_t gs) {
  double sum_dy = 0, sum_dyy = 0;
  for (int64_t i = 0; i < n; ++i) {
    sum_dy += dy[i];
    sum_dyy += static_cast<double>(dy[i]) * y[i];
  }
  const double mean_dy = sum_dy / static_cast<double>(n), mean_dyy = sum_dyy / static_cast<double>(n);
  for (int64_t i = 0; i < n; ++i)
    out[(i / DH) * gs + i % DH] = static_cast<scalar_t>(rstd * (dy[i] - mean_dy - y[i] * mean_dyy));
}

// A cell of csrc/cells/ applied to SIMD vectors of consecutive units (vec_lanes.h).
template <typename Cell>
struct PlainRows {
  static constexpr int kNumGates = Cell::kNumGates, kNumStates = Cell::kNumStates;
  static int64_t scratch_size(int64_t, int64_t) { return 0; }

  template <typename scalar_t>
  static void forward(const RowIn<scalar_t>& in, scalar_t* const* next) {
    constexpr int G = kNumGates, S = kNumStates, K = Cell::kNumSaved;
    using L = Lanes<scalar_t>;
    using V = typename L::V;
    const int64_t DH = in.DH;
    for (int64_t e = 0; e < DH; e += L::kWidth) {
      const int64_t cnt = std::min<int64_t>(L::kWidth, DH - e);
      V wx_v[G], rh_v[G], prev_v[S], next_v[S], saved[K > 0 ? K : 1];
      for (int g = 0; g < G; ++g) {
        wx_v[g] = L::load(in.wx + g * in.wx_gs + e, cnt);
        rh_v[g] = L::load(in.hr + g * DH + e, cnt) + L::load(in.bias + g * DH + e, cnt);
      }
      for (int s = 0; s < S; ++s) prev_v[s] = L::load(in.prev[s] + e, cnt);
      Cell::forward(wx_v, rh_v, prev_v, next_v, saved);
      for (int s = 0; s < S; ++s) L::store(next_v[s], next[s] + e, cnt);
    }
  }

  template <typename scalar_t>
  static void backward(const RowIn<scalar_t>& in, const scalar_t* const* dnext,
                       const RowGrad<scalar_t>& out) {
    constexpr int G = kNumGates, S = kNumStates, K = Cell::kNumSaved;
    using L = Lanes<scalar_t>;
    using V = typename L::V;
    const int64_t DH = in.DH;
    for (int64_t e = 0; e < DH; e += L::kWidth) {
      const int64_t cnt = std::min<int64_t>(L::kWidth, DH - e);
      V wx_v[G], rh_v[G], prev_v[S], next_v[S], saved[K > 0 ? K : 1], dnext_v[S], dwx_v[G],
          drh_v[G], dprev_v[S];
      for (int g = 0; g < G; ++g) {
        wx_v[g] = L::load(in.wx + g * in.wx_gs + e, cnt);
        rh_v[g] = L::load(in.hr + g * DH + e, cnt) + L::load(in.bias + g * DH + e, cnt);
      }
      for (int s = 0; s < S; ++s) {
        prev_v[s] = L::load(in.prev[s] + e, cnt);
        dnext_v[s] = L::load(dnext[s] + e, cnt);
      }
      Cell::forward(wx_v, rh_v, prev_v, next_v, saved);
      Cell::backward(saved, prev_v, next_v[0], dnext_v, dwx_v, drh_v, dprev_v);
      for (int g = 0; g < G; ++g) {
        L::store(dwx_v[g], out.dwx + g * out.dwx_gs + e, cnt);
        L::store(drh_v[g], out.dhr + g * DH + e, cnt);
        L::store(L::load(out.db_acc + g * DH + e, cnt) + drh_v[g], out.db_acc + g * DH + e, cnt);
      }
      for (int s = 0; s < S; ++s) L::store(dprev_v[s], out.dprev[s] + e, cnt);
    }
  }
};

// a = LN(wx) and xu = LN(hr) of a row into scratch [2 * G*DH]; returns their rstd.
template <typename scalar_t>
inline void normalize_inputs(const RowIn<scalar_t>& in, int G, scalar_t* a, scalar_t* xu,
                             scalar_t& rstd_a, scalar_t& rstd_u) {
  const int64_t DH = in.DH, GDH = G * DH;
  for (int g = 0; g < G; ++g)
    for (int64_t e = 0; e < DH; ++e) a[g * DH + e] = in.wx[g * in.wx_gs + e];
  for (int64_t i = 0; i < GDH; ++i) xu[i] = in.hr[i];
  rstd_a = normalize(a, GDH);
  rstd_u = normalize(xu, GDH);
}

struct LayerNormGruRows {
  using Cell = cells::GruCell;
  static constexpr int kNumGates = 3, kNumStates = 1;
  static int64_t scratch_size(int64_t G, int64_t DH) { return 4 * G * DH; }

  template <typename scalar_t>
  static void forward(const RowIn<scalar_t>& in, scalar_t* const* next) {
    using L = Lanes<scalar_t>;
    using V = typename L::V;
    const int64_t DH = in.DH, GDH = kNumGates * DH;
    scalar_t *a = in.scratch, *xu = a + GDH, rstd_a, rstd_u;
    normalize_inputs(in, kNumGates, a, xu, rstd_a, rstd_u);
    for (int64_t e = 0; e < DH; e += L::kWidth) {
      const int64_t cnt = std::min<int64_t>(L::kWidth, DH - e);
      V wx_v[3], rh_v[3], prev_v[1] = {L::load(in.prev[0] + e, cnt)}, next_v[1],
          saved[Cell::kNumSaved];
      for (int g = 0; g < 3; ++g) {
        wx_v[g] = L::load(a + g * DH + e, cnt);
        rh_v[g] = L::load(xu + g * DH + e, cnt) + L::load(in.bias + g * DH + e, cnt);
      }
      Cell::forward(wx_v, rh_v, prev_v, next_v, saved);
      L::store(next_v[0], next[0] + e, cnt);
    }
  }

  template <typename scalar_t>
  static void backward(const RowIn<scalar_t>& in, const scalar_t* const* dnext,
                       const RowGrad<scalar_t>& out) {
    using L = Lanes<scalar_t>;
    using V = typename L::V;
    const int64_t DH = in.DH, GDH = kNumGates * DH;
    scalar_t *a = in.scratch, *xu = a + GDH, *da = xu + GDH, *du = da + GDH, rstd_a, rstd_u;
    normalize_inputs(in, kNumGates, a, xu, rstd_a, rstd_u);
    for (int64_t e = 0; e < DH; e += L::kWidth) {
      const int64_t cnt = std::min<int64_t>(L::kWidth, DH - e);
      V wx_v[3], rh_v[3], prev_v[1] = {L::load(in.prev[0] + e, cnt)}, next_v[1],
          saved[Cell::kNumSaved], dnext_v[1] = {L::load(dnext[0] + e, cnt)}, da_v[3], du_v[3],
          dprev_v[1];
      for (int g = 0; g < 3; ++g) {
        wx_v[g] = L::load(a + g * DH + e, cnt);
        rh_v[g] = L::load(xu + g * DH + e, cnt) + L::load(in.bias + g * DH + e, cnt);
      }
      Cell::forward(wx_v, rh_v, prev_v, next_v, saved);
      Cell::backward(saved, prev_v, next_v[0], dnext_v, da_v, du_v, dprev_v);
      for (int g = 0; g < 3; ++g) {
        L::store(da_v[g], da + g * DH + e, cnt);
        L::store(du_v[g], du + g * DH + e, cnt);
        L::store(L::load(out.db_acc + g * DH + e, cnt) + du_v[g], out.db_acc + g * DH + e, cnt);
      }
      L::store(dprev_v[0], out.dprev[0] + e, cnt);
    }
    normalize_backward(xu, rstd_u, du, GDH, out.dhr, DH, DH);
    normalize_backward(a, rstd_a, da, GDH, out.dwx, DH, out.dwx_gs);
  }
};

struct LayerNormLstmRows {
  static constexpr int kNumGates = 4, kNumStates = 2;
  static int64_t scratch_size(int64_t G, int64_t DH) { return 4 * G * DH + 4 * DH; }

  // pre = a + (xu + b) into a; c [DH] and its norm cn [DH]; returns LN(c)'s rstd.
  template <typename scalar_t>
  static scalar_t cell_state(const RowIn<scalar_t>& in, scalar_t* a, const scalar_t* xu,
                             scalar_t* c, scalar_t* cn) {
    using L = Lanes<scalar_t>;
    using V = typename L::V;
    const int64_t DH = in.DH, GDH = kNumGates * DH;
    for (int64_t k = 0; k < GDH; ++k) a[k] = a[k] + (xu[k] + in.bias[k]);
    for (int64_t e = 0; e < DH; e += L::kWidth) {
      const int64_t cnt = std::min<int64_t>(L::kWidth, DH - e);
      const V i = cells::sigmoid(L::load(a + e, cnt)), f = cells::sigmoid(L::load(a + DH + e, cnt));
      const V g = cells::tanh_of(L::load(a + 2 * DH + e, cnt));
      const V c_v = f * L::load(in.prev[1] + e, cnt) + i * g;
      L::store(c_v, c + e, cnt);
      L::store(c_v, cn + e, cnt);
    }
    return normalize(cn, DH);
  }

  template <typename scalar_t>
  static void forward(const RowIn<scalar_t>& in, scalar_t* const* next) {
    using L = Lanes<scalar_t>;
    const int64_t DH = in.DH, GDH = kNumGates * DH;
    scalar_t *a = in.scratch, *xu = a + GDH, *cn = xu + GDH, rstd_a, rstd_u;
    normalize_inputs(in, kNumGates, a, xu, rstd_a, rstd_u);
    cell_state(in, a, xu, next[1], cn);
    for (int64_t e = 0; e < DH; e += L::kWidth) {
      const int64_t cnt = std::min<int64_t>(L::kWidth, DH - e);
      L::store(cells::sigmoid(L::load(a + 3 * DH + e, cnt)) * cells::tanh_of(L::load(cn + e, cnt)),
               next[0] + e, cnt);
    }
  }

  template <typename scalar_t>
  static void backward(const RowIn<scalar_t>& in, const scalar_t* const* dnext,
                       const RowGrad<scalar_t>& out) {
    using L = Lanes<scalar_t>;
    using V = typename L::V;
    const int64_t DH = in.DH, GDH = kNumGates * DH;
    scalar_t *a = in.scratch, *xu = a + GDH, *pre = a, *dpre = xu + GDH, *c = dpre + GDH,
             *cn = c + DH, *dcn = cn + DH, *dc = dcn + DH, rstd_a, rstd_u;
    scalar_t* a_hat = dc + DH;  // LN(wx), kept apart: pre overwrites a
    normalize_inputs(in, kNumGates, a, xu, rstd_a, rstd_u);
    for (int64_t k = 0; k < GDH; ++k) a_hat[k] = a[k];
    const scalar_t rstd_c = cell_state(in, pre, xu, c, cn);
    const V one(1);
    for (int64_t e = 0; e < DH; e += L::kWidth) {
      const int64_t cnt = std::min<int64_t>(L::kWidth, DH - e);
      const V o = cells::sigmoid(L::load(pre + 3 * DH + e, cnt));
      const V tc = cells::tanh_of(L::load(cn + e, cnt));
      L::store(L::load(dnext[0] + e, cnt) * o * (one - tc * tc), dcn + e, cnt);
    }
    normalize_backward(cn, rstd_c, dcn, DH, dc, DH, DH);
    for (int64_t e = 0; e < DH; e += L::kWidth) {
      const int64_t cnt = std::min<int64_t>(L::kWidth, DH - e);
      const V i = cells::sigmoid(L::load(pre + e, cnt)), f = cells::sigmoid(L::load(pre + DH + e, cnt));
      const V g = cells::tanh_of(L::load(pre + 2 * DH + e, cnt));
      const V o = cells::sigmoid(L::load(pre + 3 * DH + e, cnt));
      const V tc = cells::tanh_of(L::load(cn + e, cnt)), c_prev = L::load(in.prev[1] + e, cnt);
      const V dh = L::load(dnext[0] + e, cnt);
      const V d_c = L::load(dnext[1] + e, cnt) + L::load(dc + e, cnt);
      L::store(d_c * g * i * (one - i), dpre + e, cnt);
      L::store(d_c * c_prev * f * (one - f), dpre + DH + e, cnt);
      L::store(d_c * i * (one - g * g), dpre + 2 * DH + e, cnt);
      L::store(dh * tc * o * (one - o), dpre + 3 * DH + e, cnt);
      L::store(V(0), out.dprev[0] + e, cnt);
      L::store(d_c * f, out.dprev[1] + e, cnt);
    }
    for (int64_t k = 0; k < GDH; ++k) out.db_acc[k] += dpre[k];
    normalize_backward(xu, rstd_u, dpre, GDH, out.dhr, DH, DH);
    normalize_backward(a_hat, rstd_a, dpre, GDH, out.dwx, DH, out.dwx_gs);
  }
};

// Calls fn(Rows{}) for the cell called `name`; TORCH_CHECK fails for an unknown name.
template <typename Fn>
auto dispatch_rows(const std::string& name, Fn&& fn) {
  if (name == "lstm") return fn(PlainRows<cells::LstmCell>{});
  if (name == "gru") return fn(PlainRows<cells::GruCell>{});
  if (name == "slstm") return fn(PlainRows<cells::SlstmCell>{});
  if (name == "elman") return fn(PlainRows<cells::ElmanCell>{});
  if (name == "layernorm_lstm") return fn(LayerNormLstmRows{});
  TORCH_CHECK(name == "layernorm_gru",
              "fused_rnn_cpu extras: cell must be one of lstm, gru, slstm, elman, layernorm_lstm, "
              "layernorm_gru; got ", name);
  return fn(LayerNormGruRows{});
}

}  // namespace extras
}  // namespace cpu
}  // namespace flashseq
