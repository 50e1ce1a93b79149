"""Launchers, torch.library custom ops and ``FusedRNNTritonFunction`` for the Triton back end.

Layouts: see the ``fused_rnn`` docstring. ``plan_tiles`` asks ``plan.plan_fused_rnn`` for the
path ("fused": ``triton_fwd``/``triton_bwd``; "split"/"stepwise": ``triton_split``/
``triton_split_bwd``) and tiles; ``fused_rnn_triton`` is the differentiable entry point.
Both kernel calls are custom ops with fake (meta) implementations so torch.compile can trace
through ``FusedRNNTritonFunction`` without running Triton.
"""
from __future__ import annotations

import functools
import os
import warnings
from typing import Optional

import torch

from flashseq.cells import get_cell
from flashseq.cells.triton import get_triton_cell
from flashseq.hardware import GPUSpec, detect

from .double_backward import reference_backward
from .plan import FusedRNNPlan, plan_fused_rnn
from .triton_tuned import tuned_plan

from .triton_bwd import fused_rnn_bwd_kernel
from .triton_fwd import fused_rnn_fwd_kernel
from .triton_split import fused_rnn_fwd_kernel_split
from .triton_split_bwd import fused_rnn_bwd_kernel_split

_warned: set = set()


def _warn_once(message: str):
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs: IEEE products so fp32 meets its 1e-5 bound; 16-bit inputs ignore the setting
    return "ieee" if dtype == torch.float32 else "tf32"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def gpu_spec(device: torch.device) -> GPUSpec:
    """The GPU to plan for: the device's own spec, or the H100 entry on CPU (the interpreter
    then runs the path and tiles an H100 would; a documented stand-in, not a measurement)."""
    spec = detect(device) if device.type == "cuda" else None
    return spec or GPUSpec.from_name("h100")


@functools.lru_cache(maxsize=256)
def _cached_plan(cell_name, batch, heads, head_dim, dtype, gpu, max_onchip_bytes):
    return plan_fused_rnn(cell_name, batch, heads, head_dim, dtype, gpu, "triton", max_onchip_bytes)


def plan_tiles(cell, wx: torch.Tensor, max_onchip_bytes: Optional[int] = None) -> FusedRNNPlan:
    """The plan (path, tiles, warps, reason) the Triton kernels run for ``wx`` [B, T, G, NH, DH].
    ``max_onchip_bytes`` caps the weight bytes one program keeps on chip (tests force the split
    and stepwise paths with it). Default: None, the GPU's limits only."""
    B, _, _, NH, DH = wx.shape
    plan = _cached_plan(cell.name, B, NH, DH, wx.dtype, gpu_spec(wx.device), max_onchip_bytes)
    # flashseq-tune's winner for this GPU and shape bucket, if any, overrides the tiles
    return plan if max_onchip_bytes is not None else tuned_plan(plan, wx.device)


def _fwd_warps(plan: FusedRNNPlan) -> int:
    # The plan's register model under-counts the fused kernels (cuobjdump on sm_80/sm_90 bf16
    # cubins: GRU DH 64 at 4 warps spills 80-184 B, none at 8), so fused heads of 64+ units
    # get at least 8 warps. Split/stepwise keep the plan's warps (more than BH/8 warps along
    # the units only replicate the dot's fragments).
    if plan.path == "fused" and plan.padded_head_dim >= 64:
        return max(plan.num_warps, 8)
    return plan.num_warps


def _bwd_warps(plan: FusedRNNPlan) -> int:
    # The plan models the forward only. The backward holds about twice the live fp32 blocks
    # (gate inputs, states and their gradients); cuobjdump on sm_80/sm_90 cubins (bf16 sLSTM,
    # DH 64, BB 16) shows 64-88 B spilled at 8 warps and none at 16: double, up to 16.
    return min(16, 2 * _fwd_warps(plan))


def fused_rnn_fwd(wx, r, b, states, lengths, cell, plan: FusedRNNPlan, save: bool):
    """Persistent forward. wx [B,T,G,NH,DH], r [G,NH,DH,DH], b [G,NH,DH], states [S,B,NH,DH],
    lengths [B] int64 or None. Returns h [B,T,NH,DH], last [S,B,NH,DH] (wx's dtype) and, if
    ``save``, rh [B,T,G,NH,DH] and the state sequence [T+1,S,B,NH,DH] (fp32), else empty."""
    B, T, G, NH, DH = wx.shape
    S = cell.num_states
    h = wx.new_empty(B, T, NH, DH)
    last = wx.new_empty(S, B, NH, DH)
    rh_st = wx.new_empty((B, T, G, NH, DH) if save else (0,), dtype=torch.float32)
    s_st = wx.new_empty((T + 1, S, B, NH, DH) if save else (0,), dtype=torch.float32)
    grid = (_cdiv(B, plan.BB), NH)
    fused_rnn_fwd_kernel[grid](
        wx, r, b, states, lengths if lengths is not None else wx, h, last, rh_st, s_st,
        B, T, NH, DH,
        CELL=get_triton_cell(cell.name).fwd, G=G, S=S, BB=plan.BB, DHP=plan.padded_head_dim,
        HAS_LEN=lengths is not None, SAVE=save, PREC=_precision(wx.dtype),
        num_warps=_fwd_warps(plan), num_stages=plan.num_stages)
    return h, last, rh_st, s_st


def _split_bk(plan: FusedRNNPlan) -> int:
    # The stepwise path streams weights in [BK, BH] chunks. Chunks over 64 rows spill (cuobjdump,
    # bf16 LSTM/sLSTM DH 256, BK 256, BH 16: 24-368 B at 4 and 8 warps); 64 keeps the chunk's
    # registers bounded at any DH. The split path keeps BK == DHP: its weights stay on chip.
    DHP = plan.padded_head_dim
    return min(plan.BK, DHP) if plan.path == "split" else min(plan.BK, DHP, 64)


def _split_meta(cell, wx, plan: FusedRNNPlan, lengths):
    B, T, G, NH, DH = wx.shape
    DHP = plan.padded_head_dim
    grid = (_cdiv(B, plan.BB), NH, _cdiv(DH, plan.BH))
    meta = dict(G=G, S=cell.num_states, BB=plan.BB, BH=plan.BH, BK=_split_bk(plan), DHP=DHP,
                HAS_LEN=lengths is not None, PREC=_precision(wx.dtype))
    return grid, meta


def _co_resident(kernel, grid, args, meta, num_warps, num_stages, device) -> bool:
    """Whether the whole grid of ``kernel`` fits on the GPU at once (the barrier of the split
    path spins forever otherwise), from the compiled kernel's registers and shared memory."""
    spec = gpu_spec(device)
    try:
        compiled = kernel.warmup(*args, grid=grid, num_warps=num_warps, num_stages=num_stages,
                                 **meta)
        compiled._init_handles()  # loads the binary: fills n_regs (Triton 3.6 and 3.7)
        regs = int(compiled.n_regs)
    except (AttributeError, TypeError) as err:  # another Triton's internals: do not guess
        _warn_once(f"fused_rnn (triton): cannot read the split kernel's resources ({err})")
        return False
    threads = 32 * num_warps
    shared = int(compiled.metadata.shared)
    per_sm = min(spec.max_blocks_per_sm, spec.max_threads_per_sm // threads,
                 spec.registers_per_sm // (8 * _cdiv(max(regs, 1), 8) * threads),
                 spec.shared_mem_per_sm // shared if shared else spec.max_blocks_per_sm)
    programs = grid[0] * grid[1] * grid[2]
    return programs <= per_sm * spec.sm_count


def fused_rnn_fwd_split(wx, r, b, states, lengths, cell, plan: FusedRNNPlan, save: bool):
    """Same arguments and results as ``fused_rnn_fwd`` for heads split over programs: one
    launch with a per-step barrier (path "split" on a GPU), else one launch per step."""
    B, T, G, NH, DH = wx.shape
    S = cell.num_states
    h = wx.new_empty(B, T, NH, DH)
    rh_st = wx.new_empty((B, T, G, NH, DH) if save else (0,), dtype=torch.float32)
    s_buf = wx.new_empty((T + 1 if save else 2, S, B, NH, DH), dtype=torch.float32)
    s_buf[0] = states
    grid, meta = _split_meta(cell, wx, plan, lengths)
    meta.update(CELL=get_triton_cell(cell.name).fwd, SAVE=save)
    cnt = torch.zeros(grid[0] * NH, dtype=torch.int32, device=wx.device)
    lens = lengths if lengths is not None else wx
    common = (wx, r, b, lens, h, rh_st, s_buf, cnt)
    launch = dict(num_warps=_fwd_warps(plan), num_stages=plan.num_stages)
    if _persistent(plan, fused_rnn_fwd_kernel_split, grid, (*common, 0, T, B, T, NH, DH),
                   dict(meta, SYNC=True), launch, wx.device):
        fused_rnn_fwd_kernel_split[grid](*common, 0, T, B, T, NH, DH, SYNC=True, **meta, **launch)
    else:
        for t in range(T):
            fused_rnn_fwd_kernel_split[grid](*common, t, t + 1, B, T, NH, DH, SYNC=False, **meta,
                                             **launch)
    # a copy: a custom op's outputs must not alias each other (s_buf is returned too)
    last = s_buf[T if save else T % 2].to(wx.dtype, copy=True)
    return h, last, rh_st, (s_buf if save else s_buf.new_empty(0))


def _persistent(plan, kernel, grid, args, meta, launch, device) -> bool:
    """Run the split path as one launch with barriers? Only for path "split" on a GPU whose
    grid is co-resident; otherwise per-step launches (warned once when the plan said split)."""
    if plan.path != "split" or _interpreting() or device.type != "cuda":
        return False
    if _co_resident(kernel, grid, args, meta, launch["num_warps"], launch["num_stages"], device):
        return True
    _warn_once(f"fused_rnn (triton): the split plan's grid {grid} is not co-resident with the "
               f"compiled kernel's resources; running one launch per step instead")
    return False


def fused_rnn_bwd(dh, dlast, wx, r, rh_st, s_st, lengths, cell, plan: FusedRNNPlan):
    """Persistent backward. dh [B,T,NH,DH], dlast [S,B,NH,DH] (any float dtype), the forward's
    inputs and saved rh_st / s_st. Returns d wx and d rh ([B,T,G,NH,DH] fp32; the same tensor
    unless the cell's d rh differs) and d states0 [S,B,NH,DH] fp32."""
    B, T, G, NH, DH = wx.shape
    S = cell.num_states
    tcell = get_triton_cell(cell.name)
    dwx = wx.new_empty(B, T, G, NH, DH, dtype=torch.float32)
    drh = torch.empty_like(dwx) if tcell.rh_grad_differs else dwx
    ds0 = wx.new_empty(S, B, NH, DH, dtype=torch.float32)
    grid = (_cdiv(B, plan.BB), NH)
    fused_rnn_bwd_kernel[grid](
        wx, r, rh_st, s_st, dh.contiguous(), dlast.float().contiguous(),
        lengths if lengths is not None else wx, dwx, drh, ds0,
        B, T, NH, DH,
        CELL=tcell.bwd, G=G, S=S, BB=plan.BB, DHP=plan.padded_head_dim,
        HAS_LEN=lengths is not None, RH_DIFF=tcell.rh_grad_differs, PREC=_precision(wx.dtype),
        num_warps=_bwd_warps(plan), num_stages=plan.num_stages)
    return dwx, drh, ds0


def fused_rnn_bwd_split(dh, dlast, wx, r, rh_st, s_st, lengths, cell, plan: FusedRNNPlan):
    """Same as ``fused_rnn_bwd`` for heads split over programs (launched as the forward)."""
    B, T, G, NH, DH = wx.shape
    S = cell.num_states
    tcell = get_triton_cell(cell.name)
    dwx = wx.new_empty(B, T, G, NH, DH, dtype=torch.float32)
    drh = torch.empty_like(dwx) if tcell.rh_grad_differs else dwx
    ds0 = wx.new_empty(S, B, NH, DH, dtype=torch.float32)
    grid, meta = _split_meta(cell, wx, plan, lengths)
    meta.update(CELL=tcell.bwd, RH_DIFF=tcell.rh_grad_differs)
    cnt = torch.zeros(grid[0] * NH, dtype=torch.int32, device=wx.device)
    lens = lengths if lengths is not None else wx
    head = (wx, r, rh_st, s_st, dh.contiguous(), lens, dwx, drh)
    ds_in = dlast.float().contiguous()
    launch = dict(num_warps=_bwd_warps(plan), num_stages=plan.num_stages)
    args = (*head, ds_in, ds0, cnt, 0, T, B, T, NH, DH)
    if _persistent(plan, fused_rnn_bwd_kernel_split, grid, args, dict(meta, SYNC=True, FINAL=True),
                   launch, wx.device):
        fused_rnn_bwd_kernel_split[grid](*args, SYNC=True, FINAL=True, **meta, **launch)
        return dwx, drh, ds0
    ds_buf = wx.new_empty(2, S, B, NH, DH, dtype=torch.float32)
    for t in range(T - 1, -1, -1):
        ds_out = ds_buf[t % 2]
        fused_rnn_bwd_kernel_split[grid](*head, ds_in, ds_out, cnt, t, t + 1, B, T, NH, DH,
                                         SYNC=False, FINAL=False, **meta, **launch)
        ds_in = ds_out
    # d states0 needs d rh_0 of every program: one more launch after the last step's
    fused_rnn_bwd_kernel_split[grid](*head, ds_in, ds0, cnt, 0, 0, B, T, NH, DH,
                                     SYNC=False, FINAL=True, **meta, **launch)
    return dwx, drh, ds0


def _plan_for(cell, wx, max_onchip_bytes: int) -> FusedRNNPlan:
    return plan_tiles(cell, wx, None if max_onchip_bytes < 0 else max_onchip_bytes)


def _dense(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


@torch.library.custom_op("flashseq::fused_rnn_triton_fwd", mutates_args=())
def _fwd_op(wx: torch.Tensor, r: torch.Tensor, b: torch.Tensor, states: torch.Tensor,
            lengths: Optional[torch.Tensor], cell: str, save: bool, max_onchip_bytes: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    cell_ = get_cell(cell)
    plan = _plan_for(cell_, wx, max_onchip_bytes)
    launch = fused_rnn_fwd if plan.path == "fused" else fused_rnn_fwd_split
    # The kernels index every tensor as dense row-major, lengths too (a strided or expanded
    # lengths would be misread, and read out of bounds).
    return launch(wx.contiguous(), r.contiguous(), b.contiguous(), states.contiguous(),
                  _dense(lengths), cell_, plan, save)


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
    plan = _plan_for(cell_, wx, max_onchip_bytes)
    launch = fused_rnn_bwd if plan.path == "fused" else fused_rnn_bwd_split
    wx, r = wx.contiguous(), r.contiguous()
    dwx, drh, ds0 = launch(dh, dlast, wx, r, rh_st, s_st, _dense(lengths), cell_, plan)
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
    """Differentiable Triton ``fused_rnn``; the kernels run inside the custom ops above. Under
    ``create_graph=True`` the backward is ``double_backward.reference_backward`` instead (so
    second derivatives exist; b and states are kept for it)."""

    @staticmethod
    def forward(ctx, wx, r, b, states, lengths, cell: str, max_onchip_bytes: int):
        save = any(ctx.needs_input_grad[:4])
        h, last, rh_st, s_st = torch.ops.flashseq.fused_rnn_triton_fwd(
            wx, r, b, states, lengths, cell, save, max_onchip_bytes)
        ctx.save_for_backward(wx, r, rh_st, s_st, lengths, b, states)
        ctx.cell = cell
        ctx.max_onchip_bytes = max_onchip_bytes
        return h, last

    @staticmethod
    def backward(ctx, dh, dlast):
        wx, r, rh_st, s_st, lengths, b, states = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a backward autograd can differentiate
            return (*reference_backward(ctx.cell, (wx, r, b, states), ctx.needs_input_grad[:4],
                                        (dh, dlast), lengths), None, None, None)
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
