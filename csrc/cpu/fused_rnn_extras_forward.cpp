// Forward of the extras loop (fused_rnn_extras.h): per step, reset and the variational mask
// make the GEMM's left operand, one GEMM h_in @ W per head, then one pass over the (head, batch)
// rows applying the cell (extras_rows.h) and zoneout. Order within a step as the reference loop:
// reset, recurrence, cell, zoneout against the (reset) previous states, lengths.
#include <ATen/Parallel.h>

#include <vector>

#include "extras_rows.h"
#include "fused_rnn_cpu.h"
#include "fused_rnn_extras.h"
#include "step_gemm.h"

namespace flashseq {
namespace cpu {

std::tuple<int64_t, int64_t> extras_cell_layout(const std::string& cell) {
  return extras::dispatch_rows(cell, [](auto rows) {
    using Rows = decltype(rows);
    return std::tuple<int64_t, int64_t>(Rows::kNumGates, Rows::kNumStates);
  });
}

namespace {

template <typename Rows, typename scalar_t>
void extras_forward_loop(const at::Tensor& wx, const at::Tensor& r, const at::Tensor& bias,
                         const at::Tensor& init, at::Tensor& carry, const int64_t* len,
                         const scalar_t* var_p, const bool* zone_p, const bool* reset_p,
                         at::Tensor& h, at::Tensor& all_states, at::Tensor& hin_all,
                         at::Tensor& hr_all) {
  constexpr int G = Rows::kNumGates, S = Rows::kNumStates;
  const int64_t B = wx.size(0), T = wx.size(1), NH = wx.size(3), DH = wx.size(4);
  const int64_t GDH = G * DH, rows = NH * B, state_stride = NH * B * DH;
  const scalar_t* wx_p = wx.data_ptr<scalar_t>();      // [B, T, G, NH, DH] dense
  const scalar_t* bias_p = bias.data_ptr<scalar_t>();  // [NH, G*DH]
  const scalar_t* init_p = init.data_ptr<scalar_t>();  // [S, NH, B, DH]
  scalar_t* carry_p = carry.data_ptr<scalar_t>();      // [S, NH, B, DH]
  scalar_t* h_p = h.data_ptr<scalar_t>();              // [B, T, NH, DH]
  scalar_t* all_p = all_states.numel() ? all_states.data_ptr<scalar_t>() : nullptr;
  // hin / hr: every step's ([NH, T, B, ...]) when kept for the backward, else one step's
  const int64_t kept_steps = hin_all.size(1);
  scalar_t* hin_p = hin_all.data_ptr<scalar_t>();
  scalar_t* hr_p = hr_all.data_ptr<scalar_t>();
  const int64_t hin_sn = kept_steps * B * DH, hr_sn = kept_steps * B * GDH;
  const int64_t scratch = Rows::scratch_size(G, DH);
  const std::vector<int64_t> live = live_rows(len, B, T);
  const int64_t grain = pointwise_grain(GDH);
  at::Tensor W_panels, W;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = kept_steps == T ? t : 0;
    scalar_t* hin_t = hin_p + slot * B * DH;
    scalar_t* hr_t = hr_p + slot * B * GDH;
    // reset (rows still running only) and h_in = h_prev * mask, for every row so that the
    // backward's weight gradient never reads uninitialised memory
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / B, bi = row % B;
        const bool valid = len == nullptr || t < len[bi];
        if (valid && reset_p != nullptr && reset_p[bi * T + t]) {
          for (int s = 0; s < S; ++s)
            for (int64_t e = 0; e < DH; ++e)
              carry_p[s * state_stride + row * DH + e] = init_p[s * state_stride + row * DH + e];
        }
        scalar_t* dst = hin_t + n * hin_sn + bi * DH;
        const scalar_t* src = carry_p + row * DH;
        if (var_p != nullptr) {
          const scalar_t* mask = var_p + (bi * NH + n) * DH;
          for (int64_t e = 0; e < DH; ++e) dst[e] = src[e] * mask[e];
        } else {
          for (int64_t e = 0; e < DH; ++e) dst[e] = src[e];
        }
      }
    });
    const int64_t M = live[t];
    if (M > 0 && use_step_gemm(M)) {
      if (!W_panels.defined()) {  // row d, column g*DH + e of W [NH, DH, G*DH]
        std::vector<int64_t> row_offset(DH), col_offset(GDH);
        for (int64_t d = 0; d < DH; ++d) row_offset[d] = d * r.stride(2);
        for (int64_t c = 0; c < GDH; ++c) col_offset[c] = (c / DH) * r.stride(0) + (c % DH) * r.stride(3);
        W_panels = pack_panels(r.data_ptr<scalar_t>(), NH, r.stride(1), row_offset, col_offset,
                               r.options());
      }
      step_gemm<scalar_t>(NH, M, GDH, DH, hin_t, DH, hin_sn, W_panels, hr_t, GDH, hr_sn,
                          /*accumulate=*/false);
    } else if (M > 0) {
      if (!W.defined()) W = r.permute({1, 2, 0, 3}).reshape({NH, DH, GDH}).contiguous();
      const at::Tensor hin_view = hin_all.select(1, slot).narrow(1, 0, M);  // [NH, M, DH]
      hr_all.select(1, slot).narrow(1, 0, M).copy_(at::bmm(hin_view, W));
    }
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> work(static_cast<size_t>(scratch + S * DH));
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / B, bi = row % B;
        const bool valid = len == nullptr || t < len[bi];
        scalar_t* h_out = h_p + (bi * T + t) * NH * DH + n * DH;
        scalar_t* carry_row = carry_p + row * DH;
        if (valid) {
          extras::RowIn<scalar_t> in{DH, wx_p + (bi * T + t) * G * NH * DH + n * DH, NH * DH,
                                     hr_t + n * hr_sn + bi * GDH, bias_p + n * GDH, {},
                                     work.data()};
          scalar_t* next[4];
          for (int s = 0; s < S; ++s) {
            in.prev[s] = carry_row + s * state_stride;
            next[s] = work.data() + scratch + s * DH;
          }
          Rows::forward(in, next);
          for (int s = 0; s < S; ++s) {
            const bool* keep = zone_p ? zone_p + (((t * S + s) * B + bi) * NH + n) * DH : nullptr;
            for (int64_t e = 0; e < DH; ++e) {
              if (keep == nullptr || !keep[e]) carry_row[s * state_stride + e] = next[s][e];
            }
          }
          for (int64_t e = 0; e < DH; ++e) h_out[e] = carry_row[e];
        } else {  // past the row's length: states stay, output 0
          for (int64_t e = 0; e < DH; ++e) h_out[e] = scalar_t(0);
        }
        if (all_p != nullptr) {
          for (int s = 0; s < S; ++s) {
            scalar_t* dst = all_p + (((t * S + s) * B + bi) * NH + n) * DH;
            for (int64_t e = 0; e < DH; ++e) dst[e] = carry_row[s * state_stride + e];
          }
        }
      }
    });
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_rnn_extras_forward(
    const at::Tensor& wx_in, const at::Tensor& r, const at::Tensor& b, const at::Tensor& states,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& variational,
    const c10::optional<at::Tensor>& zoneout, const c10::optional<at::Tensor>& reset,
    const std::string& cell, bool save, bool all_states) {
  TORCH_CHECK(wx_in.dim() == 5, "fused_rnn_cpu extras: wx must be [B, T, G, NH, DH]; got ",
              wx_in.sizes());
  TORCH_CHECK(wx_in.device().is_cpu(), "fused_rnn_cpu extras: wx must be a CPU tensor");
  const auto dtype = wx_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "fused_rnn_cpu extras: wx must be float32 or float64; got ", dtype);
  const int64_t B = wx_in.size(0), T = wx_in.size(1), G = wx_in.size(2), NH = wx_in.size(3),
                DH = wx_in.size(4);
  const auto [G_cell, S] = extras_cell_layout(cell);
  TORCH_CHECK(G == G_cell, "fused_rnn_cpu extras: wx's gate axis must be ", G_cell, " for cell ",
              cell, "; got ", wx_in.sizes());
  check_common(r, states, G, S, B, NH, DH, dtype, lengths);
  TORCH_CHECK(b.sizes() == at::IntArrayRef({G, NH, DH}) && b.scalar_type() == dtype,
              "fused_rnn_cpu extras: b must be [G, NH, DH] of wx's dtype; got ", b.sizes(), " ",
              b.scalar_type());
  if (variational.has_value()) {
    TORCH_CHECK(variational->sizes() == at::IntArrayRef({B, NH, DH}) &&
                    variational->scalar_type() == dtype && variational->device().is_cpu(),
                "fused_rnn_cpu extras: variational must be a CPU [B, NH, DH] tensor of wx's dtype; "
                "got ", variational->sizes(), " ", variational->scalar_type());
  }
  if (zoneout.has_value()) {
    TORCH_CHECK(zoneout->sizes() == at::IntArrayRef({T, S, B, NH, DH}) &&
                    zoneout->scalar_type() == at::kBool && zoneout->device().is_cpu(),
                "fused_rnn_cpu extras: zoneout must be a bool CPU tensor [T, S, B, NH, DH]; got ",
                zoneout->sizes(), " ", zoneout->scalar_type());
  }
  if (reset.has_value()) {
    TORCH_CHECK(reset->sizes() == at::IntArrayRef({B, T}) && reset->scalar_type() == at::kBool &&
                    reset->device().is_cpu(),
                "fused_rnn_cpu extras: reset must be a bool CPU tensor [B, T]; got ",
                reset->sizes(), " ", reset->scalar_type());
  }
  const at::Tensor wx = wx_in.contiguous();
  const at::Tensor bias = b.permute({1, 0, 2}).reshape({NH, G * DH}).contiguous();
  const at::Tensor init = states.permute({0, 2, 1, 3}).contiguous();  // [S, NH, B, DH]
  at::Tensor carry = init.clone();
  at::Tensor h = at::empty({B, T, NH, DH}, wx.options());
  at::Tensor every = at::empty({save || all_states ? T : 0, S, B, NH, DH}, wx.options());
  const int64_t kept = save ? T : 1;
  at::Tensor hin_all = at::empty({NH, kept, B, DH}, wx.options());
  at::Tensor hr_all = at::empty({NH, kept, B, G * DH}, wx.options());
  at::Tensor len_c, var_c, zone_c, reset_c;
  if (lengths.has_value()) len_c = lengths->contiguous();
  if (variational.has_value()) var_c = variational->contiguous();
  if (zoneout.has_value()) zone_c = zoneout->contiguous();
  if (reset.has_value()) reset_c = reset->contiguous();
  const int64_t* len = len_c.defined() ? len_c.data_ptr<int64_t>() : nullptr;
  const bool* zone_p = zone_c.defined() ? zone_c.data_ptr<bool>() : nullptr;
  const bool* reset_p = reset_c.defined() ? reset_c.data_ptr<bool>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES(dtype, "fused_rnn_cpu_extras_forward", [&] {
    const scalar_t* var_p = var_c.defined() ? var_c.data_ptr<scalar_t>() : nullptr;
    extras::dispatch_rows(cell, [&](auto rows) {
      extras_forward_loop<decltype(rows), scalar_t>(wx, r, bias, init, carry, len, var_p, zone_p,
                                                    reset_p, h, every, hin_all, hr_all);
      return 0;
    });
  });
  at::Tensor last_states = carry.permute({0, 2, 1, 3}).contiguous();  // [S, B, NH, DH]
  if (!save) {
    hin_all = at::empty({NH, 0, B, DH}, wx.options());
    hr_all = at::empty({NH, 0, B, G * DH}, wx.options());
  }
  return {h, last_states, every, hin_all, hr_all};
}

}  // namespace cpu
}  // namespace flashseq
