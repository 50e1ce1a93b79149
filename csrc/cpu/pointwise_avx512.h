// The AVX-512 float32 pointwise passes (forward and backward) of the LSTM and GRU cells
// (pointwise_avx512.cpp), used by the loops when use_avx512_tile() holds. Plain declarations and
// dispatch templates only (no cell header: that file compiles them for AVX-512).
#pragma once

#include <array>
#include <cstdint>
#include <type_traits>

#include "step_gemm_avx512.h"

namespace flashseq {
namespace cpu {

// One (head, batch) row of one step, as forward_loop addresses it (layouts: fused_rnn_cpu.h).
struct PointwiseRow {
  int64_t DH;                  // units of the row
  const float* wx;             // gate g at wx + g * wx_gate_stride
  int64_t wx_gate_stride;      // NH * DH
  const float* rh;             // h_prev @ W of the row, gate g at rh + g * DH
  const float* bias;           // recurrent bias of the row's head, gate g at bias + g * DH
  float* carry;                // running states, state s at carry + s * state_stride (in/out)
  int64_t state_stride;
  float* h_out;                // the step's output h
  float* gates;                // saved values, k at gates + k * DH; null: nothing saved
  float* saved_states;         // non-h state s >= 1 at saved_states + (s-1) * saved_state_stride
  int64_t saved_state_stride;
};

// One (head, batch) row of one backward step, as backward_loop addresses it.
struct BackwardRow {
  int64_t DH;
  const float* saved;          // what the forward saved, k at saved + k * DH
  const float* prev[2];        // the states the step started from (h, then c for the LSTM)
  const float* h_next;         // h after the step
  const float* dh;             // the step's output gradient, or null
  float* dcarry;               // gradients of the running states, s at dcarry + s * state_stride
  int64_t state_stride;
  float* dwx;                  // gate g at dwx + g * dwx_gate_stride
  int64_t dwx_gate_stride;
  float* drh;                  // gate g at drh + g * DH; null: d(rh) is d(wx), stored once
};

// One LSTM step of one head and one block of up to 16 units u0.., for all M live rows, with the
// step's GEMM and the cell update fused (no [B, 4 DH] gate buffer written and read back): used by
// the forward when nothing is saved (no_grad), float32, no lengths. The gate-interleaved panel
// (pack_lstm_gate_panels) holds columns [i, f, g, o] x 16 units, so a register tile of a row is
// exactly the four gates of its 16 units.
// Switch for tests and benchmarks (default true; fused_rnn_forward.cpp).
bool& fused_lstm_allowed();
// Switch for tests and benchmarks (default true; fused_rnn_forward.cpp): the no_grad float32 LSTM
// forward (fused tile and separate pointwise pass) updates its cells through the forced-inline
// lstm_update16 of pointwise_avx512.cpp; false keeps the shared cell header there.
bool& lstm_fast_update_allowed();
// Switch for tests and benchmarks (default true; fused_rnn_forward.cpp): the float32 LSTM forward
// that saves its gates for the backward, and the backward's pointwise pass, run the forced-inline
// lstm_train_chunk / lstm_backward_chunk of lstm_train_avx512.cpp; false keeps the shared cell
// header in both.
bool& lstm_fast_train_allowed();
// For tests: no_grad float32 LSTM forward calls so far that ran the fused tile ([0]) and that
// updated their cells through lstm_update16 ([1], either loop); reset(true) zeroes them.
std::array<int64_t, 2> lstm_nograd_path_counts(bool reset);
constexpr int64_t kLstmGatePanelUnits = 16;
constexpr int64_t kLstmGatePanelCols = 4 * kLstmGatePanelUnits;

struct LstmFusedBlock {
  int64_t M;                // live rows (batch rows of the step)
  int64_t K;                // DH: the length of h_prev
  int64_t units;            // valid units of the block (<= 16)
  const float* A;           // h_prev of row 0 of the head; row m at A + m * lda
  int64_t lda;
  const float* panel;       // [K, 64] gate-interleaved, zero past `units`
  const float* wx;          // row 0, gate 0, unit u0 of the step; gate g + wx_gate, row m + wx_row
  int64_t wx_gate, wx_row;
  int64_t wx_next;          // offset of the next step's wx (prefetched into L2), 0: last step
  const float* bias;        // gate g at bias + g * bias_gate
  int64_t bias_gate;
  float* c;                 // the running c of row m at c + m * c_row (in/out)
  int64_t c_row;
  float* h;                 // the step's output h of row m at h + m * h_row
  int64_t h_row;
  // lstm_fused_block_x_avx512 only: the step's input x of row m at X + m * ldx, KX values, whose
  // panel rows come first (panel [KX + K, 64]); wx may then be null (x is projected here)
  const float* X = nullptr;
  int64_t ldx = 0;
  int64_t KX = 0;
  // lstm_fused_block_x_avx512 with saving (the training forward): when gates is set, the
  // activations i, f, g, o of row m go to gates + m * gates_row + g * gates_gate and the new c to
  // saved_c + m * c_row as well (fused_rnn_backward's saved_gates and saved_states)
  float* gates = nullptr;
  int64_t gates_row = 0, gates_gate = 0;
  float* saved_c = nullptr;
};

#if defined(FLASHSEQ_HAVE_AVX512_TILE)
void lstm_fused_block_avx512(const LstmFusedBlock& block);
void lstm_fused_block_x_avx512(const LstmFusedBlock& block);
void lstm_forward_row_avx512(const PointwiseRow& row);
void gru_forward_row_avx512(const PointwiseRow& row);
void lstm_backward_row_avx512(const BackwardRow& row);
// The training path's forced-inline LSTM rows (lstm_train_avx512.cpp): the forward that saves
// gates (row.gates and row.saved_states set) and the backward's pointwise pass.
void lstm_train_row_avx512(const PointwiseRow& row);
void lstm_backward_row_fast_avx512(const BackwardRow& row);
void gru_backward_row_avx512(const BackwardRow& row);
#endif

}  // namespace cpu

namespace cells {
struct LstmCell;
struct GruCell;
}  // namespace cells

namespace cpu {

// Cells and dtypes with AVX-512 pointwise passes.
template <typename Cell, typename scalar_t>
constexpr bool kHasAvx512Row =
    std::is_same_v<scalar_t, float> &&
    (std::is_same_v<Cell, cells::LstmCell> || std::is_same_v<Cell, cells::GruCell>);

template <typename Cell>
inline void avx512_forward_row(const PointwiseRow& row) {
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
  if constexpr (std::is_same_v<Cell, cells::LstmCell>) {
    lstm_forward_row_avx512(row);
  } else {
    gru_forward_row_avx512(row);
  }
#else
  (void)row;
#endif
}

template <typename Cell>
inline void avx512_backward_row(const BackwardRow& row) {
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
  if constexpr (std::is_same_v<Cell, cells::LstmCell>) {
    lstm_backward_row_avx512(row);
  } else {
    gru_backward_row_avx512(row);
  }
#else
  (void)row;
#endif
}

}  // namespace cpu
}  // namespace flashseq
