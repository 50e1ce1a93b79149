// Backward of the compiled CPU loop, in reversed time. Per step: the cell header's pointwise
// backward gives d(wx) (written in place) and d(rh) (kept for all steps), then one GEMM
// d(h_prev) += d(rh) @ W^T. After the loop d(r) is ONE GEMM of the stored h_{t-1} against the
// stored d(rh) over all (batch, step) rows, and d(b) one reduction. Layouts: fused_rnn_cpu.h,
// plus
//   Wt      [NH, G*DH, DH]     Wt[n][g*DH + e][d] = r[g][n][d][e]
//   drh     [NH, B, T, G*DH]   d(rh) of every step; zero where a row is past its length
//   h_prev  [NH, B, T, DH]     the h each step started from (initial h, then the output h)
// (drh and h_prev [NH, T, B, ...] and d(wx) time-major when h is time-major and no lengths.)
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "big_alloc.h"
#include "fused_rnn_cpu.h"
#include "onednn_gemm.h"
#include "weight_grad.h"
#include "pointwise_avx512.h"
#include "row_gemv_avx512.h"
#include "step_gemm.h"
#include "vec_lanes.h"

namespace flashseq {
namespace cpu {

int& row_gemv_mode() {
  static int mode = 2;
  return mode;
}

bool& backward_row_split() {
  static bool allowed = true;
  return allowed;
}

namespace {

// Cells whose d(rh) equals their d(wx) gate for gate (their header writes drh[k] = dwx[k]: the
// gates enter as wx + rh). With one head, d(rh) [1, B, T, G*DH] then has d(wx)'s exact memory
// layout [B, T, G, 1, DH], so the loop stores d(wx) once and reads it back as d(rh): half the
// stores of the pointwise pass and no second [B, T, G*DH] buffer (whose first touch alone cost
// ~0.4 ms per MB in page faults on the dev VM: 10 ms at H=256 B=32 T=200).
template <typename Cell>
constexpr bool kDrhIsDwx = std::is_same_v<Cell, cells::LstmCell> ||
                           std::is_same_v<Cell, cells::SlstmCell> ||
                           std::is_same_v<Cell, cells::ElmanCell>;

template <typename Cell, typename scalar_t>
void backward_loop(const scalar_t* dh_p, int64_t dh_sb, int64_t dh_st, at::Tensor& dcarry,
                   const at::Tensor& h,
                   const at::Tensor& states, const at::Tensor& r, const at::Tensor& saved_gates,
                   const at::Tensor& saved_states, const int64_t* len, at::Tensor& dwx,
                   at::Tensor& drh, bool drh_is_dwx) {
  constexpr int G = Cell::kNumGates, S = Cell::kNumStates, K = Cell::kNumSaved;
  using L = Lanes<scalar_t>;
  using V = typename L::V;
  const int64_t B = h.size(0), T = h.size(1), NH = h.size(2), DH = h.size(3);
  const int64_t GDH = G * DH, rows = NH * B, state_stride = NH * B * DH;
  const scalar_t* h_p = h.data_ptr<scalar_t>();                 // [B, T, NH, DH], strided:
  const int64_t h_sb = h.stride(0), h_st = h.stride(1);          // batch- or time-major
  const scalar_t* states_p = states.data_ptr<scalar_t>();       // [S, B, NH, DH]
  const scalar_t* gates_p = saved_gates.data_ptr<scalar_t>();   // [T, NH, B, K, DH]
  const scalar_t* sstates_p = saved_states.data_ptr<scalar_t>();  // [T, S-1, NH, B, DH]
  scalar_t* dcarry_p = dcarry.data_ptr<scalar_t>();             // [S, NH, B, DH]
  // d(wx) [B, T, G, NH, DH] and d(rh) [NH, B, T, G*DH], strided: time-major when h is (and no
  // lengths), so each step's rows are adjacent (fused_rnn_backward)
  scalar_t* dwx_p = dwx.data_ptr<scalar_t>();
  scalar_t* drh_p = drh.data_ptr<scalar_t>();
  const int64_t dwx_sb = dwx.stride(0), dwx_st = dwx.stride(1);
  const int64_t drh_sn = drh.stride(0), drh_sb = drh.stride(1), drh_st = drh.stride(2);
  at::Tensor dh_carry = dcarry.select(0, 0);                    // [NH, B, DH]
  at::Tensor dh_head0 = dh_carry.select(0, 0);                  // [B, DH]
  const int64_t grain = pointwise_grain(GDH);
  const std::vector<int64_t> live = live_rows(len, B, T);
  const bool avx512_rows = kHasAvx512Row<Cell, scalar_t> && use_avx512_tile();
  // Wt, made from r on the first step that needs it: panels for step_gemm, dense for at::mm.
  at::Tensor Wt_panels, Wt;
  // A step with one live row streams Wt's rows in place (row_gemv_avx512.h) when they are dense
  // in r, i.e. r's d axis is: the modules' r, a transposed view of weight_hh, whose rows these are.
  // Measured (LSTM B=1 T=256, raw backward, 1 thread, CPU time, paired against the panels on the
  // shared dev box): H=256 (1 MB of weight per head) 0.93-0.94 in two of three runs (1.0 in the
  // noisiest); alternating directions 0.955-1.0 of ascending in four runs (kept: it costs
  // nothing); H=128 (256 KB, in L2 either way) 1.04-1.11, so only weights of 512 KB and more.
  std::vector<int64_t> wt_rows;
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
  if (std::is_same_v<scalar_t, float> && use_avx512_tile() && (DH == 1 || r.stride(2) == 1) &&
      GDH * DH * static_cast<int64_t>(sizeof(float)) >= 512 * 1024) {
    wt_rows.resize(GDH);
    for (int64_t k = 0; k < GDH; ++k) wt_rows[k] = (k / DH) * r.stride(0) + (k % DH) * r.stride(3);
  }
#endif
  // the cell's backward for rows [begin, end) of step t
  const auto rows_step = [&](int64_t t, int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / B, bi = row % B;
        const bool valid = len == nullptr || t < len[bi];
        scalar_t* dwx_row = dwx_p + bi * dwx_sb + t * dwx_st + n * DH;        // + g*NH*DH + e
        scalar_t* drh_row = drh_p + n * drh_sn + bi * drh_sb + t * drh_st;  // + g*DH + e
        if (!valid) {  // the step passed the states through: their gradients pass through too
          for (int g = 0; g < G; ++g) {
            for (int64_t e = 0; e < DH; ++e) {
              dwx_row[g * NH * DH + e] = scalar_t(0);
              if (!drh_is_dwx) drh_row[g * DH + e] = scalar_t(0);
            }
          }
          continue;
        }
        const scalar_t* h_next_row = h_p + bi * h_sb + t * h_st + n * DH;
        if (row + 1 < end) {  // the next row's batch-major data of this step (prefetch_span)
          const int64_t n1 = (row + 1) / B, b1 = (row + 1) % B;
          const scalar_t* h1 = h_p + b1 * h_sb + t * h_st + n1 * DH;
          prefetch_span(h1, DH);
          if (t > 0) prefetch_span(h1 - h_st, DH);
          if (dh_p) prefetch_span(dh_p + b1 * dh_sb + t * dh_st + n1 * DH, DH);
          for (int g = 0; g < G; ++g)
            prefetch_span(dwx_p + b1 * dwx_sb + t * dwx_st + (g * NH + n1) * DH, DH,
                          /*for_write=*/true);
          if (!drh_is_dwx)
            prefetch_span(drh_p + n1 * drh_sn + b1 * drh_sb + t * drh_st, GDH, /*for_write=*/true);
          // and its saved gates and previous non-h states. Paired with and without, module LSTM
          // fwd+bwd, 1 thread CPU time, malloc pinned: I=H=200 B=20 T=35 2 layers 0.979
          // (0.975-0.985), I=H=128 B=16 T=512 0.982 (0.977-0.986); the same for the forward's
          // saved-gate stores gained nothing (0.998, 0.997)
          prefetch_span(gates_p + (t * rows + row + 1) * K * DH, K * DH);
          if (t > 0) {
            for (int s = 1; s < S; ++s)
              prefetch_span(sstates_p + (((t - 1) * (S - 1) + (s - 1)) * rows + row + 1) * DH, DH);
          }
        }
        const scalar_t* dh_row = dh_p ? dh_p + bi * dh_sb + t * dh_st + n * DH : nullptr;
        // States the step started from: the initial ones at t = 0, else those after step t-1.
        const scalar_t* prev_rows[S];
        int64_t prev_stride = 0;  // between consecutive states in prev_rows' source
        if (t == 0) {
          prev_rows[0] = states_p + (bi * NH + n) * DH;
          prev_stride = B * NH * DH;
          for (int s = 1; s < S; ++s) prev_rows[s] = prev_rows[0] + s * prev_stride;
        } else {
          prev_rows[0] = h_p + bi * h_sb + (t - 1) * h_st + n * DH;
          for (int s = 1; s < S; ++s)
            prev_rows[s] = sstates_p + (((t - 1) * (S - 1) + (s - 1)) * rows + row) * DH;
        }
        const scalar_t* gates_row = gates_p + (t * rows + row) * K * DH;
        scalar_t* dcarry_row = dcarry_p + row * DH;
        if constexpr (kHasAvx512Row<Cell, scalar_t>) {
          if (avx512_rows) {
            BackwardRow args{DH, gates_row, {prev_rows[0], S > 1 ? prev_rows[S - 1] : nullptr},
                             h_next_row, dh_row, dcarry_row, state_stride, dwx_row, NH * DH,
                             drh_is_dwx ? nullptr : drh_row};
            avx512_backward_row<Cell>(args);
            continue;
          }
        }
        for (int64_t e = 0; e < DH; e += L::kWidth) {
          const int64_t cnt = std::min<int64_t>(L::kWidth, DH - e);
          V saved[K > 0 ? K : 1], prev[S], dnext[S], dwx_v[G], drh_v[G], dprev[S];
          for (int k = 0; k < K; ++k) saved[k] = L::load(gates_row + k * DH + e, cnt);
          for (int s = 0; s < S; ++s) {
            prev[s] = L::load(prev_rows[s] + e, cnt);
            dnext[s] = L::load(dcarry_row + s * state_stride + e, cnt);
          }
          if (dh_row) dnext[0] = dnext[0] + L::load(dh_row + e, cnt);
          Cell::backward(saved, prev, L::load(h_next_row + e, cnt), dnext, dwx_v, drh_v, dprev);
          for (int g = 0; g < G; ++g) {
            L::store(dwx_v[g], dwx_row + g * NH * DH + e, cnt);
            if (!drh_is_dwx) L::store(drh_v[g], drh_row + g * DH + e, cnt);
          }
          for (int s = 0; s < S; ++s) L::store(dprev[s], dcarry_row + s * state_stride + e, cnt);
        }
      }
  };
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
  if constexpr (std::is_same_v<scalar_t, float>) {
    // One head, no lengths, a weight of at most 768 KB (in a 1 MB L2) and 8 rows per thread: each
    // thread takes its own batch rows through every step, the cell's backward and its rows of
    // d(h_prev) = d(rh_t) W^T, both of which read and write only those rows, so the threads
    // never wait on each other (two OpenMP regions per step before, and the panels split
    // unevenly); each thread streams the whole weight from its own L2. Measured (2 threads,
    // wall clock, paired with the per-step split, module fwd+bwd, malloc pinned, AMD EPYC Zen 5):
    // LSTM I=H=200 B=20 T=35 2 layers 0.987 (0.993 plain malloc), I=H=128 B=16 T=512 0.907;
    // GRU the same shapes 0.954, 0.878. H=256 (a 1 MB weight) keeps the per-step split.
    const int64_t threads = at::get_num_threads();
    const int64_t parts = std::min<int64_t>(threads, B / 8);
    if (NH == 1 && len == nullptr && avx512_rows && use_avx512_tile() && use_step_gemm(B) &&
        parts > 1 && !at::in_parallel_region() && backward_row_split() &&
        GDH * DH * static_cast<int64_t>(sizeof(float)) <= 768 * 1024) {
      std::vector<int64_t> row_offset(GDH), col_offset(DH);
      for (int64_t k = 0; k < GDH; ++k) row_offset[k] = (k / DH) * r.stride(0) + (k % DH) * r.stride(3);
      for (int64_t d = 0; d < DH; ++d) col_offset[d] = d * r.stride(2);
      Wt_panels = pack_panels(r.data_ptr<scalar_t>(), NH, r.stride(1), row_offset, col_offset,
                              r.options());
      const int64_t P = Wt_panels.size(3), panels = Wt_panels.size(1);
      const float* panel0 = Wt_panels.data_ptr<float>();
      at::parallel_for(0, parts, 1, [&](int64_t p_begin, int64_t p_end) {
        for (int64_t part = p_begin; part < p_end; ++part) {
          const int64_t r0 = B * part / parts, r1 = B * (part + 1) / parts;
          for (int64_t t = T - 1; t >= 0; --t) {
            rows_step(t, r0, r1);
            for (int64_t i = 0; i < panels; ++i)
              panel_rows_avx512(r1 - r0, GDH, drh_p + t * drh_st + r0 * drh_sb, drh_sb,
                                panel0 + i * GDH * P, dcarry_p + r0 * DH + i * P, DH,
                                std::min(P, DH - i * P), /*accumulate=*/true);
          }
        }
      });
      return;
    }
  }
#endif
  for (int64_t t = T - 1; t >= 0; --t) {
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) { rows_step(t, begin, end); });
    // d(h_prev) += d(rh_t) @ W^T over the rows that may still run (live_rows); rows past their
    // length have d(rh_t) = 0 and keep their dh, so skipping the finished ones changes nothing.
    const int64_t M = live[t];
    if (M == 0) continue;
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (M == 1 && !wt_rows.empty() && use_step_gemm(M) && row_gemv_mode() > 0) {
        // each step reads the rows in the other order (why: row_gemv_avx512.h); with several
        // threads each takes a range of 16-column vectors of every row (its own part of the
        // weight's bytes), one range per thread and head
        const bool descending = row_gemv_mode() == 2 && (t & 1) != 0;
        const int64_t vecs = (DH + 15) / 16;
        const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), vecs));
        const float* r_p = r.data_ptr<float>();
        at::parallel_for(0, NH * parts, 1, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            const int64_t n = i / parts, part = i % parts;
            const int64_t c0 = vecs * part / parts * 16;
            const int64_t c1 = std::min(DH, vecs * (part + 1) / parts * 16);
            row_gemv_avx512(GDH, c1 - c0, drh_p + n * drh_sn + t * drh_st,
                            r_p + n * r.stride(1) + c0, wt_rows.data(),
                            dcarry_p + n * B * DH + c0, descending);
          }
        });
        continue;
      }
    }
#endif
    if (use_step_gemm(M)) {
      if (!Wt_panels.defined()) {  // row g*DH + e, column d
        std::vector<int64_t> row_offset(GDH), col_offset(DH);
        for (int64_t k = 0; k < GDH; ++k) row_offset[k] = (k / DH) * r.stride(0) + (k % DH) * r.stride(3);
        for (int64_t d = 0; d < DH; ++d) col_offset[d] = d * r.stride(2);
        Wt_panels = pack_panels(r.data_ptr<scalar_t>(), NH, r.stride(1), row_offset, col_offset,
                                r.options());
      }
      step_gemm<scalar_t>(NH, M, DH, GDH, drh_p + t * drh_st, drh_sb, drh_sn, Wt_panels,
                          dcarry_p, DH, B * DH, /*accumulate=*/true);
      continue;
    }
    if (!Wt.defined()) Wt = r.permute({1, 0, 3, 2}).reshape({NH, GDH, DH}).contiguous();
    const at::Tensor drh_t = drh.select(2, t).narrow(1, 0, M);  // [NH, M, G*DH], strided rows
    if (NH == 1) {
      dh_head0.narrow(0, 0, M).addmm_(drh_t.select(0, 0), Wt.select(0, 0));
    } else {
      dh_carry.narrow(1, 0, M).baddbmm_(drh_t, Wt);
    }
  }
}

// d(W) [NH, DH, G*DH] = sum over rows b and steps t of h_prev[n, b, t]^T d(rh)[n, b, t], or its
// transpose [NH, G*DH, DH] when `transposed`. With lengths only each row's first len[b] steps can
// be nonzero, so each row is its own product over those steps: a ragged batch (lengths spread
// 1..T) then costs half the multiply-adds.
at::Tensor recurrent_weight_grad(const at::Tensor& h_prev, const at::Tensor& drh, const int64_t* len,
                                 bool transposed) {
  const int64_t NH = h_prev.size(0), B = h_prev.size(1), T = h_prev.size(2), DH = h_prev.size(3);
  const int64_t GDH = drh.size(3);
  // per head out (+)= left^T @ right over rows; (left, right) = (h_prev, d(rh)), or swapped
  const auto product = [&](at::Tensor& out, const at::Tensor& h_rows, const at::Tensor& d_rows) {
    const at::Tensor& left = transposed ? d_rows : h_rows;
    const at::Tensor& right = transposed ? h_rows : d_rows;
    if (!out.defined()) {  // left^T @ right = (left^T) @ (right^T)^T, oneDNN for float32
      out = NH == 1 ? mm_transposed_b(left.select(0, 0).t(), right.select(0, 0).t()).unsqueeze(0)
                    : at::bmm(left.transpose(1, 2), right);
    } else if (NH == 1) {
      out.select(0, 0).addmm_(left.select(0, 0).t(), right.select(0, 0));
    } else {
      out.baddbmm_(left.transpose(1, 2), right);
    }
  };
  at::Tensor dW;
  if (len == nullptr) {
    product(dW, h_prev.view({NH, B * T, DH}), drh.view({NH, B * T, GDH}));
    return dW;
  }
  dW = transposed ? at::zeros({NH, GDH, DH}, h_prev.options())
                  : at::zeros({NH, DH, GDH}, h_prev.options());
  for (int64_t b = 0; b < B; ++b) {
    const int64_t steps = std::min(len[b], T);
    if (steps <= 0) continue;
    product(dW, h_prev.select(1, b).narrow(1, 0, steps), drh.select(1, b).narrow(1, 0, steps));
  }
  return dW;
}

#if defined(FLASHSEQ_HAVE_AVX512_TILE)
// float32 d(W) [NH, DH, G*DH] and d(b) [NH, G*DH] from d(rh) [NH, B*T, G*DH] as the loop left it
// and hT [NH, DH, B*T], the h each step started from, transposed (weight_grad.h); with lengths
// only each row's valid steps enter.
void weight_grad_avx512(const at::Tensor& hT, const at::Tensor& drh, const int64_t* len,
                        int64_t B, int64_t T, at::Tensor& dW, at::Tensor& db) {
  const int64_t NH = hT.size(0), DH = hT.size(1), BT = hT.size(2), GDH = drh.size(2);
  std::vector<std::pair<int64_t, int64_t>> ranges;  // [begin, end) (batch, step) rows with data
  if (len == nullptr) {
    ranges.emplace_back(0, BT);
  } else {
    for (int64_t b = 0; b < B; ++b)
      ranges.emplace_back(b * T, b * T + std::min(std::max<int64_t>(len[b], 0), T));
  }
  for (int64_t n = 0; n < NH; ++n) {
    blocked_grad_gemm(hT.data_ptr<float>() + n * DH * BT, BT, drh.data_ptr<float>() + n * BT * GDH,
                      GDH, DH, GDH, ranges, dW.data_ptr<float>() + n * DH * GDH,
                      db.data_ptr<float>() + n * GDH);
  }
}
#endif

// x [B, T, NH, DH] as the loop reads it: any batch and step strides (the forward's time-major h
// and the gradient reaching it are read in place), the (NH, DH) axes dense.
at::Tensor dense_steps(const at::Tensor& x) {
  const int64_t DH = x.size(3);
  const bool dense_rows = (x.size(3) <= 1 || x.stride(3) == 1) && (x.size(2) <= 1 || x.stride(2) == DH);
  return dense_rows ? x : x.contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_rnn_backward(
    const c10::optional<at::Tensor>& dh_in, const c10::optional<at::Tensor>& d_last_in,
    const at::Tensor& h_in, const at::Tensor& states_in, const at::Tensor& r,
    const at::Tensor& saved_gates_in, const at::Tensor& saved_states_in,
    const c10::optional<at::Tensor>& lengths, const std::string& cell) {
  TORCH_CHECK(h_in.dim() == 4, "fused_rnn_cpu_backward: h must be [B, T, NH, DH]; got ", h_in.sizes());
  const int64_t B = h_in.size(0), T = h_in.size(1), NH = h_in.size(2), DH = h_in.size(3);
  const auto [G, S, K] = cell_layout(cell);
  const auto dtype = h_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "fused_rnn_cpu_backward: h must be float32 or float64; got ", dtype);
  check_common(r, states_in, G, S, B, NH, DH, dtype, lengths);
  TORCH_CHECK(saved_gates_in.sizes() == at::IntArrayRef({T, NH, B, K, DH}),
              "fused_rnn_cpu_backward: saved_gates must be [T, NH, B, K, DH]; got ",
              saved_gates_in.sizes(), " (was the forward run with save=True?)");
  TORCH_CHECK(saved_states_in.sizes() == at::IntArrayRef({T, S - 1, NH, B, DH}),
              "fused_rnn_cpu_backward: saved_states must be [T, S-1, NH, B, DH]; got ",
              saved_states_in.sizes());
  at::Tensor dh;
  if (dh_in.has_value()) {
    TORCH_CHECK(dh_in->sizes() == h_in.sizes() && dh_in->scalar_type() == dtype,
                "fused_rnn_cpu_backward: dh must match h ", h_in.sizes(), "; got ", dh_in->sizes());
    dh = dense_steps(*dh_in);
  }
  at::Tensor dcarry;  // [S, NH, B, DH]: gradients of the running states
  if (d_last_in.has_value()) {
    TORCH_CHECK(d_last_in->sizes() == states_in.sizes() && d_last_in->scalar_type() == dtype,
                "fused_rnn_cpu_backward: d_last_states must match states ", states_in.sizes(),
                "; got ", d_last_in->sizes());
    dcarry = d_last_in->permute({0, 2, 1, 3}).clone(at::MemoryFormat::Contiguous);
  } else {
    dcarry = at::zeros({S, NH, B, DH}, h_in.options());
  }
  const at::Tensor h = dense_steps(h_in), states = states_in.contiguous();
  const bool len_is_none = !lengths.has_value();
  const at::Tensor saved_gates = saved_gates_in.contiguous();
  const at::Tensor saved_states = saved_states_in.contiguous();
  // A time-major h (the forward's output for a time-major wx) gets d(wx) time-major too, which
  // the projection's backward then reads without a transposing copy, and d(rh) stored
  // [NH, T, B, G*DH]; drh_rows is d(rh) as rows in memory order for the weight gradients, and
  // hT / h_prev below list the rows in that same order. With lengths everything stays
  // batch-major (the weight gradients then run per row over its own steps).
  const bool time_major = len_is_none && B > 1 && T > 1 && h.stride(0) == NH * DH &&
                          h.stride(1) == B * NH * DH;
  at::Tensor dwx = time_major ? empty_big({T, B, G, NH, DH}, h.options()).transpose(0, 1)
                              : empty_big({B, T, G, NH, DH}, h.options());
  bool drh_is_dwx = false;
  dispatch_cell(cell, [&](auto c) { return drh_is_dwx = kDrhIsDwx<decltype(c)> && NH == 1; });
  at::Tensor drh_mem;  // d(rh) in memory order: [NH, B, T, G*DH], or [NH, T, B, G*DH] time-major
  if (drh_is_dwx) {
    drh_mem = time_major ? dwx.transpose(0, 1).view({NH, T, B, G * DH}) : dwx.view({NH, B, T, G * DH});
  } else {
    drh_mem = time_major ? empty_big({NH, T, B, G * DH}, h.options())
                         : empty_big({NH, B, T, G * DH}, h.options());
  }
  at::Tensor drh = time_major ? drh_mem.transpose(1, 2) : drh_mem;  // [NH, B, T, G*DH] view
  const at::Tensor drh_rows = drh_mem.view({NH, B * T, G * DH});
  at::Tensor len_c;
  if (lengths.has_value()) len_c = lengths->contiguous();
  const int64_t* len = lengths.has_value() ? len_c.data_ptr<int64_t>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES(dtype, "fused_rnn_cpu_backward", [&] {
    const scalar_t* dh_p = dh.defined() ? dh.data_ptr<scalar_t>() : nullptr;
    const int64_t dh_sb = dh.defined() ? dh.stride(0) : 0, dh_st = dh.defined() ? dh.stride(1) : 0;
    dispatch_cell(cell, [&](auto c) {
      backward_loop<decltype(c), scalar_t>(dh_p, dh_sb, dh_st, dcarry, h, states, r, saved_gates,
                                           saved_states, len, dwx, drh, drh_is_dwx);
      return 0;
    });
  });

  at::Tensor dr = at::empty_like(r);
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
  // Measured (1 thread, LSTM): ahead of oneDNN's linear while the (batch, step) axis is long
  // against DH (H=128 B=16 T=512, H=256 B=32 T=200, and H=512 B=16 T=128 with k-blocks of half
  // a 2 MB L2: grad_gemm_max_rows); behind it at H=1024, where hT's block spills L2 and the
  // whole d(W) is re-read per k-block. B*T = DH rows (B=1 T=256 H=256) was behind it with the
  // scalar transposes and 256 KB blocks, ahead since: module fwd+bwd, paired, 0.982
  // (0.975-0.990) of the time with oneDNN here.
  if (dtype == at::kFloat && use_avx512_tile() && DH <= grad_gemm_max_rows() && B * T >= DH) {
    // hT [NH, DH, B*T]: the h each step started from, transposed (initial h, then the output h)
    at::Tensor hT = empty_big({NH, DH, B * T}, h.options());
    // One head: hT and d(r) through transpose_blocked (weight_grad.h) instead of ATen's
    // strided copies of permuted views. Paired, module fwd+bwd, 1 thread CPU time, medians of
    // four runs: LSTM I=64 H=256 B=32 T=200 2 layers 0.978-0.991, I=H=128 B=16 T=512
    // 0.980-0.990 of before (I=H=200 B=20 T=35 2 layers 0.985-0.999, within noise).
    const bool one_head = NH == 1;
    const float* h_p = h.data_ptr<float>();
    float* hT_p = hT.data_ptr<float>();
    if (time_major) {
      const at::Tensor hT4 = hT.view({NH, DH, T, B});
      hT4.select(2, 0).copy_(states.select(0, 0).permute({1, 2, 0}));
      if (T > 1 && one_head) {
        // columns B .. T*B-1 of hT [DH, T*B] = h[:, 0 .. T-2]^T: time-major with one head, the
        // rows (t, b) of h lie DH apart, so steps 0 .. T-2 are one [(T-1) B, DH] block (one
        // transpose of whole 16-row blocks where a call per step left a partial block of B % 16
        // rows each time; paired against that, module fwd+bwd: 0.992, 1.004, 0.999 at I=H=200,
        // I=H=128, I=64 H=256, within noise: kept as the simpler call)
        transpose_blocked(h_p, (T - 1) * B, DH, DH, hT_p + B, T * B);
      } else if (T > 1) {
        hT4.narrow(2, 1, T - 1).copy_(h.narrow(1, 0, T - 1).permute({2, 3, 1, 0}));
      }
    } else {
      const at::Tensor hT4 = hT.view({NH, DH, B, T});
      hT4.select(3, 0).copy_(states.select(0, 0).permute({1, 2, 0}));
      if (T > 1 && one_head) {  // columns b*T + 1 .. b*T + T-1 of hT [DH, B*T] = h[b, :T-1]^T
        for (int64_t b = 0; b < B; ++b)
          transpose_blocked(h_p + b * h.stride(0), T - 1, DH, h.stride(1), hT_p + b * T + 1, B * T);
      } else if (T > 1) {
        hT4.narrow(3, 1, T - 1).copy_(h.narrow(1, 0, T - 1).permute({2, 3, 0, 1}));
      }
    }
    at::Tensor dW = at::empty({NH, DH, G * DH}, h.options());
    at::Tensor db_rows = at::empty({NH, G * DH}, h.options());
    weight_grad_avx512(hT, drh_rows, len, B, T, dW, db_rows);
    if (one_head && dr.stride(0) == DH * DH && dr.stride(2) == 1 && dr.stride(3) == DH) {
      // the modules' r (a transposed view of weight_hh): d(r)'s memory is dW [DH, G*DH]^T
      transpose_blocked(dW.data_ptr<float>(), DH, G * DH, G * DH, dr.data_ptr<float>(), DH);
    } else {
      dr.copy_(dW.view({NH, DH, G, DH}).permute({2, 0, 1, 3}));
    }
    at::Tensor db = db_rows.view({NH, G, DH}).permute({1, 0, 2}).contiguous();
    at::Tensor dstates = dcarry.permute({0, 2, 1, 3}).contiguous();
    return {dwx, dr, db, dstates};
  }
#endif
  // d(r) and d(b) over all steps at once: per head h_{t-1}^T [DH, B*T] @ d(rh) [B*T, G*DH].
  // h_prev [NH, B, T, DH], or [NH, T, B, DH] time-major (no lengths then: only the row order
  // matters, and it is drh_mem's)
  at::Tensor h_prev;
  if (time_major) {
    h_prev = at::empty({NH, T, B, DH}, h.options());
    h_prev.select(1, 0).copy_(states.select(0, 0).permute({1, 0, 2}));
    if (T > 1) h_prev.narrow(1, 1, T - 1).copy_(h.narrow(1, 0, T - 1).permute({2, 1, 0, 3}));
  } else {
    h_prev = at::empty({NH, B, T, DH}, h.options());
    h_prev.select(2, 0).copy_(states.select(0, 0).permute({1, 0, 2}));
    if (T > 1) h_prev.narrow(2, 1, T - 1).copy_(h.narrow(1, 0, T - 1).permute({2, 0, 1, 3}));
  }
  // d(r) in r's own strides (empty_like keeps them for a dense r): the modules pass a
  // transposed view of weight_hh as r, and a d(r) laid out like it reaches weight_hh.grad
  // through autograd's view functions without another copy. For such an r (d the fast axis)
  // the GEMM yields d(W)^T, whose memory order is then d(r)'s: the copy below is a straight one
  // instead of a transpose (H=128 under the profiler: 100 us vs 330 us).
  const bool transposed = dr.stride(2) < dr.stride(3);
  const at::Tensor dW = recurrent_weight_grad(h_prev, drh_mem, len, transposed);
  dr.copy_(transposed ? dW.view({NH, G, DH, DH}).permute({1, 0, 3, 2})    // [NH, G*DH, DH]
                      : dW.view({NH, DH, G, DH}).permute({2, 0, 1, 3}));  // [NH, DH, G*DH]

  at::Tensor db = drh_rows.sum(1).view({NH, G, DH}).permute({1, 0, 2}).contiguous();
  at::Tensor dstates = dcarry.permute({0, 2, 1, 3}).contiguous();
  return {dwx, dr, db, dstates};
}

}  // namespace cpu
}  // namespace flashseq
