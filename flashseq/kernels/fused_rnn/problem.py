"""Argument validation for ``fused_rnn`` and the small description backends decide on."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from flashseq.cells import Cell, get_cell

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Problem:
    """What a back end needs to know to accept or refuse a call (no tensors)."""

    cell: Cell
    batch: int
    steps: int
    heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    has_lengths: bool
    needs_grad: bool


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def _check_tensor(name, t, shape_doc, ndim, optional=False):
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_doc}; got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {shape_doc}; got {_describe(t)}")


def _check_like(name, t, wx, expected_shape, shape_doc):
    if tuple(t.shape) != tuple(expected_shape):
        raise ValueError(f"{name} must have shape {shape_doc} = {tuple(expected_shape)}; "
                         f"got {_describe(t)}")
    if t.dtype != wx.dtype:
        raise TypeError(f"{name} must have wx's dtype {wx.dtype}; got {_describe(t)}")
    if t.device != wx.device:
        raise ValueError(f"{name} must be on wx's device {wx.device}; got {_describe(t)}")


def validate(wx, r, b, states, cell, lengths) -> Problem:
    """Check every argument of ``fused_rnn``; raise ``TypeError``/``ValueError`` naming it."""
    cell = get_cell(cell)
    G = cell.num_gates
    S = cell.num_states
    _check_tensor("wx", wx, "[B, T, G, NH, DH]", 5)
    if wx.dtype not in FLOAT_DTYPES:
        raise TypeError(f"wx must be float16, bfloat16, float32 or float64; got {_describe(wx)}")
    B, T, G_wx, NH, DH = wx.shape
    if G_wx != G:
        raise ValueError(f"wx's gate axis (dim 2) must be {G} for cell {cell.name!r} "
                         f"(gates {cell.gate_names}); got {_describe(wx)}")
    if B == 0:
        raise ValueError(f"wx has an empty batch (B=0); B must be >= 1; got {_describe(wx)}")
    if T == 0:
        raise ValueError(f"wx has no time steps (T=0); T must be >= 1; got {_describe(wx)}")
    if NH == 0 or DH == 0:
        raise ValueError(f"wx must have NH >= 1 heads of DH >= 1 units; got {_describe(wx)}")
    _check_tensor("r", r, "[G, NH, DH, DH]", 4)
    _check_like("r", r, wx, (G, NH, DH, DH), "[G, NH, DH, DH]")
    _check_tensor("b", b, "[G, NH, DH]", 3)
    _check_like("b", b, wx, (G, NH, DH), "[G, NH, DH]")
    _check_tensor("states", states, "[S, B, NH, DH]", 4, optional=True)
    if states is not None:
        _check_like("states", states, wx, (S, B, NH, DH), f"[S, B, NH, DH] with S={S} {cell.state_names}")
    if lengths is not None:
        _check_tensor("lengths", lengths, "[B] int64", 1)
        if lengths.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"lengths must be an int64 (or int32) tensor [B]; got {_describe(lengths)}")
        if lengths.shape[0] != B:
            raise ValueError(f"lengths must have shape [B] = ({B},); got {_describe(lengths)}")
        if lengths.device.type != "cpu" and lengths.device != wx.device:
            raise ValueError(f"lengths must be on the CPU or on wx's device {wx.device}; "
                             f"got {_describe(lengths)}")
        # A value check reads the tensor; under torch.compile that would end the graph, so the
        # traced call trusts the values (eager calls, which compile's first run also makes, check).
        if not torch.compiler.is_compiling():
            lo, hi = int(lengths.min()), int(lengths.max())
            if lo < 0 or hi > T:
                raise ValueError(f"lengths must lie in 0..T = 0..{T}; got values in {lo}..{hi}")
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (wx, r, b, states))
    return Problem(cell, B, T, NH, DH, wx.dtype, wx.device, lengths is not None, needs_grad)
