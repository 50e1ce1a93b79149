"""Fused recurrent kernels: one functional entry point over every back end."""
from __future__ import annotations

import torch

from . import backends
from .backends import available_backends
from .problem import check_size, checked_lengths, validate


def fused_rnn(wx, r, b, states=None, *, cell, lengths=None, backend="auto"):
    """Run a recurrent cell over a whole sequence: ``h_t, s_t = cell(wx_t, h_{t-1} @ r + b, s_{t-1})``.

    This docstring is the one place the layouts are defined; every other function points here.

    Args:
        wx: [B, T, G, NH, DH] float16/bfloat16/float32/float64. Input projections of every
            step, input bias already added. G is the cell's gate count, NH the number of
            independent heads, DH the head size.
        r: [G, NH, DH, DH], wx's dtype and device. Recurrent weights: gate g of head n receives
            ``h_prev[:, n] @ r[g, n]`` (block-diagonal recurrence over heads).
        b: [G, NH, DH], wx's dtype and device. Recurrent bias, added to ``h_prev @ r``.
        states: [S, B, NH, DH] or None. Initial states in the cell's state order (h first).
            Default: None, all zeros (sLSTM's stabiliser m too), formulas applied literally.
        cell: "lstm" (G=4 i,f,g,o; S=2 h,c), "gru" (G=3 r,z,n; S=1 h),
            "slstm" (G=4 i,f,z,o; S=4 h,c,n,m) or "elman" (G=1; S=1 h). See flashseq.cells.
        lengths: [B] int64 (CPU or wx's device) with values in 0..T, any order, or None.
            Steps at or past a row's length leave its states unchanged and output zeros.
            Default: None, every row runs all T steps.
        backend: "auto", "reference", "cpu", "triton" or "cuda". A named back end that cannot
            run raises ``NotImplementedError``; "auto" takes the fastest that can, warning once
            when it skips a faster one. Default: "auto".

    Returns:
        h: [B, T, NH, DH], wx's dtype. The hidden output of every step.
        last_states: [S, B, NH, DH], wx's dtype. The states after each row's last valid step.

    Differentiable with respect to wx, r, b and states.

    Any strides are accepted for every tensor (expanded ones included). Values of ``wx`` at
    steps past a row's length are never used, so NaN or inf there changes no output and no
    gradient.

    Raises:
        TypeError / ValueError: an argument of the wrong type, shape, dtype or device, or
            lengths outside 0..T (checked under ``torch.compile`` too); ValueError also when the
            outputs (and, when a gradient is needed, the tensors kept for the backward) cannot
            fit in the device's memory, before any work starts.
        NotImplementedError: a named back end cannot run this call (e.g. bfloat16 on
            ``"triton"`` under the Triton interpreter, which computes it wrongly).

    Examples:
        >>> import torch, flashseq
        >>> wx = torch.randn(2, 5, 4, 1, 8)            # B=2, T=5, LSTM gates, one head of 8
        >>> r, b = torch.randn(4, 1, 8, 8) * 0.3, torch.zeros(4, 1, 8)
        >>> h, (h_T, c_T) = flashseq.ops.fused_rnn(wx, r, b, cell="lstm")
        >>> h.shape, h_T.shape
        (torch.Size([2, 5, 1, 8]), torch.Size([2, 1, 8]))
    """
    problem = validate(wx, r, b, states, cell, lengths)
    module = backends.choose(backend, problem)
    check_size(module, problem)
    if states is None:
        states = wx.new_zeros(problem.cell.num_states, problem.batch, problem.heads, problem.head_dim)
    if lengths is not None:
        lengths = lengths.to(device=wx.device, dtype=torch.int64)
        if torch.compiler.is_compiling():
            # validate could not read the values while tracing: the graph checks them
            lengths = checked_lengths(lengths, problem.steps)
    return module.fused_rnn(wx, r, b, states, cell=problem.cell, lengths=lengths)


__all__ = ["fused_rnn", "available_backends"]
