"""The CUDA backward kernel's own plan (flashseq/kernels/fused_rnn/plan_bwd.py): every plan of the
compile matrix fits its GPU by plain arithmetic and is a tiling csrc/fused serves, the solver's
choice is the model's optimum over every tiling, a backward that cannot fit is refused before
launch with the sizes (while the forward keeps its plan), and the kernel is instantiated with
the backward plan's tiles and register cap."""
import dataclasses
import itertools
import math

import pytest
import torch

from flashseq.cells import CELLS, get_cell
from flashseq.hardware import GPUSpec
from flashseq.kernels.fused_rnn import cuda, cuda_compile
from flashseq.kernels.fused_rnn.plan import _consts, plan_fused_rnn
from flashseq.kernels.fused_rnn.plan_bwd import (SAVED_PER_STEP, FusedRNNBackwardPlan,
                                                 backward_resources, has_wgmma,
                                                 plan_fused_rnn_backward)
from flashseq.kernels.fused_rnn.problem import Problem

HEAD_DIMS = (64, 256, 768)
DTYPES = ("bfloat16", "float16", "tf32")
GPUS = ("a100", "h100")
ELEMENT_BYTES = {"bfloat16": 2, "float16": 2, "tf32": 4}
BATCH = 16


def _cases():
    return [pytest.param(cell, dtype, dh, gpu, id=f"{cell}-{dtype}-DH{dh}-{gpu}")
            for gpu in GPUS for cell in sorted(CELLS) for dtype in DTYPES for dh in HEAD_DIMS]


def _blocks_per_sm(gpu: GPUSpec, regs, threads, smem):
    return min(gpu.registers_per_sm // (regs * threads), gpu.max_threads_per_sm // threads,
               gpu.max_blocks_per_sm, gpu.shared_mem_per_sm // smem)


def check_backward_plan_fits(plan: FusedRNNBackwardPlan, gpu: GPUSpec):
    """Re-check a backward plan with plain integer arithmetic (csrc/fused/layout.h, layout_bwd.h
    and backward.cuh's rules), not with the model's formulas."""
    cell = get_cell(plan.cell)
    G = cell.num_gates
    eb = ELEMENT_BYTES[plan.dtype]
    K = 16 if eb == 2 else 8
    DHP, BB, BH = plan.padded_head_dim, plan.BB, plan.BH
    W = plan.num_warps
    assert W == plan.warps_m * plan.warps_n and plan.threads == 32 * W
    assert plan.path in ("fused", "split") and plan.backend == "cuda"
    # hardware limits
    assert plan.threads <= gpu.max_threads_per_block
    assert 0 < plan.registers_per_thread <= min(255, gpu.max_registers_per_thread)
    assert plan.registers_per_thread % 8 == 0
    assert plan.registers_per_thread * plan.threads <= gpu.registers_per_block
    assert 0 < plan.shared_memory_bytes <= gpu.shared_mem_per_block_optin
    # the tiling csrc/fused accepts (Tiling::invalid, BwdTiling::invalid, BwdTraits)
    assert DHP % 16 == 0 and DHP >= plan.head_dim
    assert BB % 8 == 0 and BH % 8 == 0 and plan.programs_per_head * BH == DHP
    assert (G * BH) % (16 * plan.warps_m) == 0 and DHP % (K * plan.warps_n) == 0
    assert plan.grid == (plan.heads * plan.programs_per_head, -(-plan.batch // BB))
    part_stride = DHP + (4 - DHP) % 32
    if plan.wgmma:
        assert has_wgmma(gpu) and W % 4 == 0 and BB in (8, 16)
        gwm = math.gcd(W // 4, -(-DHP // 64))
        assert (plan.row_groups, plan.column_groups) == (gwm, W // 4 // gwm)
        assert (G * BH) % (plan.column_groups * K) == 0 and DHP % (K * W // 4) == 0
        m_tiles = -(-DHP // 64)
        weight_regs = (m_tiles // gwm) * (G * BH // plan.column_groups // K) * 4
        # 2 x slices x BB x stride fp32 partials + d(rh) in core matrices
        smem = G * BB * BH * eb + 2 * plan.column_groups * BB * part_stride * 4
    else:
        wmb = math.gcd(W, DHP // 16)
        assert (plan.row_groups, plan.column_groups) == (wmb, W // wmb)
        assert (G * BH) % (plan.column_groups * K) == 0
        weight_regs = (DHP // wmb // 16) * (G * BH // (W // wmb) // K) * 4
        smem = BB * (G * BH * eb + 16) + 2 * plan.column_groups * BB * part_stride * 4
    assert weight_regs == cuda_compile.expected_backward_weight_loads(
        plan, "sm_90a" if plan.wgmma else "sm_80")
    # the weight fragments, their accumulators and the carried state gradients are registers
    elems = -(-BB * BH // plan.threads)
    assert plan.registers_per_thread >= weight_regs + elems * (cell.num_states + 1) + 2 * BB // 8
    assert plan.onchip_weight_bytes >= G * DHP * BH * eb
    assert plan.registers_per_thread * plan.threads * 4 >= plan.onchip_weight_bytes
    assert plan.shared_memory_bytes >= smem
    # the exchange of a split head
    if plan.cluster_size > 1:
        assert gpu.supports_clusters and plan.cluster_size == plan.programs_per_head
        assert plan.cluster_size <= gpu.max_cluster_size and plan.exchange_bytes == 0
    elif plan.programs_per_head > 1:
        # a flag barrier in global memory: every block of the grid resident at once
        per_sm = _blocks_per_sm(gpu, plan.registers_per_thread, plan.threads,
                                plan.shared_memory_bytes)
        assert plan.grid_size <= per_sm * gpu.sm_count, plan
        padded_batch = plan.grid[1] * BB
        assert plan.exchange_bytes == 2 * plan.heads * plan.programs_per_head * padded_batch * DHP * 4
    assert 0 < plan.predicted_step_ns < 1e6 and plan.binding and plan.reason


@pytest.mark.parametrize("cell, dtype, DH, gpu", _cases())
def test_backward_plan_exists_and_fits(cell, dtype, DH, gpu):
    spec = GPUSpec.from_name(gpu)
    plan = plan_fused_rnn_backward(cell, BATCH, 1, DH, dtype, gpu)
    assert (plan.cell, plan.dtype, plan.gpu, plan.head_dim) == (cell, dtype, spec.name, DH)
    check_backward_plan_fits(plan, spec)
    # 16-bit products on an H100 take wgmma (the kernel's choice agrees with the plan's)
    if gpu == "h100" and dtype != "tf32":
        assert plan.wgmma and cuda_compile.uses_wgmma("sm_90a", plan)
    if gpu == "a100":
        assert not plan.wgmma and plan.cluster_size == 1


def _brute_force_best(cell, dtype, dh, gpu, batch, heads):
    """The fastest tiling of the backward by enumeration: every tile and warp choice, the
    kernel's regrouping computed with gcd, every limit checked with integers."""
    spec = GPUSpec.from_name(gpu)
    cell = get_cell(cell)
    c = _consts(cell, batch, heads, dh, dtype, spec, "cuda")
    K = 16 if c.eb == 2 else 8
    wg = has_wgmma(spec)
    best = None
    for BB, BH, WM, WN, clus in itertools.product(
            (8, 16, 32, 64), range(8, c.DHP + 1, 8), (1, 2, 4, 8, 16), (1, 2, 4, 8), (0, 1)):
        W, P = WM * WN, c.DHP // BH
        if (BB > max(8, 1 << (batch - 1).bit_length()) or c.DHP % BH or c.DHP % (K * WN)
                or (c.G * BH) % (16 * WM) or 32 * W > spec.max_threads_per_block):
            continue
        if clus and (not spec.supports_clusters or P == 1 or P > spec.max_cluster_size):
            continue
        wmb = math.gcd(W, c.DHP // 16)
        v = dict(BB=BB, BH=BH, WM=WM, WN=WN, split=int(P > 1), cluster=clus, WMB=wmb, WKB=W // wmb)
        if (c.G * BH) % (K * (W // wmb)):
            continue
        if wg:
            if W % 4 or BB > 16 or c.DHP % (K * W // 4):
                continue
            gwm = math.gcd(W // 4, -(-c.DHP // 64))
            v.update(GWM=gwm, GWK=W // 4 // gwm)
            if (c.G * BH) % (K * v["GWK"]):
                continue
        r = backward_resources(v, c, lambda a, b: -(-a // b), SAVED_PER_STEP[cell.name], wg)
        regs = 8 * -(-(sum(r["regs_terms"]) + max(r["live_terms"])) // 8)
        smem = max(r["smem_terms"])
        if (regs > spec.max_registers_per_thread or regs * r["threads"] > spec.registers_per_block
                or smem > spec.shared_mem_per_block_optin):
            continue
        resident = spec.sm_count * _blocks_per_sm(spec, regs, r["threads"], smem)
        if P > 1 and not clus and r["grid"] > resident:
            continue
        if best is None or r["time_ps"] < best:
            best = r["time_ps"]
    return best


@pytest.mark.parametrize("cell, dtype, dh, gpu, batch, heads", [
    ("lstm", "bfloat16", 256, "h100", 16, 1), ("gru", "tf32", 64, "a100", 16, 2),
    ("slstm", "float16", 128, "a100", 40, 3), ("elman", "tf32", 96, "h100", 8, 4)])
def test_solver_choice_is_the_enumerated_optimum(cell, dtype, dh, gpu, batch, heads):
    """The model (its gcd regrouping stated with products, the max of the live registers as a
    bound variable) has the same optimum as enumerating every tiling with plain integers."""
    plan = plan_fused_rnn_backward(cell, batch, heads, dh, dtype, gpu)
    best = _brute_force_best(cell, dtype, dh, gpu, batch, heads)
    assert best is not None
    assert plan.predicted_step_ns == pytest.approx(best / 1000)


def _small_smem_gpu():
    # an sm_80 part whose blocks get 48 KB of shared memory: room for the forward's h buffer,
    # none for the backward's fp32 partial sums of all DHP = 1024 rows (2 x 8 x 1028 x 4 B)
    return dataclasses.replace(GPUSpec.from_name("a100"), name="a100-48KB",
                               shared_mem_per_block_optin=48 * 1024)


def test_backward_that_cannot_fit_is_refused_with_the_sizes():
    gpu = _small_smem_gpu()
    fwd = plan_fused_rnn("lstm", BATCH, 1, 1024, torch.bfloat16, gpu, backend="cuda")
    assert fwd.path in ("fused", "split") and fwd.shared_memory_bytes <= 48 * 1024
    with pytest.raises(ValueError, match=r"lstm DH=1024 .*padded to 1024.*a100-48KB.*"
                                         r"shared memory.*49152 B per block"):
        plan_fused_rnn_backward("lstm", BATCH, 1, 1024, torch.bfloat16, gpu)


def test_cuda_backend_refuses_gradients_before_launch(monkeypatch):
    """Where the forward has a plan but the backward kernel cannot fit, the CUDA back end
    refuses a call that needs gradients (so "auto" falls back with one warning) before any
    build or launch, and still serves the inference-only call."""
    from flashseq import hardware

    gpu = _small_smem_gpu()
    built = []
    monkeypatch.setattr(hardware, "detect", lambda device=None: gpu)
    monkeypatch.setattr(cuda, "_arch", lambda device: "sm_80")
    monkeypatch.setattr(cuda, "_extension", lambda key: built.append(key) or (object(), None))
    cuda._plan.cache_clear()
    cuda._plan_backward.cache_clear()
    try:
        problem = Problem(cell=get_cell("lstm"), batch=BATCH, steps=5, heads=1, head_dim=1024,
                          dtype=torch.bfloat16, device=torch.device("cuda", 0),
                          has_lengths=False, needs_grad=True)
        why = cuda.unsupported_reason(problem)
        assert why is not None and "backward" in why and "DH=1024" in why, why
        assert not any(kind == "backward" for _, _, kind in built)
        assert cuda.unsupported_reason(dataclasses.replace(problem, needs_grad=False)) is None
    finally:
        cuda._plan.cache_clear()
        cuda._plan_backward.cache_clear()


def test_backward_kernel_is_instantiated_at_the_backward_plan():
    """The -D flags of the backward build are the backward plan's tiles and its predicted
    registers as the cap, also when a forward plan stands for its configuration."""
    fwd = plan_fused_rnn("lstm", BATCH, 1, 768, "tf32", "a100", backend="cuda")
    bwd = plan_fused_rnn_backward("lstm", BATCH, 1, 768, "tf32", "a100")
    assert (bwd.BB, bwd.BH, bwd.num_warps) != (fwd.BB, fwd.BH, fwd.num_warps)  # its own tiles
    for plan in (bwd, fwd):
        d = cuda_compile.backward_defines(plan)
        assert (d["FLASHSEQ_BB"], d["FLASHSEQ_BH"], d["FLASHSEQ_WM"], d["FLASHSEQ_WK"]) == tuple(
            str(x) for x in (bwd.BB, bwd.BH, bwd.warps_m, bwd.warps_n))
        assert d["FLASHSEQ_MAX_REGS"] == str(bwd.registers_per_thread)
    spec = cuda.extension_spec(fwd, "sm_80", "backward")
    assert f"-DFLASHSEQ_BH={bwd.BH}" in spec.cuda_cflags
    assert f"-DFLASHSEQ_MAX_REGS={bwd.registers_per_thread}" in spec.cuda_cflags


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="float64"):
        plan_fused_rnn_backward("lstm", 16, 1, 64, torch.float64, "a100")
    with pytest.raises(ValueError, match="head_dim"):
        plan_fused_rnn_backward("lstm", 16, 1, 0, torch.bfloat16, "a100")
