"""Gradients of ``backend="cuda"``: the save-mode forward, the persistent backward kernel, and
d(r), d(b) as one product over all steps.

The forward runs the save-mode build of the forward kernel (``FLASHSEQ_FWD_SAVE=1``), which also
writes, in fp32, the cell's saved values per step ``[T, kNumSaved, B, NH, DH]`` and the states
after each step ``[T, S, B, NH, DH]``. The backward kernel (csrc/fused/backward.cuh, at its own
plan: flashseq/kernels/fused_rnn/plan_bwd.py) walks the steps in reverse with the recurrent
weights on chip and returns d(wx), d(initial states) and d(rh) per step (fp32). The weight
gradients need no recurrence:
    d(r)[g, n, k, e] = sum_{b, t} h_{t-1}[b, n, k] * d(rh_t)[b, g, n, e],
    d(b)[g, n, e]    = sum_{b, t} d(rh_t)[b, g, n, e],
one GEMM and one sum here, with h_{t-1} from the saved fp32 states (h_{-1} = the initial h).
Rows past their length have d(rh) = 0, so they add nothing.
"""
from __future__ import annotations

import torch

from flashseq import _jit

from . import cuda, plan_bwd


def backward_extension_spec(plan, arch: str) -> _jit.ExtensionSpec:
    """The extension of the backward instantiation for ``arch`` ("sm_80", "sm_90a") at a
    backward plan (plan_bwd.py; a forward plan stands for its configuration's backward plan)."""
    from .cuda_compile import backward_defines, backward_plan, backward_sources, uses_wgmma

    plan = backward_plan(plan)
    defines = backward_defines(plan, cluster=plan.cluster_size > 1 and arch == "sm_90a",
                               gmma=uses_wgmma(arch, plan))
    gencode = cuda.gencode_flag(arch)
    sources = (str(_jit.CSRC_DIR / "bindings" / "fused_rnn_cuda_bwd.cpp"),
               str(_jit.CSRC_DIR / "fused" / "fused_rnn_bwd.cu"))
    depends = tuple(str(p) for p in backward_sources() if str(p) not in sources)
    return _jit.ExtensionSpec(
        name="flashseq_cuda_bwd", sources=sources, depends=depends, include_dirs=(str(_jit.CSRC_DIR),),
        cflags=("-O3",),
        cuda_cflags=("-O3", "-std=c++17", gencode, *(f"-D{k}={v}" for k, v in sorted(defines.items()))))


# values the forward saves per step for the backward (csrc/cells: kNumSaved)
SAVED_PER_STEP = plan_bwd.SAVED_PER_STEP


class FusedRNNCudaFunction(torch.autograd.Function):
    """(h [B, T, NH, DH], last [S, B, NH, DH]) = fused_rnn(wx, r, b, states); layouts as
    ``flashseq.ops.fused_rnn``. Gradients for wx, r, b and states."""

    @staticmethod
    def forward(ctx, wx, r, b, states, lengths, cell):
        B, T, G, NH, DH = wx.shape
        S = cell.num_states
        f32 = dict(dtype=torch.float32, device=wx.device)
        # zero-filled: steps past a row's length are not written, and d(r) multiplies them by 0
        save_gates = torch.zeros(T, SAVED_PER_STEP[cell.name], B, NH, DH, **f32)
        save_states = torch.zeros(T, S, B, NH, DH, **f32)
        h, last = cuda.run_forward(wx, r, b, states, cell=cell, lengths=lengths,
                                   save_gates=save_gates, save_states=save_states)
        ctx.cell = cell
        ctx.save_for_backward(r, states, lengths, save_gates, save_states)
        return h, last

    @staticmethod
    def backward(ctx, dh, dlast):
        r, states, lengths, save_gates, save_states = ctx.saved_tensors
        cell = ctx.cell
        G, NH, DH = r.shape[0], r.shape[1], r.shape[2]
        S, B = states.shape[0], states.shape[1]
        T = save_states.shape[0]
        dtype, device = r.dtype, r.device
        dh = torch.zeros(B, T, NH, DH, dtype=dtype, device=device) if dh is None else dh.to(dtype)
        dlast = torch.zeros(S, B, NH, DH, dtype=dtype, device=device) if dlast is None else dlast.to(dtype)
        # the backward's own tiles (plan_bwd.py), not the forward's: the saved values it reads
        # are in a tile-free layout
        plan = cuda._plan_backward(cell.name, B, NH, DH, dtype, device)
        ext = cuda.extension(plan, cuda._arch(device), "backward")
        _, grid_b, _, _, blocks_per_head, BB, DHP, cluster = ext.launch_shape(B, NH)
        # r zero-padded, not transposed: a fragment register holds two adjacent units e
        rp = r.new_zeros(G, NH, DHP, DHP)
        rp[:, :, :DH, :DH] = r
        dwx = torch.empty(B, T, G, NH, DH, dtype=dtype, device=device)
        drh = torch.empty(B, T, G, NH, DH, dtype=torch.float32, device=device)
        dstates = torch.empty(S, B, NH, DH, dtype=dtype, device=device)
        if blocks_per_head > 1 and not cluster:
            xpart = torch.empty(2, NH, blocks_per_head, grid_b * BB, DHP, dtype=torch.float32, device=device)
            barrier = torch.zeros(grid_b * NH, dtype=torch.int32, device=device)
        else:
            xpart = torch.empty(0, dtype=torch.float32, device=device)
            barrier = torch.zeros(0, dtype=torch.int32, device=device)
        ext.backward(rp, save_gates, save_states, states, lengths, dh, dlast, dwx, drh, dstates,
                     xpart, barrier)
        dr, db = weight_gradients(states, save_states, drh)
        return dwx, dr.to(dtype), db.to(dtype), dstates, None, None


def weight_gradients(states, save_states, drh):
    """(d(r) [G, NH, DH, DH], d(b) [G, NH, DH]) in save_states' dtype from the initial states
    [S, B, NH, DH], the states after each step [T, S, B, NH, DH] and d(rh) [B, T, G, NH, DH]:
    d(r)[g, n, k, e] = sum_{b, t} h_{t-1}[b, n, k] d(rh_t)[b, g, n, e], d(b) = sum_{b, t} d(rh)."""
    # h_{t-1} per step: the initial h, then the saved h of steps 0..T-2
    h_prev = torch.cat([states[:1].to(save_states.dtype), save_states[:-1, 0]], dim=0)  # [T, B, NH, DH]
    return torch.einsum("tbnk,btgne->gnke", h_prev, drh), drh.sum(dim=(0, 1))


def fused_rnn_with_grad(wx, r, b, states, *, cell, lengths):
    """``flashseq.ops.fused_rnn`` through the persistent kernels, differentiable in wx, r, b and
    states (``lengths`` None or int64 [B] on wx's device)."""
    if wx.shape[1] == 0:
        raise ValueError(f"wx must have at least one step for the CUDA backward; got shape {tuple(wx.shape)}")
    lens = None if lengths is None else lengths.contiguous()
    return FusedRNNCudaFunction.apply(wx, r, b, states, lens, cell)
