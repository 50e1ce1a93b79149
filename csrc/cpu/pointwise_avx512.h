// The AVX-512 float32 forward pointwise pass of the LSTM and GRU cells (pointwise_avx512.cpp),
// used by fused_rnn_forward.cpp when use_avx512_tile() holds. Plain declarations only.
#pragma once

#include <cstdint>

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

#if defined(FLASHSEQ_HAVE_AVX512_TILE)
void lstm_forward_row_avx512(const PointwiseRow& row);
void gru_forward_row_avx512(const PointwiseRow& row);
#endif

}  // namespace cpu
}  // namespace flashseq
