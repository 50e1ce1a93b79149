"""Recurrences no fused kernel serves, run as a PyTorch loop over time steps.

Two torch configurations have no ``fused_rnn`` cell: ``LSTM(proj_size > 0)`` (the projected
``h = W_hr (o * tanh c)`` is what feeds back, so the recurrent matrix is [4H, P], not square)
and ``RNN(nonlinearity="relu")``. They run here, one small batched step per time step, correct
for every argument combination but not fused. The modules warn once per instance when they come
here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flashseq.cells import get_cell


def _masked_loop(wx, states, step, lengths):
    """Run ``states = step(wx[:, t], states)`` for t = 0..T-1; rows past their length keep their
    states and output zeros (fused_rnn's semantics). Returns ([B, T, *] outputs, final states)."""
    outs = []
    for t in range(wx.shape[1]):
        new = step(wx[:, t], states)
        if lengths is not None:
            valid = (lengths > t).unsqueeze(1)  # [B, 1]
            new = tuple(torch.where(valid, s_new, s_old) for s_new, s_old in zip(new, states))
            outs.append(torch.where(valid, new[0], torch.zeros_like(new[0])))
        else:
            outs.append(new[0])
        states = new
    return torch.stack(outs, dim=1), states


def projected_lstm(wx, w_hh, b_hh, w_hr, h0, c0, lengths=None):
    """torch.nn.LSTM's cell with projections, over a whole sequence.

    Args:
        wx: [B, T, 4H] input projections with bias_ih added (gates i, f, g, o).
        w_hh: [4H, P]; b_hh: [4H] or None; w_hr: [P, H].
        h0: [B, P]; c0: [B, H].
        lengths: [B] int64 on wx's device or None (every row runs T steps).

    Returns:
        out [B, T, P] (zeros past each row's length), (h [B, P], c [B, H]).
    """
    lstm = get_cell("lstm")
    B, H = c0.shape

    def step(wx_t, states):
        h_prev, c_prev = states
        rh = F.linear(h_prev, w_hh, b_hh).view(B, 4, 1, H)
        # the cell's h is o * tanh(c), the unprojected output; it ignores its h input
        h_full, c = lstm.step(wx_t.view(B, 4, 1, H), rh, (None, c_prev.view(B, 1, H)))
        return F.linear(h_full[:, 0], w_hr), c[:, 0]

    out, (h, c) = _masked_loop(wx, (h0, c0), step, lengths)
    return out, (h, c)


def relu_rnn(wx, w_hh, b_hh, h0, lengths=None):
    """torch.nn.RNN(nonlinearity="relu")'s cell over a whole sequence.

    Args:
        wx: [B, T, H] input projections with bias_ih added; w_hh: [H, H]; b_hh: [H] or None;
        h0: [B, H]; lengths: [B] int64 on wx's device or None.

    Returns:
        out [B, T, H] (zeros past each row's length), h [B, H].
    """
    def step(wx_t, states):
        return (torch.relu(wx_t + F.linear(states[0], w_hh, b_hh)),)

    out, (h,) = _masked_loop(wx, (h0,), step, lengths)
    return out, h
