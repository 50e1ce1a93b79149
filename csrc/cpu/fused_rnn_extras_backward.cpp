// Backward of the extras loop (fused_rnn_extras.h), in reversed time. Per step: one pass over
// the (head, batch) rows recomputes the cell from the saved hr and the previous states and runs
// its backward (extras_rows.h), zoneout routing each state's gradient either to the cell or
// straight to the previous state; one GEMM d(h_in) = d(hr) @ W^T; one pass applies the
// variational mask and sends the previous states' gradient to the initial states where the row
// was reset. After the loop d(W) is one GEMM of hin_all against every step's d(hr), d(b) a sum.
//   dcarry  [S, NH, B, DH]      gradient of the states after the current step
//   dprev   [S, NH, B, DH]      gradient of the states the current step started from
//   dinit   [S, NH, B, DH]      gradient reaching the initial states through resets
//   dhr_all [NH, T, B, G*DH]    d(hin @ W) of every step, zero past a row's length
//   db_acc  [NH, B, G*DH]       d(b) summed over steps per row (one writer per row: deterministic)
#include <ATen/Parallel.h>

#include <vector>

#include "extras_rows.h"
#include "fused_rnn_cpu.h"
#include "fused_rnn_extras.h"
#include "step_gemm.h"

namespace flashseq {
namespace cpu {
namespace {

struct Upstream {
  const void* dh;      // [B, T, NH, DH] dense or null
  const void* d_all;   // [T, S, B, NH, DH] dense or null
};

template <typename Rows, typename scalar_t>
void extras_backward_loop(const Upstream& up, at::Tensor& dcarry, const at::Tensor& wx,
                          const at::Tensor& r, const at::Tensor& bias, const at::Tensor& init,
                          const at::Tensor& all_states, const at::Tensor& hr_all,
                          const int64_t* len, const scalar_t* var_p, const bool* zone_p,
                          const bool* reset_p, at::Tensor& dwx, at::Tensor& dhr_all,
                          at::Tensor& db_acc, at::Tensor& dinit) {
  constexpr int G = Rows::kNumGates, S = Rows::kNumStates;
  const int64_t B = wx.size(0), T = wx.size(1), NH = wx.size(3), DH = wx.size(4);
  const int64_t GDH = G * DH, rows = NH * B, state_stride = NH * B * DH;
  const scalar_t* dh_p = static_cast<const scalar_t*>(up.dh);
  const scalar_t* d_all_p = static_cast<const scalar_t*>(up.d_all);
  const scalar_t* wx_p = wx.data_ptr<scalar_t>();
  const scalar_t* bias_p = bias.data_ptr<scalar_t>();
  const scalar_t* init_p = init.data_ptr<scalar_t>();
  const scalar_t* all_p = all_states.data_ptr<scalar_t>();
  const scalar_t* hr_p = hr_all.data_ptr<scalar_t>();
  scalar_t* dcarry_p = dcarry.data_ptr<scalar_t>();
  scalar_t* dwx_p = dwx.data_ptr<scalar_t>();
  scalar_t* dhr_p = dhr_all.data_ptr<scalar_t>();
  scalar_t* db_p = db_acc.data_ptr<scalar_t>();
  scalar_t* dinit_p = dinit.data_ptr<scalar_t>();
  at::Tensor dprev = at::zeros({S, NH, B, DH}, wx.options());
  at::Tensor dhin = at::zeros({NH, B, DH}, wx.options());
  scalar_t* dprev_p = dprev.data_ptr<scalar_t>();
  scalar_t* dhin_p = dhin.data_ptr<scalar_t>();
  const int64_t hr_sn = T * B * GDH;
  const int64_t scratch = Rows::scratch_size(G, DH);
  const std::vector<int64_t> live = live_rows(len, B, T);
  const int64_t grain = pointwise_grain(GDH);
  at::Tensor Wt_panels, Wt;
  for (int64_t t = T - 1; t >= 0; --t) {
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> work(static_cast<size_t>(scratch + S * DH));
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / B, bi = row % B;
        const bool valid = len == nullptr || t < len[bi];
        scalar_t* dcarry_row = dcarry_p + row * DH;
        if (d_all_p != nullptr) {  // all_states[t] is the state after step t, every row
          for (int s = 0; s < S; ++s) {
            const scalar_t* src = d_all_p + (((t * S + s) * B + bi) * NH + n) * DH;
            for (int64_t e = 0; e < DH; ++e) dcarry_row[s * state_stride + e] += src[e];
          }
        }
        scalar_t* dwx_row = dwx_p + (bi * T + t) * G * NH * DH + n * DH;
        scalar_t* dhr_row = dhr_p + n * hr_sn + (t * B + bi) * GDH;
        if (!valid) {  // the step passed the states through: so do their gradients
          for (int g = 0; g < G; ++g)
            for (int64_t e = 0; e < DH; ++e) dwx_row[g * NH * DH + e] = scalar_t(0);
          for (int64_t k = 0; k < GDH; ++k) dhr_row[k] = scalar_t(0);
          continue;
        }
        const bool from_init = t == 0 || (reset_p != nullptr && reset_p[bi * T + t]);
        extras::RowIn<scalar_t> in{DH, wx_p + (bi * T + t) * G * NH * DH + n * DH, NH * DH,
                                   hr_p + n * hr_sn + (t * B + bi) * GDH, bias_p + n * GDH, {},
                                   work.data()};
        scalar_t* dcell[4];
        extras::RowGrad<scalar_t> grad{dwx_row, NH * DH, dhr_row, db_p + row * GDH, {}};
        for (int s = 0; s < S; ++s) {
          in.prev[s] = from_init ? init_p + s * state_stride + row * DH
                                 : all_p + ((((t - 1) * S + s) * B + bi) * NH + n) * DH;
          dcell[s] = work.data() + scratch + s * DH;
          grad.dprev[s] = dprev_p + s * state_stride + row * DH;
          // d(new state): what reached the state after the step, plus the output's for h; a
          // unit zoneout kept passes it straight to the previous state, the others to the cell
          const scalar_t* dnew = dcarry_row + s * state_stride;
          const scalar_t* dh_row = (s == 0 && dh_p) ? dh_p + (bi * T + t) * NH * DH + n * DH : nullptr;
          const bool* keep = zone_p ? zone_p + (((t * S + s) * B + bi) * NH + n) * DH : nullptr;
          for (int64_t e = 0; e < DH; ++e) {
            const scalar_t d = dnew[e] + (dh_row ? dh_row[e] : scalar_t(0));
            dcell[s][e] = keep && keep[e] ? scalar_t(0) : d;
          }
        }
        Rows::backward(in, dcell, grad);  // writes dprev: the cell's direct part
        if (zone_p != nullptr) {
          for (int s = 0; s < S; ++s) {
            const bool* keep = zone_p + (((t * S + s) * B + bi) * NH + n) * DH;
            const scalar_t* dnew = dcarry_row + s * state_stride;
            const scalar_t* dh_row = s == 0 && dh_p ? dh_p + (bi * T + t) * NH * DH + n * DH : nullptr;
            for (int64_t e = 0; e < DH; ++e) {
              if (keep[e]) grad.dprev[s][e] += dnew[e] + (dh_row ? dh_row[e] : scalar_t(0));
            }
          }
        }
      }
    });
    const int64_t M = live[t];
    if (M > 0 && use_step_gemm(M)) {
      if (!Wt_panels.defined()) {  // row g*DH + e, column d of Wt [NH, G*DH, DH]
        std::vector<int64_t> row_offset(GDH), col_offset(DH);
        for (int64_t k = 0; k < GDH; ++k) row_offset[k] = (k / DH) * r.stride(0) + (k % DH) * r.stride(3);
        for (int64_t d = 0; d < DH; ++d) col_offset[d] = d * r.stride(2);
        Wt_panels = pack_panels(r.data_ptr<scalar_t>(), NH, r.stride(1), row_offset, col_offset,
                                r.options());
      }
      step_gemm<scalar_t>(NH, M, DH, GDH, dhr_p + t * B * GDH, GDH, hr_sn, Wt_panels, dhin_p, DH,
                          B * DH, /*accumulate=*/false);
    } else if (M > 0) {
      if (!Wt.defined()) Wt = r.permute({1, 0, 3, 2}).reshape({NH, GDH, DH}).contiguous();
      dhin.narrow(1, 0, M).copy_(at::bmm(dhr_all.select(1, t).narrow(1, 0, M), Wt));
    }
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / B, bi = row % B;
        if (len != nullptr && t >= len[bi]) continue;  // dcarry already holds d(previous states)
        const scalar_t* mask = var_p ? var_p + (bi * NH + n) * DH : nullptr;
        scalar_t* dh_prev = dprev_p + row * DH;
        const scalar_t* dhin_row = dhin_p + row * DH;
        for (int64_t e = 0; e < DH; ++e) dh_prev[e] += mask ? dhin_row[e] * mask[e] : dhin_row[e];
        const bool reset_here = reset_p != nullptr && reset_p[bi * T + t];
        for (int s = 0; s < S; ++s) {
          scalar_t* dst = dcarry_p + s * state_stride + row * DH;
          const scalar_t* src = dprev_p + s * state_stride + row * DH;
          scalar_t* dinit_row = dinit_p + s * state_stride + row * DH;
          for (int64_t e = 0; e < DH; ++e) {
            if (reset_here) {
              dinit_row[e] += src[e];
              dst[e] = scalar_t(0);
            } else {
              dst[e] = src[e];
            }
          }
        }
      }
    });
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_rnn_extras_backward(
    const c10::optional<at::Tensor>& dh_in, const c10::optional<at::Tensor>& d_last_in,
    const c10::optional<at::Tensor>& d_all_in, const at::Tensor& wx_in, const at::Tensor& r,
    const at::Tensor& b, const at::Tensor& states, const at::Tensor& all_states_in,
    const at::Tensor& hin_all_in, const at::Tensor& hr_all_in,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& variational,
    const c10::optional<at::Tensor>& zoneout, const c10::optional<at::Tensor>& reset,
    const std::string& cell) {
  TORCH_CHECK(wx_in.dim() == 5, "fused_rnn_cpu extras backward: wx must be [B, T, G, NH, DH]");
  const auto dtype = wx_in.scalar_type();
  const int64_t B = wx_in.size(0), T = wx_in.size(1), G = wx_in.size(2), NH = wx_in.size(3),
                DH = wx_in.size(4);
  const auto [G_cell, S] = extras_cell_layout(cell);
  TORCH_CHECK(G == G_cell, "fused_rnn_cpu extras backward: wx's gate axis must be ", G_cell);
  check_common(r, states, G, S, B, NH, DH, dtype, lengths);
  TORCH_CHECK(all_states_in.sizes() == at::IntArrayRef({T, S, B, NH, DH}),
              "fused_rnn_cpu extras backward: all_states must be [T, S, B, NH, DH]; got ",
              all_states_in.sizes(), " (was the forward run with save=True?)");
  TORCH_CHECK(hin_all_in.sizes() == at::IntArrayRef({NH, T, B, DH}) &&
                  hr_all_in.sizes() == at::IntArrayRef({NH, T, B, G * DH}),
              "fused_rnn_cpu extras backward: hin_all / hr_all must be [NH, T, B, DH] / "
              "[NH, T, B, G*DH]; got ", hin_all_in.sizes(), " / ", hr_all_in.sizes());
  at::Tensor dh, d_all;
  if (dh_in.has_value()) {
    TORCH_CHECK(dh_in->sizes() == at::IntArrayRef({B, T, NH, DH}) && dh_in->scalar_type() == dtype,
                "fused_rnn_cpu extras backward: dh must be [B, T, NH, DH]; got ", dh_in->sizes());
    dh = dh_in->contiguous();
  }
  if (d_all_in.has_value()) {
    TORCH_CHECK(d_all_in->sizes() == all_states_in.sizes() && d_all_in->scalar_type() == dtype,
                "fused_rnn_cpu extras backward: d_all_states must be [T, S, B, NH, DH]; got ",
                d_all_in->sizes());
    d_all = d_all_in->contiguous();
  }
  at::Tensor dcarry;
  if (d_last_in.has_value()) {
    TORCH_CHECK(d_last_in->sizes() == states.sizes() && d_last_in->scalar_type() == dtype,
                "fused_rnn_cpu extras backward: d_last_states must match states ", states.sizes());
    dcarry = d_last_in->permute({0, 2, 1, 3}).clone(at::MemoryFormat::Contiguous);
  } else {
    dcarry = at::zeros({S, NH, B, DH}, wx_in.options());
  }
  const at::Tensor wx = wx_in.contiguous(), all_states = all_states_in.contiguous();
  const at::Tensor hin_all = hin_all_in.contiguous(), hr_all = hr_all_in.contiguous();
  const at::Tensor bias = b.permute({1, 0, 2}).reshape({NH, G * DH}).contiguous();
  const at::Tensor init = states.permute({0, 2, 1, 3}).contiguous();
  at::Tensor dwx = at::empty({B, T, G, NH, DH}, wx.options());
  at::Tensor dhr_all = at::empty({NH, T, B, G * DH}, wx.options());
  at::Tensor db_acc = at::zeros({NH, B, G * DH}, wx.options());
  at::Tensor dinit = at::zeros({S, NH, B, DH}, wx.options());
  at::Tensor len_c, var_c, zone_c, reset_c;
  if (lengths.has_value()) len_c = lengths->contiguous();
  if (variational.has_value()) var_c = variational->contiguous();
  if (zoneout.has_value()) zone_c = zoneout->contiguous();
  if (reset.has_value()) reset_c = reset->contiguous();
  const int64_t* len = len_c.defined() ? len_c.data_ptr<int64_t>() : nullptr;
  const bool* zone_p = zone_c.defined() ? zone_c.data_ptr<bool>() : nullptr;
  const bool* reset_p = reset_c.defined() ? reset_c.data_ptr<bool>() : nullptr;
  const Upstream up{dh.defined() ? dh.data_ptr() : nullptr,
                    d_all.defined() ? d_all.data_ptr() : nullptr};

  AT_DISPATCH_FLOATING_TYPES(dtype, "fused_rnn_cpu_extras_backward", [&] {
    const scalar_t* var_p = var_c.defined() ? var_c.data_ptr<scalar_t>() : nullptr;
    extras::dispatch_rows(cell, [&](auto rows) {
      extras_backward_loop<decltype(rows), scalar_t>(up, dcarry, wx, r, bias, init, all_states,
                                                     hr_all, len, var_p, zone_p, reset_p, dwx,
                                                     dhr_all, db_acc, dinit);
      return 0;
    });
  });
  // d(W) [NH, DH, G*DH] = sum over (step, row) of hin^T d(hr); rows past their length have
  // d(hr) = 0 and a finite hin, so they add nothing.
  const at::Tensor dW = at::bmm(hin_all.view({NH, T * B, DH}).transpose(1, 2),
                                dhr_all.view({NH, T * B, G * DH}));
  at::Tensor dr = dW.view({NH, DH, G, DH}).permute({2, 0, 1, 3}).contiguous();
  at::Tensor db = db_acc.sum(1).view({NH, G, DH}).permute({1, 0, 2}).contiguous();
  at::Tensor dstates = (dcarry + dinit).permute({0, 2, 1, 3}).contiguous();
  return {dwx, dr, db, dstates};
}

}  // namespace cpu
}  // namespace flashseq
