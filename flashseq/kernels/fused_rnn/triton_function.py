"""Launchers, torch.library custom ops and ``FusedRNNTritonFunction`` for the Triton back end.

Layouts: see the ``fused_rnn`` docstring. The launchers pick the path with ``_choose_tiles``
(``triton_tiles``); ``fused_rnn_triton`` is the differentiable entry the back end calls.
Both kernel calls are custom ops with fake (meta) implementations so torch.compile can trace
through ``FusedRNNTritonFunction`` without running Triton.
"""
from __future__ import annotations

from typing import Optional

import torch

from flashseq.cells import get_cell
from flashseq.cells.triton import get_triton_cell

from .triton_bwd import fused_rnn_bwd_kernel, fused_rnn_bwd_kernel_step
from .triton_fwd import fused_rnn_fwd_kernel, fused_rnn_fwd_kernel_step
from .triton_tiles import TritonTiles, _choose_tiles


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs: IEEE products so fp32 meets its 1e-5 bound; 16-bit inputs ignore the setting
    return "ieee" if dtype == torch.float32 else "tf32"


def plan_tiles(cell, wx: torch.Tensor, max_onchip_bytes: Optional[int] = None) -> TritonTiles:
    """The path and tiles the Triton kernels use for ``wx`` [B, T, G, NH, DH]."""
    B, _, _, _, DH = wx.shape
    return _choose_tiles(cell, B, DH, wx.dtype, wx.device, max_onchip_bytes)


def fused_rnn_fwd(wx, r, b, states, lengths, cell, tiles: TritonTiles, save: bool):
    """Persistent forward. wx [B,T,G,NH,DH], r [G,NH,DH,DH], b [G,NH,DH], states [S,B,NH,DH],
    lengths [B] int64 or None. Returns h [B,T,NH,DH], last [S,B,NH,DH] (wx's dtype) and, if
    ``save``, rh [B,T,G,NH,DH] and the state sequence [T+1,S,B,NH,DH] (fp32), else empty."""
    B, T, G, NH, DH = wx.shape
    S = cell.num_states
    h = wx.new_empty(B, T, NH, DH)
    last = wx.new_empty(S, B, NH, DH)
    rh_st = wx.new_empty((B, T, G, NH, DH) if save else (0,), dtype=torch.float32)
    s_st = wx.new_empty((T + 1, S, B, NH, DH) if save else (0,), dtype=torch.float32)
    grid = (_cdiv(B, tiles.BB), NH)
    fused_rnn_fwd_kernel[grid](
        wx, r, b, states, lengths if lengths is not None else wx, h, last, rh_st, s_st,
        B, T, NH, DH,
        CELL=get_triton_cell(cell.name).fwd, G=G, S=S, BB=tiles.BB, DHP=tiles.DHP,
        HAS_LEN=lengths is not None, SAVE=save, PREC=_precision(wx.dtype),
        num_warps=tiles.num_warps)
    return h, last, rh_st, s_st


def fused_rnn_fwd_step(wx, r, b, states, lengths, cell, tiles: TritonTiles, save: bool):
    """Same arguments and results as ``fused_rnn_fwd``, one launch per step (heads too big for
    one program). Without ``save`` the states ping-pong between two slots."""
    B, T, G, NH, DH = wx.shape
    S = cell.num_states
    h = wx.new_empty(B, T, NH, DH)
    rh_st = wx.new_empty((B, T, G, NH, DH) if save else (0,), dtype=torch.float32)
    s_buf = wx.new_empty((T + 1 if save else 2, S, B, NH, DH), dtype=torch.float32)
    s_buf[0] = states
    grid = (_cdiv(B, tiles.BB), NH, _cdiv(DH, tiles.BH))
    fn = get_triton_cell(cell.name).fwd
    for t in range(T):
        slot_in, slot_out = (t, t + 1) if save else (t % 2, (t + 1) % 2)
        fused_rnn_fwd_kernel_step[grid](
            wx, r, b, lengths if lengths is not None else wx, h, rh_st, s_buf,
            t, slot_in, slot_out, B, T, NH, DH,
            CELL=fn, G=G, S=S, BB=tiles.BB, BH=tiles.BH, BK=tiles.BK,
            HAS_LEN=lengths is not None, SAVE=save, PREC=_precision(wx.dtype),
            num_warps=tiles.num_warps)
    last = s_buf[T if save else T % 2].to(wx.dtype, copy=True)  # must not alias s_buf (custom op rule)
    return h, last, rh_st, (s_buf if save else s_buf.new_empty(0))


def fused_rnn_bwd(dh, dlast, wx, r, rh_st, s_st, lengths, cell, tiles: TritonTiles):
    """Persistent backward. dh [B,T,NH,DH], dlast [S,B,NH,DH] (any float dtype), the forward's
    inputs and saved rh_st / s_st. Returns d wx and d rh ([B,T,G,NH,DH] fp32; the same tensor
    unless the cell's d rh differs) and d states0 [S,B,NH,DH] fp32."""
    B, T, G, NH, DH = wx.shape
    S = cell.num_states
    tcell = get_triton_cell(cell.name)
    dwx = wx.new_empty(B, T, G, NH, DH, dtype=torch.float32)
    drh = torch.empty_like(dwx) if tcell.rh_grad_differs else dwx
    ds0 = wx.new_empty(S, B, NH, DH, dtype=torch.float32)
    grid = (_cdiv(B, tiles.BB), NH)
    fused_rnn_bwd_kernel[grid](
        wx, r, rh_st, s_st, dh.contiguous(), dlast.float().contiguous(),
        lengths if lengths is not None else wx, dwx, drh, ds0,
        B, T, NH, DH,
        CELL=tcell.bwd, G=G, S=S, BB=tiles.BB, DHP=tiles.DHP,
        HAS_LEN=lengths is not None, RH_DIFF=tcell.rh_grad_differs, PREC=_precision(wx.dtype),
        num_warps=tiles.num_warps)
    return dwx, drh, ds0


def fused_rnn_bwd_step(dh, dlast, wx, r, rh_st, s_st, lengths, cell, tiles: TritonTiles):
    """Same as ``fused_rnn_bwd``, one launch per step (plus one for d states0)."""
    B, T, G, NH, DH = wx.shape
    S = cell.num_states
    tcell = get_triton_cell(cell.name)
    dwx = wx.new_empty(B, T, G, NH, DH, dtype=torch.float32)
    drh = torch.empty_like(dwx) if tcell.rh_grad_differs else dwx
    ds0 = wx.new_empty(S, B, NH, DH, dtype=torch.float32)
    ds_buf = wx.new_empty(2, S, B, NH, DH, dtype=torch.float32)
    ds_buf[(T - 1) % 2] = dlast
    dh = dh.contiguous()
    grid = (_cdiv(B, tiles.BB), NH, _cdiv(DH, tiles.BH))
    for t in range(T - 1, -2, -1):
        fused_rnn_bwd_kernel_step[grid](
            wx, r, rh_st, s_st, dh, lengths if lengths is not None else wx, dwx, drh, ds_buf, ds0,
            t, t % 2, (t + 1) % 2, B, T, NH, DH,
            CELL=tcell.bwd, G=G, S=S, BB=tiles.BB, BH=tiles.BH, BK=tiles.BK,
            HAS_LEN=lengths is not None, RH_DIFF=tcell.rh_grad_differs,
            PREC=_precision(wx.dtype), FIRST=t == T - 1, FINAL=t == -1,
            num_warps=tiles.num_warps)
    return dwx, drh, ds0


def _tiles_for(cell, wx, max_onchip_bytes: int) -> TritonTiles:
    return plan_tiles(cell, wx, None if max_onchip_bytes < 0 else max_onchip_bytes)


@torch.library.custom_op("flashseq::fused_rnn_triton_fwd", mutates_args=())
def _fwd_op(wx: torch.Tensor, r: torch.Tensor, b: torch.Tensor, states: torch.Tensor,
            lengths: Optional[torch.Tensor], cell: str, save: bool, max_onchip_bytes: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    cell_ = get_cell(cell)
    tiles = _tiles_for(cell_, wx, max_onchip_bytes)
    launch = fused_rnn_fwd if tiles.path == "fused" else fused_rnn_fwd_step
    return launch(wx.contiguous(), r.contiguous(), b.contiguous(), states.contiguous(), lengths,
                  cell_, tiles, save)


@_fwd_op.register_fake
def _fwd_fake(wx, r, b, states, lengths, cell, save, max_onchip_bytes):
    B, T, G, NH, DH = wx.shape
    S = states.shape[0]
    return (wx.new_empty(B, T, NH, DH), wx.new_empty(S, B, NH, DH),
            wx.new_empty((B, T, G, NH, DH) if save else (0,), dtype=torch.float32),
            wx.new_empty((T + 1, S, B, NH, DH) if save else (0,), dtype=torch.float32))


@torch.library.custom_op("flashseq::fused_rnn_triton_bwd", mutates_args=())
def _bwd_op(dh: torch.Tensor, dlast: torch.Tensor, wx: torch.Tensor, r: torch.Tensor,
            rh_st: torch.Tensor, s_st: torch.Tensor, lengths: Optional[torch.Tensor], cell: str,
            max_onchip_bytes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    cell_ = get_cell(cell)
    tiles = _tiles_for(cell_, wx, max_onchip_bytes)
    launch = fused_rnn_bwd if tiles.path == "fused" else fused_rnn_bwd_step
    wx, r = wx.contiguous(), r.contiguous()
    dwx, drh, ds0 = launch(dh, dlast, wx, r, rh_st, s_st, lengths, cell_, tiles)
    # d r and d b: one reduction over all (b, t) of h_{t-1} (rounded to the dtype the forward's
    # tl.dot used) against d rh; rows past their length have d rh = 0.
    T = wx.shape[1]
    h_prev = s_st[:T, 0].to(wx.dtype).float()  # [T, B, NH, DH]
    dr = torch.einsum("tbnk,btgnj->gnkj", h_prev, drh)
    db = drh.sum(dim=(0, 1))
    return dwx.to(wx.dtype), dr.to(r.dtype), db.to(r.dtype), ds0.to(wx.dtype)


@_bwd_op.register_fake
def _bwd_fake(dh, dlast, wx, r, rh_st, s_st, lengths, cell, max_onchip_bytes):
    G, NH, DH = r.shape[:3]
    return (torch.empty_like(wx), torch.empty_like(r), r.new_empty(G, NH, DH),
            dlast.new_empty(dlast.shape, dtype=wx.dtype))


class FusedRNNTritonFunction(torch.autograd.Function):
    """Differentiable Triton ``fused_rnn``; the kernels run inside the custom ops above."""

    @staticmethod
    def forward(ctx, wx, r, b, states, lengths, cell: str, max_onchip_bytes: int):
        save = any(ctx.needs_input_grad[:4])
        h, last, rh_st, s_st = torch.ops.flashseq.fused_rnn_triton_fwd(
            wx, r, b, states, lengths, cell, save, max_onchip_bytes)
        ctx.save_for_backward(wx, r, rh_st, s_st, lengths)
        ctx.cell = cell
        ctx.max_onchip_bytes = max_onchip_bytes
        return h, last

    @staticmethod
    def backward(ctx, dh, dlast):
        wx, r, rh_st, s_st, lengths = ctx.saved_tensors
        B, T, _, NH, DH = wx.shape
        if dh is None:
            dh = wx.new_zeros(B, T, NH, DH)
        if dlast is None:
            dlast = wx.new_zeros(s_st.shape[1:])
        dwx, dr, db, ds0 = torch.ops.flashseq.fused_rnn_triton_bwd(
            dh, dlast, wx, r, rh_st, s_st, lengths, ctx.cell, ctx.max_onchip_bytes)
        # gradients of (wx, r, b, states, lengths, cell, max_onchip_bytes)
        return dwx, dr, db, ds0, None, None, None


def fused_rnn_triton(wx, r, b, states, *, cell, lengths=None, max_onchip_bytes=None):
    """``fused_rnn`` on the Triton kernels (layouts and results: the ``fused_rnn`` docstring).

    ``states`` [S, B, NH, DH] must be given, ``lengths`` is None or int64 [B] on wx's device.
    ``max_onchip_bytes`` overrides the on-chip weight budget that decides between the
    persistent and the per-step path (``plan_tiles`` says which runs). Default: None (plan's).
    """
    cell = get_cell(cell) if isinstance(cell, str) else cell
    budget = -1 if max_onchip_bytes is None else int(max_onchip_bytes)
    return FusedRNNTritonFunction.apply(wx, r, b, states, lengths, cell.name, budget)
