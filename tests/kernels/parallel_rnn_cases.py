"""Inputs and the sequential ground truth shared by the parallel_rnn tests."""
from __future__ import annotations

import torch

from flashseq.cells import CELLS
from flashseq.ops import fused_rnn
from tests.helpers import make_rnn_inputs

NEWTON_CELLS = ("lstm", "gru", "elman")
STRUCTURES = ("diag", "block")


def make_inputs(cell_name, structure, B, T, NH, DH, dtype, seed):
    """(wx, r, b, states) with r [G, NH, DH] for "diag" (scaled so |r| ~ 1) or [G, NH, DH, DH]."""
    wx, r, b, states = make_rnn_inputs(CELLS[cell_name], B, T, NH, DH, dtype=dtype, seed=seed)
    if structure == "diag":
        r = (r[..., 0, :] * DH ** 0.5).contiguous()
    return wx, r, b, states


def dense(r, structure):
    return torch.diag_embed(r) if structure == "diag" else r


def outputs_and_grads(fn, inputs, d_h, d_last):
    """(h, last, grads of (wx, r, b, states)) of ``fn(*inputs)`` for upstream d_h, d_last."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    h, last = fn(*leaves)
    loss = (h * d_h).sum() + (last * d_last).sum()
    grads = torch.autograd.grad(loss, leaves)
    return h.detach(), last.detach(), grads


def sequential(cell_name, structure, lengths=None):
    """fused_rnn (reference back end) on the same weights, r densified for "diag"."""
    def run(wx, r, b, states):
        return fused_rnn(wx, dense(r, structure), b, states, cell=cell_name, lengths=lengths,
                         backend="reference")
    return run
