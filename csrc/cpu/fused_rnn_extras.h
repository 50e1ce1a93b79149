// The compiled CPU loop with the "beyond torch.nn" extras of fused_rnn (variational dropout,
// zoneout, reset, every step's states) and the LayerNorm cells; the masks are drawn in Python
// (flashseq/kernels/fused_rnn/extras.py) and dropconnect is applied to r there, once per call.
//
// Layouts of the arguments: the fused_rnn docstring. Internally, per head n and batch row b:
//   carry     [S, NH, B, DH]      the running states
//   hin_all   [NH, T, B, DH]      h_{t-1} after reset and the variational mask: the step GEMM's
//                                 left operand (all steps kept when a backward will run)
//   hr_all    [NH, T, B, G*DH]    hin @ W, before the bias (and before the norm of the
//                                 LayerNorm cells); the backward recomputes the cell from it
//   all_states [T, S, B, NH, DH]  the states after every step (the backward reads the previous
//                                 states of step t from it)
// Rows past their length (lengths) leave everything untouched, reset included, as the reference
// loop (flashseq/kernels/fused_rnn/reference.py) does.
#pragma once

#include <string>
#include <tuple>

#include <ATen/ATen.h>

namespace flashseq {
namespace cpu {

// Returns (h [B,T,NH,DH], last_states [S,B,NH,DH], all_states [T,S,B,NH,DH], hin_all, hr_all).
// all_states is empty (T = 0) unless `save` or `all_states`; hin_all and hr_all are empty unless
// `save`. variational [B,NH,DH] (wx's dtype), zoneout [T,S,B,NH,DH] bool, reset [B,T] bool are
// optional.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_rnn_extras_forward(
    const at::Tensor& wx, const at::Tensor& r, const at::Tensor& b, const at::Tensor& states,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& variational,
    const c10::optional<at::Tensor>& zoneout, const c10::optional<at::Tensor>& reset,
    const std::string& cell, bool save, bool all_states);

// Returns (d_wx [B,T,G,NH,DH], d_r [G,NH,DH,DH], d_b [G,NH,DH], d_states [S,B,NH,DH]) from the
// upstream gradients dh [B,T,NH,DH], d_last [S,B,NH,DH], d_all [T,S,B,NH,DH] (each optional) and
// what the forward returned with save = true.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_rnn_extras_backward(
    const c10::optional<at::Tensor>& dh, const c10::optional<at::Tensor>& d_last,
    const c10::optional<at::Tensor>& d_all, const at::Tensor& wx, const at::Tensor& r,
    const at::Tensor& b, const at::Tensor& states, const at::Tensor& all_states,
    const at::Tensor& hin_all, const at::Tensor& hr_all, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& variational, const c10::optional<at::Tensor>& zoneout,
    const c10::optional<at::Tensor>& reset, const std::string& cell);

// (num_gates, num_states) of a cell of the extras loop, LayerNorm cells included.
std::tuple<int64_t, int64_t> extras_cell_layout(const std::string& cell);

}  // namespace cpu
}  // namespace flashseq
