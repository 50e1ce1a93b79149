"""Fused recurrent kernels: one functional entry point over every back end."""
from __future__ import annotations

import torch

import dataclasses

from flashseq.cells import REFERENCE_CELLS

from . import backends
from .backends import available_backends
from .extras import draw_extras, validate_extras
from .problem import check_size, checked_lengths, validate


def fused_rnn(wx, r, b, states=None, *, cell, lengths=None, backend="auto", dropconnect=0.0,
              variational_dropout=0.0, zoneout=(0.0, 0.0), generator=None, reset=None,
              return_all_states=False):
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
            Also "layernorm_lstm" (as "lstm") and "layernorm_gru" (as "gru"): the input and
            the recurrent gate pre-activations are layer-normalised per head before ``b`` is
            added, and c too before its tanh for the LSTM (placement and reference in
            flashseq/cells/layernorm_lstm.py); served by "reference", "cpu" and "triton" (the
            persistent kernel; heads the plan splits over programs fall back).
        lengths: [B] int64 (CPU or wx's device) with values in 0..T, any order, or None.
            Steps at or past a row's length leave its states unchanged and output zeros.
            Default: None, every row runs all T steps.
        backend: "auto", "reference", "cpu", "triton" or "cuda". A named back end that cannot
            run raises ``NotImplementedError``; "auto" takes the fastest that can, warning once
            when it skips a faster one. Default: "auto".

    The keyword arguments below go beyond torch.nn; all default off, and a call using none of
    them is the plain call on every back end. The "reference", "cpu" and "triton" back ends
    serve them, inside their time loops (a configuration one cannot serve: "auto" falls back
    with one warning naming the argument, the named back end raises ``NotImplementedError``). The masks are applied whenever a probability is > 0
    (there is no training flag here: pass 0 in evaluation). They are drawn up front from
    ``generator`` in a fixed order and shape, documented in
    flashseq/kernels/fused_rnn/extras.py, so the same generator state gives the same masks.

        dropconnect: float in [0, 1). One Bernoulli mask on ``r`` [G, NH, DH, DH], fixed over
            the sequence; kept weights scaled by 1/(1-p). Default: 0.0.
        variational_dropout: float in [0, 1). One mask [B, NH, DH] per row on h_{t-1} where it
            enters the recurrence (``h_{t-1} @ r``), the same at every step; kept units scaled
            by 1/(1-p); the states and the output h are not masked. Default: 0.0.
        zoneout: pair (p_h, p_c) of floats in [0, 1]. At each step and unit, h keeps its
            previous value with probability p_h, the other states (LSTM's c; sLSTM's c, n, m
            together) with probability p_c (0 for cells with h only); not scaled.
            Default: (0.0, 0.0).
        generator: torch.Generator on wx's device, or None (the default generator).
        reset: [B, T] bool (CPU or wx's device) or None. Where True the states of that row
            return to their initial values (``states``) before step t. Default: None.
        return_all_states: bool. When True the call returns a third tensor, ``all_states``.
            Default: False.

    Order within a step: reset, then the recurrence (variational mask on h_{t-1},
    dropconnect mask on r), the cell, zoneout against the (reset) previous states, lengths.

    Returns:
        h: [B, T, NH, DH], wx's dtype. The hidden output of every step.
        last_states: [S, B, NH, DH], wx's dtype. The states after each row's last valid step.
        all_states (only with ``return_all_states=True``): [T, S, B, NH, DH], wx's dtype. The
            states after each step t (past a row's length: its last states), differentiable.

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
    p_dc, p_var, p_zone, names = validate_extras(
        wx, problem.cell, dropconnect=dropconnect, variational_dropout=variational_dropout,
        zoneout=zoneout, generator=generator, reset=reset, return_all_states=return_all_states)
    if problem.cell.name in REFERENCE_CELLS:
        names = (f"cell={problem.cell.name!r}", *names)
    if names == ("dropconnect",):
        # One mask on r for the whole sequence is the plain recurrence with r * mask: every
        # back end's plain (fastest) path serves it, and autograd gives d(r) the mask.
        extras = draw_extras(wx, r, problem.cell, p_dc, 0.0, (0.0, 0.0), generator, None, False)
        return fused_rnn(wx, r * extras.dropconnect, b, states, cell=cell, lengths=lengths,
                         backend=backend)
    if names:
        problem = dataclasses.replace(problem, extras=names)
    module = backends.choose(backend, problem)
    check_size(module, problem)
    if states is None:
        states = wx.new_zeros(problem.cell.num_states, problem.batch, problem.heads, problem.head_dim)
    if lengths is not None:
        lengths = lengths.to(device=wx.device, dtype=torch.int64)
        if torch.compiler.is_compiling():
            # validate could not read the values while tracing: the graph checks them
            lengths = checked_lengths(lengths, problem.steps)
    if not problem.extras:
        return module.fused_rnn(wx, r, b, states, cell=problem.cell, lengths=lengths)
    extras = draw_extras(wx, r, problem.cell, p_dc, p_var, p_zone, generator, reset,
                         return_all_states)
    return module.fused_rnn(wx, r, b, states, cell=problem.cell, lengths=lengths, extras=extras)


__all__ = ["fused_rnn", "available_backends"]
