"""The float32 LSTM layer's training forward on CPU with the input projection folded in.

Why: the training forward of the modules' fast path (fast_path.py) otherwise projects all T steps
first (oneDNN, [T, B, 4H] written) and the compiled loop reads that projection back step by step;
``lstm_projected_forward_train`` (csrc/cpu/lstm_projected_forward.cpp) sums x_t @ W_ih^T and
h_{t-1} @ W_hh^T in one register tile per block of 16 units and step, and its cell update saves
the gates and c in the layout the compiled backward (``fused_rnn_backward``) reads, so the
backward is the existing one: the recurrence's backward gives d(wx), d(r), d(b) and d(states),
and the projection's gradients follow as oneDNN GEMMs (cpu_linear.py's helpers, as its
``_OneDnnLinear`` computes them).

``ProjectedLstmFunction`` is eager only (the fast path never runs under tracing or compiling).
Under ``create_graph=True`` its backward recomputes the projection with ``F.linear`` and the
recurrence's gradients through ``double_backward.reference_backward``, so they stay
differentiable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flashseq import _jit

from . import cpu_config, cpu_linear
from .double_backward import reference_backward


def _gemm(a, b_t):
    """a [M, K] @ b_t.T through oneDNN when torch has it (cpu_linear._mm), else torch.mm."""
    if cpu_linear._LINEAR_POINTWISE is None:
        return a @ b_t.t()
    return cpu_linear._mm(a, b_t)


def layer_config(x, H):
    """The tuned knobs of the compiled loop for this layer (cpu_config.for_call), from x [T, B, I]:
    a zero-stride stand-in of wx [B, T, 4, 1, H] gives the shape, dtype and device."""
    T, B = x.shape[:2]
    wx = torch.empty_strided((B, T, 4, 1, H), (0, 0, 0, 0, 0), dtype=x.dtype, device=x.device)
    return cpu_config.for_call("lstm", wx)


class ProjectedLstmFunction(torch.autograd.Function):
    """One LSTM layer and direction: (x [T, B, I] contiguous, w_ih [4H, I], w_hh [4H, H],
    b_ih and b_hh [4H] or both None, h0 and c0 [B, H]) -> (h [T, B, H], h_T, c_T [B, H]);
    torch.nn's weight layouts and gate order (i, f, g, o)."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh, h0, c0):
        bias = b_ih + b_hh if b_ih is not None else None
        config = layer_config(x, w_hh.shape[1])
        with cpu_config.applied(config):
            h, h_last, c_last, gates, saved_c = _jit.extension().lstm_projected_forward_train(
                x, w_ih, w_hh, bias, h0, c0)
        ctx.cpu_config = config
        ctx.save_for_backward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, h, gates, saved_c)
        ctx.set_materialize_grads(False)  # a missing upstream gradient stays None: no zeros
        return h, h_last, c_last

    @staticmethod
    def backward(ctx, dh, dh_last, dc_last):
        x, w_ih, w_hh, b_ih, b_hh, h0, c0, h, gates, saved_c = ctx.saved_tensors
        need_x, need_wih, need_whh, need_bih, need_bhh, need_h0, need_c0 = ctx.needs_input_grad
        T, B, I = x.shape
        H = w_hh.shape[1]
        # the recurrence in fused_rnn's layouts (NH = 1): r [4, 1, H, H] = W_g^T as a view,
        # h, dh [B, T, 1, H] as views of the time-major [T, B, H], states [2, B, 1, H]
        r = w_hh.view(4, H, H).transpose(1, 2).unsqueeze(1)
        states = torch.stack((h0, c0)).unsqueeze(2)
        dh4 = None if dh is None else dh.contiguous().unsqueeze(2).transpose(0, 1)
        d_last = None
        if dh_last is not None or dc_last is not None:
            zero = h0.new_zeros(B, H)
            d_last = torch.stack((zero if dh_last is None else dh_last,
                                  zero if dc_last is None else dc_last)).unsqueeze(2)
        need_wx = need_x or need_wih or need_bih
        if torch.is_grad_enabled():  # create_graph=True: differentiable formulas throughout
            wx = F.linear(x, w_ih, b_ih).view(T, B, 4, 1, H).transpose(0, 1)
            b = b_hh.view(4, 1, H) if b_hh is not None else x.new_zeros(4, 1, H)
            d_wx, d_r, d_b, d_states = reference_backward(
                "lstm", (wx, r, b, states), (need_wx, need_whh, need_bhh, need_h0 or need_c0),
                (dh4, d_last), None)
        else:
            with cpu_config.applied(ctx.cpu_config):
                d_wx, d_r, d_b, d_states = _jit.extension().fused_rnn_backward(
                    dh4, d_last, h.unsqueeze(2).transpose(0, 1), states, r, gates, saved_c,
                    None, "lstm")
        dx = dw_ih = db_ih = dw_hh = db_hh = dh0 = dc0 = None
        if d_wx is not None and need_wx:
            dy = d_wx.transpose(0, 1).reshape(T * B, 4 * H)  # a view when d_wx is time-major
            x2 = x.reshape(T * B, I)
            if torch.is_grad_enabled():
                dx = (dy @ w_ih).view(T, B, I) if need_x else None
                dw_ih = dy.t() @ x2 if need_wih else None
                db_ih = dy.sum(0) if need_bih else None
            else:
                dx = _gemm(dy, w_ih.t()).view(T, B, I) if need_x else None
                blocked = (cpu_linear._blocked_weight_grad()
                           if need_wih and cpu_linear._blocked_pays(T * B, I) else None)
                if blocked is not None:  # dW_ih and the column sums of dy in one pass over dy
                    dw_ih, db_ih = blocked(x2, dy)
                    db_ih = db_ih if need_bih else None
                elif need_wih:
                    dw_ih = _gemm(dy.t(), x2.t())
                if need_bih and db_ih is None:
                    # d(wx) sums to d(b) over the rows (the pre-activations add wx and b); a
                    # copy, so the two biases' gradients never share memory
                    db_ih = d_b.reshape(4 * H).clone() if d_b is not None else dy.sum(0)
        if d_r is not None and need_whh:
            dw_hh = d_r.squeeze(1).transpose(1, 2).reshape(4 * H, H)
        if d_b is not None and need_bhh:
            db_hh = d_b.reshape(4 * H)
        if d_states is not None:
            dh0 = d_states[0, :, 0] if need_h0 else None
            dc0 = d_states[1, :, 0] if need_c0 else None
        return dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0


def projected_lstm(x, w_ih, w_hh, b_ih, b_hh, h0, c0):
    """``ProjectedLstmFunction`` (arguments and results in its docstring)."""
    return ProjectedLstmFunction.apply(x, w_ih, w_hh, b_ih, b_hh, h0, c0)
