// Forward of the compiled CPU loop: per step one GEMM h_prev @ W, then one fused pointwise pass
// over (head, batch, unit) applying the cell header. Layouts: fused_rnn_cpu.h. The float32 LSTM
// with nothing saved (no_grad), no lengths and small enough panels instead runs GEMM and cell
// update together per block of 16 units (fused_lstm_loop).
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <type_traits>

#include "big_alloc.h"
#include "fused_rnn_cpu.h"
#include "pointwise_avx512.h"
#include "step_gemm.h"
#include "vec_lanes.h"

namespace flashseq {
namespace cpu {

void check_common(const at::Tensor& r, const at::Tensor& states, int64_t G, int64_t S, int64_t B,
                  int64_t NH, int64_t DH, at::ScalarType dtype,
                  const c10::optional<at::Tensor>& lengths) {
  TORCH_CHECK(r.sizes() == at::IntArrayRef({G, NH, DH, DH}), "fused_rnn_cpu: r must be [G, NH, DH, DH] = [",
              G, ", ", NH, ", ", DH, ", ", DH, "]; got ", r.sizes());
  TORCH_CHECK(states.sizes() == at::IntArrayRef({S, B, NH, DH}),
              "fused_rnn_cpu: states must be [S, B, NH, DH] = [", S, ", ", B, ", ", NH, ", ", DH,
              "]; got ", states.sizes());
  TORCH_CHECK(r.scalar_type() == dtype && states.scalar_type() == dtype,
              "fused_rnn_cpu: r and states must have wx's dtype ", dtype, "; got r ",
              r.scalar_type(), ", states ", states.scalar_type());
  TORCH_CHECK(r.device().is_cpu() && states.device().is_cpu(),
              "fused_rnn_cpu: r and states must be CPU tensors");
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->scalar_type() == at::kLong && lengths->dim() == 1 &&
                    lengths->size(0) == B && lengths->device().is_cpu(),
                "fused_rnn_cpu: lengths must be an int64 CPU tensor [B] = [", B, "]; got ",
                lengths->scalar_type(), " ", lengths->sizes());
  }
}

int64_t& step_gemm_max_batch() {
  // Measured (1 thread, LSTM, T=64, fwd and fwd+bwd, shared 2-core Zen 3 box): the packed-panel
  // kernel beats at::mm (MKL) at every batch up to 64 (H=512 B=16 fwd 45 vs 87 ms; H=1024 B=16
  // 366 vs 748 ms) and ties it at 128 for H=128 (39 vs 39 ms); MKL's own blocking is left the
  // larger batches.
  static int64_t max_batch = 128;
  return max_batch;
}

bool& fused_lstm_allowed() {
  // Switch for tests and benchmarks (default true): false keeps the no_grad LSTM on the
  // separate GEMM and pointwise passes.
  static bool allowed = true;
  return allowed;
}

bool& lstm_fast_update_allowed() {
  static bool allowed = true;
  return allowed;
}

bool& lstm_fast_train_allowed() {
  static bool allowed = true;
  return allowed;
}

namespace {
std::array<std::atomic<int64_t>, 2> lstm_nograd_paths{};
}  // namespace

std::array<int64_t, 2> lstm_nograd_path_counts(bool reset) {
  std::array<int64_t, 2> counts{};
  for (size_t i = 0; i < counts.size(); ++i)
    counts[i] = reset ? lstm_nograd_paths[i].exchange(0) : lstm_nograd_paths[i].load();
  return counts;
}

std::vector<int64_t> live_rows(const int64_t* len, int64_t B, int64_t T) {
  std::vector<int64_t> live(T, len == nullptr ? B : 0);
  if (len == nullptr) return live;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0, end = std::min(len[b], T); t < end; ++t) live[t] = b + 1;
  }
  return live;
}

bool is_time_major(const at::Tensor& wx) {
  const int64_t B = wx.size(0), T = wx.size(1), G = wx.size(2), NH = wx.size(3), DH = wx.size(4);
  const int64_t row = G * NH * DH;
  return B > 1 && T > 1 && wx.stride(4) == 1 && wx.stride(3) == DH && wx.stride(2) == NH * DH &&
         wx.stride(0) == row && wx.stride(1) == B * row;
}

std::tuple<int64_t, int64_t, int64_t> cell_layout(const std::string& cell) {
  return dispatch_cell(cell, [](auto c) {
    using Cell = decltype(c);
    return std::tuple<int64_t, int64_t, int64_t>(Cell::kNumGates, Cell::kNumStates,
                                                 Cell::kNumSaved);
  });
}

namespace {

// Brings [p, p + count) towards L2 (prefetcht1, not into L1). Why: each step reads its rows of
// wx from memory (the projection of all T steps is tens of MB); the next-row prefetch alone
// comes a row's work ahead, and an L1 prefetch a whole step ahead was evicted by the weight
// panels the step's GEMM streams. Batch-major, per step of H=128 B=16: T=512 ran 10% slower
// than T=32 (whose wx stays cached).
template <typename scalar_t>
inline void prefetch_l2(const scalar_t* p, int64_t count, bool for_write = false) {
  prefetch_lines<2>(p, count, for_write);
}

#if defined(FLASHSEQ_HAVE_AVX512_TILE)
// r [4, NH, DH, DH] (r[g][n][d][e]: input unit d, output unit e) packed for
// lstm_fused_block_avx512: [NH, blocks, DH, 64], block j's column g * 16 + u holding gate g of
// unit 16 j + u, zero past DH.
at::Tensor pack_lstm_gate_panels(const at::Tensor& r) {
  const int64_t NH = r.size(1), DH = r.size(2), U = kLstmGatePanelUnits, P = kLstmGatePanelCols;
  const int64_t blocks = (DH + U - 1) / U;
  at::Tensor packed = empty_big({NH, blocks, DH, P}, r.options());
  const float* src = r.data_ptr<float>();
  float* out = packed.data_ptr<float>();
  const int64_t sg = r.stride(0), sn = r.stride(1), sd = r.stride(2), se = r.stride(3);
  if (sd == 1) count_transposed_pack();
  at::parallel_for(0, NH * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / blocks, u0 = (i % blocks) * U, units = std::min(U, DH - u0);
      float* dst = out + i * DH * P;
      if (sd == 1) {  // d dense (the modules' r): each gate's 16 columns transposed in registers
        for (int64_t g = 0; g < 4; ++g) {
          const float* col[16];
          for (int64_t u = 0; u < U; ++u)
            col[u] = u < units ? src + g * sg + n * sn + (u0 + u) * se : nullptr;
          transpose_columns16_avx512(col, units, DH, dst + g * U, P);
        }
        continue;
      }
      for (int64_t col = 0; col < P; ++col) {
        const int64_t g = col / U, u = col % U;
        if (u >= units) {
          for (int64_t d = 0; d < DH; ++d) dst[d * P + col] = 0.0f;
          continue;
        }
        // d is the dense axis of r when it is a transposed view of weight_hh
        const float* from = src + g * sg + n * sn + (u0 + u) * se;
        for (int64_t d = 0; d < DH; ++d) dst[d * P + col] = from[d * sd];
      }
    }
  });
  return packed;
}

// Where the fused loop was measured faster (paired with the separate passes, 1 thread, Zen 5,
// CPU time): a block's [DH, 64] panel must stay in L1 (48 KB) while every row tile of the step
// reads it (H=128 B=16 T=512: 0.95; H=256 B=32: 0.98, at the edge), or the step be one row tile,
// the panel read once (H=256 B=1: 0.92). Larger panels re-read from L2 per row tile lost to the
// 8x48 tile (H=512 B=16: 1.07; H=1024 B=8: 1.16).
bool fused_lstm_pays(int64_t B, int64_t DH) {
  return B <= 6 || DH * kLstmGatePanelCols * static_cast<int64_t>(sizeof(float)) <= 40 * 1024;
}

// The no_grad LSTM forward with each step's GEMM and cell update fused per block of 16 units
// (lstm_fused_block_avx512): one pass over the step instead of a GEMM writing [B, 4 DH] gates and
// a pointwise pass reading them back, and one parallel region per step instead of two. Each step's
// GEMM reads h_prev from the previous step's output h, so a block can write its new h while other
// blocks still read the old one; c is updated in place (each block owns its units).
void fused_lstm_loop(const at::Tensor& wx, const at::Tensor& r, const at::Tensor& bias,
                     at::Tensor& carry, at::Tensor& h) {
  const int64_t B = wx.size(0), T = wx.size(1), NH = wx.size(3), DH = wx.size(4);
  const int64_t U = kLstmGatePanelUnits, blocks = (DH + U - 1) / U, state_stride = NH * B * DH;
  const at::Tensor panels = pack_lstm_gate_panels(r);
  const float* panel_p = panels.data_ptr<float>();
  const float* wx_p = wx.data_ptr<float>();
  const float* bias_p = bias.data_ptr<float>();  // [NH, 4*DH]
  float* carry_p = carry.data_ptr<float>();      // [2, NH, B, DH]
  float* h_p = h.data_ptr<float>();
  const int64_t wx_sb = wx.stride(0), wx_st = wx.stride(1), h_sb = h.stride(0), h_st = h.stride(1);
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, B * DH * kLstmGatePanelCols));
  for (int64_t t = 0; t < T; ++t) {
    at::parallel_for(0, NH * blocks, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / blocks, u0 = (i % blocks) * U;
        LstmFusedBlock a;
        a.M = B;
        a.K = DH;
        a.units = std::min(U, DH - u0);
        if (t == 0) {
          a.A = carry_p + n * B * DH;
          a.lda = DH;
        } else {
          a.A = h_p + (t - 1) * h_st + n * DH;
          a.lda = h_sb;
        }
        a.panel = panel_p + i * DH * kLstmGatePanelCols;
        a.wx = wx_p + t * wx_st + n * DH + u0;
        a.wx_gate = NH * DH;
        a.wx_row = wx_sb;
        a.wx_next = t + 1 < T ? wx_st : 0;
        a.bias = bias_p + n * 4 * DH + u0;
        a.bias_gate = DH;
        a.c = carry_p + state_stride + n * B * DH + u0;
        a.c_row = DH;
        a.h = h_p + t * h_st + n * DH + u0;
        a.h_row = h_sb;
        lstm_fused_block_avx512(a);
      }
    });
  }
  if (T > 0) {  // the last h into the carried states
    for (int64_t n = 0; n < NH; ++n)
      for (int64_t b = 0; b < B; ++b)
        std::copy_n(h_p + b * h_sb + (T - 1) * h_st + n * DH, DH, carry_p + (n * B + b) * DH);
  }
}
#endif

template <typename Cell, typename scalar_t>
void forward_loop(const at::Tensor& wx, const at::Tensor& r, const at::Tensor& bias,
                  at::Tensor& carry, at::Tensor& rh, const int64_t* len, at::Tensor& h,
                  at::Tensor& saved_gates, at::Tensor& saved_states, bool save) {
  // wx [B, T, G, NH, DH] and h [B, T, NH, DH] are read and written through their batch and step
  // strides (batch-major or a [B, T, ...] view of a time-major buffer, fused_rnn_forward); the
  // axes after T are dense.
  constexpr int G = Cell::kNumGates, S = Cell::kNumStates, K = Cell::kNumSaved;
  using L = Lanes<scalar_t>;
  using V = typename L::V;
  const int64_t B = wx.size(0), T = wx.size(1), NH = wx.size(3), DH = wx.size(4);
  const int64_t GDH = G * DH, rows = NH * B, state_stride = NH * B * DH;
  const scalar_t* wx_p = wx.data_ptr<scalar_t>();      // [B, T, G, NH, DH]
  const int64_t wx_sb = wx.stride(0), wx_st = wx.stride(1), h_sb = h.stride(0), h_st = h.stride(1);
  const scalar_t* bias_p = bias.data_ptr<scalar_t>();  // [NH, G*DH]
  const scalar_t* rh_p = rh.data_ptr<scalar_t>();      // [NH, B, G*DH]
  scalar_t* carry_p = carry.data_ptr<scalar_t>();      // [S, NH, B, DH]
  scalar_t* h_p = h.data_ptr<scalar_t>();              // [B, T, NH, DH]
  scalar_t* gates_p = save ? saved_gates.data_ptr<scalar_t>() : nullptr;  // [T, NH, B, K, DH]
  scalar_t* sstates_p = save ? saved_states.data_ptr<scalar_t>() : nullptr;  // [T, S-1, NH, B, DH]
  const at::Tensor h_carry = carry.select(0, 0);  // [NH, B, DH], the GEMM's left operand
  at::Tensor rh_head0 = rh.select(0, 0);            // [B, G*DH], the GEMM's output when NH == 1
  const at::Tensor h_head0 = h_carry.select(0, 0);
  scalar_t* rh_out = rh.data_ptr<scalar_t>();
  const int64_t grain = pointwise_grain(GDH);
  const std::vector<int64_t> live = live_rows(len, B, T);
  const bool avx512_rows = kHasAvx512Row<Cell, scalar_t> && use_avx512_tile();
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
  if constexpr (std::is_same_v<Cell, cells::LstmCell> && std::is_same_v<scalar_t, float>) {
    if (avx512_rows && !save && lstm_fast_update_allowed()) ++lstm_nograd_paths[1];
    if (avx512_rows && fused_lstm_allowed() && !save && len == nullptr && use_step_gemm(B) &&
        fused_lstm_pays(B, DH)) {
      ++lstm_nograd_paths[0];
      fused_lstm_loop(wx, r, bias, carry, h);
      return;
    }
  }
#endif
  // W [NH, DH, G*DH], W[n][d][g*DH + e] = r[g][n][d][e], in the form each GEMM wants, made on
  // the first step that needs it: panels for step_gemm, a dense copy for at::mm.
  at::Tensor W_panels, W;
  for (int64_t t = 0; t < T; ++t) {
    // Only the first M rows can still be running; the rest keep their states and skip the GEMM.
    const int64_t M = live[t];
    if (M > 0 && use_step_gemm(M)) {
      if (!W_panels.defined()) {  // row d, column g*DH + e
        std::vector<int64_t> row_offset(DH), col_offset(GDH);
        for (int64_t d = 0; d < DH; ++d) row_offset[d] = d * r.stride(2);
        for (int64_t c = 0; c < GDH; ++c) col_offset[c] = (c / DH) * r.stride(0) + (c % DH) * r.stride(3);
        W_panels = pack_panels(r.data_ptr<scalar_t>(), NH, r.stride(1), row_offset, col_offset,
                               r.options());
      }
      step_gemm<scalar_t>(NH, M, GDH, DH, carry_p, DH, B * DH, W_panels, rh_out, GDH, B * GDH,
                          /*accumulate=*/false);
    } else if (M > 0) {
      if (!W.defined()) W = r.permute({1, 2, 0, 3}).reshape({NH, DH, GDH}).contiguous();
      if (NH == 1) {
        at::Tensor rh_live = rh_head0.narrow(0, 0, M);  // a view: mm_out writes into rh
        at::mm_out(rh_live, h_head0.narrow(0, 0, M), W.select(0, 0));
      } else if (M == B) {
        at::bmm_out(rh, h_carry, W);
      } else {
        rh.narrow(1, 0, M).copy_(at::bmm(h_carry.narrow(1, 0, M), W));
      }
    }
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / B, bi = row % B;
        const bool valid = len == nullptr || t < len[bi];
        scalar_t* h_out = h_p + bi * h_sb + t * h_st + n * DH;
        scalar_t* carry_row = carry_p + row * DH;
        if (!valid) {  // states stay; output 0; the saved states repeat the previous ones
          for (int64_t e = 0; e < DH; ++e) h_out[e] = scalar_t(0);
          if (save) {
            for (int s = 1; s < S; ++s) {
              scalar_t* dst = sstates_p + ((t * (S - 1) + (s - 1)) * rows + row) * DH;
              for (int64_t e = 0; e < DH; ++e) dst[e] = carry_row[s * state_stride + e];
            }
          }
          continue;
        }
        const scalar_t* wx_row = wx_p + bi * wx_sb + t * wx_st + n * DH;  // + g*NH*DH + e
        if (row + 1 < end) {  // the next row's input and output of this step (prefetch_span)
          const int64_t n1 = (row + 1) / B, b1 = (row + 1) % B;
          const scalar_t* wx_next = wx_p + b1 * wx_sb + t * wx_st + n1 * DH;
          for (int g = 0; g < G; ++g) prefetch_span(wx_next + g * NH * DH, DH);
          prefetch_span(h_p + b1 * h_sb + t * h_st + n1 * DH, DH, /*for_write=*/true);
        }
        if (t + 1 < T) {  // this row's input and output of the next step, into L2 only
          for (int g = 0; g < G; ++g) prefetch_l2(wx_row + wx_st + g * NH * DH, DH);
          prefetch_l2(h_out + h_st, DH, /*for_write=*/true);
        }
        const scalar_t* rh_row = rh_p + row * GDH;                         // + g*DH + e
        const scalar_t* bias_row = bias_p + n * GDH;
        scalar_t* gates_row = save ? gates_p + (t * rows + row) * K * DH : nullptr;
        if constexpr (kHasAvx512Row<Cell, scalar_t>) {
          if (avx512_rows) {
            PointwiseRow args{DH, wx_row, NH * DH, rh_row, bias_row, carry_row, state_stride,
                              h_out, gates_row,
                              save ? sstates_p + (t * (S - 1) * rows + row) * DH : nullptr,
                              rows * DH};
            avx512_forward_row<Cell>(args);
            continue;
          }
        }
        for (int64_t e = 0; e < DH; e += L::kWidth) {
          const int64_t cnt = std::min<int64_t>(L::kWidth, DH - e);
          V wx_v[G], rh_v[G], prev[S], next[S], saved[K > 0 ? K : 1];
          for (int g = 0; g < G; ++g) {
            wx_v[g] = L::load(wx_row + g * NH * DH + e, cnt);
            rh_v[g] = L::load(rh_row + g * DH + e, cnt) + L::load(bias_row + g * DH + e, cnt);
          }
          for (int s = 0; s < S; ++s) prev[s] = L::load(carry_row + s * state_stride + e, cnt);
          Cell::forward(wx_v, rh_v, prev, next, saved);
          for (int s = 0; s < S; ++s) L::store(next[s], carry_row + s * state_stride + e, cnt);
          L::store(next[0], h_out + e, cnt);
          if (save) {
            for (int k = 0; k < K; ++k) L::store(saved[k], gates_row + k * DH + e, cnt);
            for (int s = 1; s < S; ++s)
              L::store(next[s], sstates_p + ((t * (S - 1) + (s - 1)) * rows + row) * DH + e, cnt);
          }
        }
      }
    });
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_rnn_forward(
    const at::Tensor& wx_in, const at::Tensor& r, const at::Tensor& b, const at::Tensor& states,
    const c10::optional<at::Tensor>& lengths, const std::string& cell, bool save) {
  TORCH_CHECK(wx_in.dim() == 5, "fused_rnn_cpu: wx must be [B, T, G, NH, DH]; got ", wx_in.sizes());
  TORCH_CHECK(wx_in.device().is_cpu(), "fused_rnn_cpu: wx must be a CPU tensor");
  TORCH_CHECK(wx_in.scalar_type() == at::kFloat || wx_in.scalar_type() == at::kDouble,
              "fused_rnn_cpu: wx must be float32 or float64; got ", wx_in.scalar_type());
  const int64_t B = wx_in.size(0), T = wx_in.size(1), G = wx_in.size(2), NH = wx_in.size(3),
                DH = wx_in.size(4);
  const auto [G_cell, S, K] = cell_layout(cell);
  TORCH_CHECK(G == G_cell, "fused_rnn_cpu: wx's gate axis must be ", G_cell, " for cell ", cell,
              "; got ", wx_in.sizes());
  check_common(r, states, G, S, B, NH, DH, wx_in.scalar_type(), lengths);
  TORCH_CHECK(b.sizes() == at::IntArrayRef({G, NH, DH}) && b.scalar_type() == wx_in.scalar_type(),
              "fused_rnn_cpu: b must be [G, NH, DH] = [", G, ", ", NH, ", ", DH, "] of wx's dtype; got ",
              b.sizes(), " ", b.scalar_type());

  // A time-major wx (a [B, T, ...] view of a [T, B, G, NH, DH] buffer: the projection of
  // torch.nn's default [T, B, I] input) is read in place, and h is then written time-major too,
  // so each step's rows are adjacent in memory (batch-major, they lie a row of T steps apart and
  // every row's first load missed the caches). Anything else is made batch-major.
  const bool time_major = is_time_major(wx_in);
  const at::Tensor wx = time_major || wx_in.is_contiguous() ? wx_in : wx_in.contiguous();
  const at::Tensor bias = b.permute({1, 0, 2}).reshape({NH, G * DH}).contiguous();
  // clone: the loop updates carry in place and must never write into the caller's states.
  at::Tensor carry = states.permute({0, 2, 1, 3}).clone(at::MemoryFormat::Contiguous);
  at::Tensor rh = at::empty({NH, B, G * DH}, wx.options());
  at::Tensor h = time_major ? empty_big({T, B, NH, DH}, wx.options()).transpose(0, 1)
                            : empty_big({B, T, NH, DH}, wx.options());
  at::Tensor saved_gates = empty_big({save ? T : 0, NH, B, K, DH}, wx.options());
  at::Tensor saved_states = empty_big({save ? T : 0, S - 1, NH, B, DH}, wx.options());
  at::Tensor len_c;
  if (lengths.has_value()) len_c = lengths->contiguous();
  const int64_t* len = lengths.has_value() ? len_c.data_ptr<int64_t>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES(wx.scalar_type(), "fused_rnn_cpu_forward", [&] {
    dispatch_cell(cell, [&](auto c) {
      forward_loop<decltype(c), scalar_t>(wx, r, bias, carry, rh, len, h, saved_gates,
                                          saved_states, save);
      return 0;
    });
  });
  at::Tensor last_states = carry.permute({0, 2, 1, 3}).contiguous();  // [S, B, NH, DH]
  return {h, last_states, saved_gates, saved_states};
}

}  // namespace cpu
}  // namespace flashseq
