// The compiled CPU loop of fused_rnn: declarations shared by the forward, backward and bindings.
//
// Layouts of the arguments are those of flashseq.ops.fused_rnn (its docstring). Internally the
// loop keeps the per-head recurrent operands contiguous so each step's product is one GEMM:
//   W      [NH, DH, G*DH]   W[n][d][g*DH + e] = r[g][n][d][e]
//   carry  [S, NH, B, DH]   the running states (and, in the backward, their gradients)
//   rh     [NH, B, G*DH]    h_prev @ W of the current step
// Saved for the backward (only when it will run):
//   saved_gates   [T, NH, B, kNumSaved, DH]  what the cell header asks to keep per step
//   saved_states  [T, S-1, NH, B, DH]        the non-h states after every step (c, n, m);
//                                            h after every step is the output h itself.
#pragma once

#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>

#include "cells/elman.h"
#include "cells/gru.h"
#include "cells/lstm.h"
#include "cells/slstm.h"

namespace flashseq {
namespace cpu {

// Calls fn(CellType{}) for the cell called `name`; TORCH_CHECK fails for an unknown name.
template <typename Fn>
auto dispatch_cell(const std::string& name, Fn&& fn) {
  if (name == "lstm") return fn(cells::LstmCell{});
  if (name == "gru") return fn(cells::GruCell{});
  if (name == "slstm") return fn(cells::SlstmCell{});
  TORCH_CHECK(name == "elman", "fused_rnn_cpu: cell must be one of lstm, gru, slstm, elman; got ",
              name);
  return fn(cells::ElmanCell{});
}

// Rows (head, batch) handed to one thread at a time in the pointwise loops: enough gate values
// per task that the threading overhead (a few microseconds) stays small against the work.
inline int64_t pointwise_grain(int64_t values_per_row) {
  constexpr int64_t kValuesPerTask = 8192;
  return std::max<int64_t>(1, kValuesPerTask / std::max<int64_t>(1, values_per_row));
}

// Asks the L1 cache for `count` elements from p on (one prefetch per 64-byte line), to be read
// or, with `for_write`, written next. The loops walk batch-major tensors ([B, T, ...]) one step
// at a time, so consecutive rows of a step lie a whole row of steps apart: no hardware
// prefetcher follows that, and every row's first loads missed (perf, LSTM H=128 B=16 T=512:
// a third of the pointwise pass's samples on its first wx load). The loops prefetch the next
// row of the same step while they compute the current one; prefetching a step ahead did not
// help, the step GEMM's weight stream evicted the lines before their use.
// kLocality is __builtin_prefetch's (3: into L1; 2: towards L2), a template argument because
// the builtin takes only a constant.
template <int kLocality, typename scalar_t>
inline void prefetch_lines(const scalar_t* p, int64_t count, bool for_write) {
  constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t i = 0; i < count; i += kLine) {
    if (for_write) {
      __builtin_prefetch(p + i, 1, kLocality);
    } else {
      __builtin_prefetch(p + i, 0, kLocality);
    }
  }
}

template <typename scalar_t>
inline void prefetch_span(const scalar_t* p, int64_t count, bool for_write = false) {
  prefetch_lines<3>(p, count, for_write);
}

// live[t] for every step t: rows 0 .. live[t]-1 of the batch include every row still running at
// step t (1 + the last row with t < its length; B when `len` is null). The step GEMMs stop at
// live[t]: with sorted lengths (a PackedSequence's order) no finished row is multiplied, with
// unsorted ones the bound is still safe, only looser.
std::vector<int64_t> live_rows(const int64_t* len, int64_t B, int64_t T);

// Whether wx [B, T, G, NH, DH] (B, T > 1) is a view of a dense time-major [T, B, G, NH, DH]
// buffer; the forward then returns h [B, T, NH, DH] as a view of a time-major buffer too.
bool is_time_major(const at::Tensor& wx);

// Returns (h [B,T,NH,DH], last_states [S,B,NH,DH], saved_gates, saved_states); the saved tensors
// are empty unless `save`.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_rnn_forward(
    const at::Tensor& wx, const at::Tensor& r, const at::Tensor& b, const at::Tensor& states,
    const c10::optional<at::Tensor>& lengths, const std::string& cell, bool save);

// Switch for benchmarks and tests (default true): fused_rnn_backward may give each thread its
// own batch rows through all steps (one head, no lengths, a small weight; fused_rnn_backward.cpp).
bool& backward_row_split();

// Returns (d_wx, d_r, d_b, d_states). dh [B,T,NH,DH] and d_last [S,B,NH,DH] may be absent
// (no gradient reached them).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_rnn_backward(
    const c10::optional<at::Tensor>& dh, const c10::optional<at::Tensor>& d_last,
    const at::Tensor& h, const at::Tensor& states, const at::Tensor& r,
    const at::Tensor& saved_gates, const at::Tensor& saved_states,
    const c10::optional<at::Tensor>& lengths, const std::string& cell);

// (kNumGates, kNumStates, kNumSaved) of a cell, for the shape functions in Python.
// The no_grad float32 LSTM layer with the input projection folded into each step
// (lstm_projected_forward.cpp): x [T, B, I], w_ih [4H, I], w_hh [4H, H] (torch.nn's layouts),
// bias [4H] (b_ih + b_hh) or none, h0 and c0 [B, H] -> (h [T, B, H], h_T, c_T [B, H]). Needs the
// AVX-512 tile (use_avx512_tile()).
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_projected_forward(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& bias, const at::Tensor& h0, const at::Tensor& c0);
// Whether lstm_projected_forward is measured faster than the projection + loop for these sizes
// (and allowed, and the AVX-512 tile runs); the switch is for tests and benchmarks.
bool lstm_projected_pays(int64_t B, int64_t I, int64_t H);
bool& projected_lstm_allowed();
// For tests: lstm_projected_forward calls so far; reset(true) zeroes the count.
int64_t lstm_projected_calls(bool reset);
// The training forward of the same layer (lstm_projected_forward.cpp): also returns what
// fused_rnn_backward reads for NH = 1, saved_gates [T, 1, B, 4, H] (i, f, g, o activated) and
// saved_states [T, 1, 1, B, H] (c after each step); h [T, B, H] is its time-major h.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_projected_forward_train(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                             const c10::optional<at::Tensor>& bias, const at::Tensor& h0,
                             const at::Tensor& c0);
bool lstm_projected_train_pays(int64_t B, int64_t I, int64_t H);
bool& projected_lstm_train_allowed();
int64_t lstm_projected_train_calls(bool reset);

std::tuple<int64_t, int64_t, int64_t> cell_layout(const std::string& cell);

// Shared argument checks; each message names the tensor.
void check_common(const at::Tensor& r, const at::Tensor& states, int64_t G, int64_t S, int64_t B,
                  int64_t NH, int64_t DH, at::ScalarType dtype,
                  const c10::optional<at::Tensor>& lengths);

}  // namespace cpu
}  // namespace flashseq
