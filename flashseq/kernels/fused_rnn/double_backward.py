"""Second derivatives for the compiled back ends' autograd Functions.

The hand-written backward loops (C++, Triton) compute first derivatives only. When autograd runs
a backward with ``create_graph=True`` (``torch.autograd.grad(..., create_graph=True)``,
``gradgradcheck``, gradient penalties), grad mode is on inside ``Function.backward``; the
Functions then call ``reference_backward`` instead of their kernel: it recomputes the forward
with the pure-PyTorch reference loop (``reference.py``) from the very tensors the forward got,
and returns autograd's gradients of that recomputation with ``create_graph=True``. Those
gradients are differentiable again, with respect to the inputs and to the upstream gradients.

This costs one reference forward and backward (a Python loop over time steps), and it needs the
Functions to keep ``wx``, ``b`` and ``states`` for the backward (references to the inputs, not
copies). A plain ``backward()`` is unaffected: grad mode is off there and the kernel runs.
"""
from __future__ import annotations

import torch

from flashseq.cells import get_cell

from .reference import fused_rnn_reference


def reference_backward(cell: str, inputs, needs_input_grad, upstream, lengths):
    """Differentiable gradients of ``fused_rnn`` through the reference loop.

    Args:
        cell: the cell's name ("lstm", "gru", "slstm", "elman").
        inputs: (wx [B, T, G, NH, DH], r [G, NH, DH, DH], b [G, NH, DH], states [S, B, NH, DH]),
            the tensors the forward received (from ``ctx.saved_tensors``), so the graph built
            here leads back to them. Layouts: the ``fused_rnn`` docstring.
        needs_input_grad: four bools, ``ctx.needs_input_grad[:4]``.
        upstream: (dh [B, T, NH, DH], d_last [S, B, NH, DH]); None stands for zeros.
        lengths: [B] int64 on wx's device, or None.

    Returns:
        (d_wx, d_r, d_b, d_states), each None where no gradient is needed (or the input does
        not reach the outputs), else a tensor that carries a graph (``create_graph=True``).
    """
    wanted = [t for t, need in zip(inputs, needs_input_grad) if need]
    result = [None] * len(inputs)
    pairs = [(index, grad) for index, grad in enumerate(upstream) if grad is not None]
    if not wanted or not pairs:
        return tuple(result)
    with torch.enable_grad():
        wx, r, b, states = inputs
        outputs = fused_rnn_reference(wx, r, b, states, cell=get_cell(cell), lengths=lengths)
        grads = torch.autograd.grad([outputs[i] for i, _ in pairs], wanted,
                                    [grad for _, grad in pairs], create_graph=True,
                                    allow_unused=True)
    grads = iter(grads)
    for i, need in enumerate(needs_input_grad):
        if need:
            result[i] = next(grads)
    return tuple(result)
