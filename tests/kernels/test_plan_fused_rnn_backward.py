"""The CUDA backward kernel's own plan (flashseq/kernels/fused_rnn/plan_bwd.py): every plan of the
compile matrix fits its GPU by plain arithmetic and is a tiling csrc/fused serves, the solver's
choice is the model's optimum over every tiling, a backward that cannot fit is refused before
launch with the sizes (while the forward keeps its plan), and the kernel is instantiated with
the backward plan's tiles and register cap."""
import dataclasses
import itertools
import math
import re

import pytest
import torch

from flashseq.cells import CELLS, get_cell
from flashseq.hardware import GPUSpec
from flashseq.kernels.fused_rnn import cuda, cuda_compile
from flashseq.kernels.fused_rnn.plan import _consts, plan_fused_rnn
from flashseq.kernels.fused_rnn.plan_bwd import (SAVED_PER_STEP, FusedRNNBackwardPlan,
                                                 backward_resources, has_wgmma,
                                                 padding_candidates, plan_fused_rnn_backward)
from flashseq.kernels.fused_rnn.problem import Problem

HEAD_DIMS = (64, 256, 768)
DTYPES = ("bfloat16", "float16", "tf32")
GPUS = ("a100", "h100")
ELEMENT_BYTES = {"bfloat16": 2, "float16": 2, "tf32": 4, "float32": 4}
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
    # the backward may pad wider than the forward (plan_bwd.padding_candidates): its kernel
    # takes r zero-padded to its own DHP and masks the units past DH
    assert DHP % 16 == 0 and DHP >= plan.head_dim and DHP in padding_candidates(plan.head_dim)
    assert BB % 8 == 0 and BH % 8 == 0 and plan.programs_per_head * BH == DHP
    assert (G * BH) % (16 * plan.warps_m) == 0 and DHP % (K * plan.warps_n) == 0
    assert plan.grid == (plan.heads * plan.programs_per_head, -(-plan.batch // BB))
    part_stride = DHP + (4 - DHP) % 32
    # the plan's product is the one the sm_90a build takes (cuda_compile.uses_wgmma)
    assert plan.wgmma == (has_wgmma(gpu) and cuda_compile.uses_wgmma("sm_90a", plan))
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
    # at these sizes every product on an H100 takes wgmma, 16-bit and tf32 alike (the
    # kernel's choice agrees with the plan's)
    if gpu == "h100":
        assert plan.wgmma and cuda_compile.uses_wgmma("sm_90a", plan)
    if gpu == "a100":
        assert not plan.wgmma and plan.cluster_size == 1


def _brute_force_best(cell, dtype, dh, gpu, batch, heads, wg=None):
    """The fastest tiling of the backward at the forward's padding by enumeration: every tile
    and warp choice, the kernel's regrouping computed with gcd, every limit checked with
    integers. On sm_90 ``wg`` True: the tilings wgmma serves; False: the others (mma.sync)."""
    spec = GPUSpec.from_name(gpu)
    cell = get_cell(cell)
    c = _consts(cell, batch, heads, dh, dtype, spec, "cuda")
    K = 16 if c.eb == 2 else 8
    wg = has_wgmma(spec) and wg is not False
    fallback = has_wgmma(spec) and not wg
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
        serves = W % 4 == 0 and BB <= 16 and c.DHP % (K * W // 4) == 0
        if fallback and serves:
            continue
        if wg:
            if not serves:
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
    ("slstm", "float16", 128, "a100", 40, 3), ("elman", "tf32", 96, "h100", 8, 4),
    ("elman", "bfloat16", 40, "h100", 16, 1), ("gru", "tf32", 16, "h100", 1, 1),
    ("lstm", "bfloat16", 200, "h100", 64, 4)])
def test_solver_choice_is_the_enumerated_optimum(cell, dtype, dh, gpu, batch, heads):
    """The model (its gcd regrouping stated with products, the max of the live registers as a
    bound variable, on sm_90 the tilings wgmma serves and, where none fits, exactly the
    others) has the same optimum as enumerating every tiling with plain integers."""
    plan = plan_fused_rnn_backward(cell, batch, heads, dh, dtype, gpu)
    assert plan.padded_head_dim == 16 * -(-dh // 16)
    best = _brute_force_best(cell, dtype, dh, gpu, batch, heads)
    if best is None:              # sm_90, no wgmma tiling fits: the mma.sync fallback
        assert not plan.wgmma and has_wgmma(GPUSpec.from_name(gpu))
        best = _brute_force_best(cell, dtype, dh, gpu, batch, heads, wg=False)
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


# -- coverage: a backward plan wherever the forward has one --------------------------------------
# The forward and backward plans depend on DH only through the padding (the next multiple of 16,
# plan.padded_head_dim; the backward's wider candidates, padding_candidates, are DH rounded up
# too), so one DH per multiple of 16 stands for all of them.
SWEEP_GPUS = ("a100", "h100")
SWEEP_SHAPES = ((1, 1), (1, 4), (16, 1), (16, 4), (64, 1), (64, 4))     # (batch, heads)
# The one exception: a forward split over blocks that meet through global memory (no cluster)
# needs its whole grid co-resident, and a backward block also holds the fp32 accumulators of
# all DHP rows of d(h_prev) for its batch tile and their double-buffered partial sums in shared
# memory (the forward's only its own G x BB x BH): where many heads x batch tiles of large
# heads fill the GPU, the backward's grid cannot be co-resident although the forward's is.
COEXIST_REASON = r"all blocks must be co-resident.*accumulators of all \d+ rows"


def _coverage_hole(cell, dtype, dh, gpu, batch, heads):
    """None where the forward has no on-chip plan or the backward has one; else the refusal."""
    fwd = plan_fused_rnn(cell, batch, heads, dh, dtype, gpu, backend="cuda")
    if fwd.path == "stepwise":
        return None
    try:
        bwd = plan_fused_rnn_backward(cell, batch, heads, dh, dtype, gpu)
    except ValueError as err:
        return fwd, str(err)
    check_backward_plan_fits(bwd, GPUSpec.from_name(gpu))
    return None


def _check_coverage(cases):
    holes = []
    for case in cases:
        hole = _coverage_hole(*case)
        if hole is None:
            continue
        fwd, why = hole
        # only the named exception: the forward's split through global memory
        assert fwd.path == "split" and fwd.cluster_size == 1, (case, fwd, why)
        assert re.search(COEXIST_REASON, why), (case, why)
        holes.append(case)
    return holes


def test_backward_covers_the_forward_sampled():
    """A subsample of the sweep (every cell, dtype, A100 / H100, DH 1..1024, batch 1/16/64,
    heads 1/4): wherever the forward has an on-chip CUDA plan, the backward has one that fits
    (re-checked with integers), or it is the named co-residency exception. Before the mma.sync
    fallback on sm_90 and the wider padding, e.g. every H100 GRU / Elman head of DH <= 16 and
    every A100 fp32 LSTM DH 161..176 at batch 64 x 4 heads had none."""
    import random

    cases = [(cell, dt, dh, gpu, b, nh) for cell, dt, dh, gpu, (b, nh) in itertools.product(
        sorted(CELLS), ("bfloat16", "float16", "tf32", "float32"), range(8, 1025, 16), SWEEP_GPUS,
        SWEEP_SHAPES)]
    sample = random.Random(16).sample(cases, 480) + [
        ("elman", "bfloat16", 40, "h100", 16, 1), ("gru", "bfloat16", 16, "h100", 1, 1),
        ("gru", "tf32", 80, "h100", 16, 4), ("elman", "tf32", 7, "h100", 64, 1),
        ("lstm", "tf32", 176, "a100", 64, 4), ("gru", "bfloat16", 240, "a100", 1, 1),
        ("elman", "bfloat16", 368, "a100", 64, 4), ("lstm", "bfloat16", 200, "h100", 64, 4),
        ("slstm", "tf32", 208, "h100", 64, 4), ("lstm", "bfloat16", 656, "a100", 1, 4)]
    holes = _check_coverage(sample)
    assert ("lstm", "bfloat16", 656, "a100", 1, 4) in holes      # the exception is reached
    assert len(holes) < len(sample) // 10


@pytest.mark.slow
@pytest.mark.parametrize("gpu", SWEEP_GPUS)
def test_backward_covers_the_forward_sweep(gpu):
    """The whole sweep for one GPU (every cell, bf16 and tf32 (fp16 / float32 plan the same
    tiles at other rates), every padded DH up to 1024, batch 1/16/64, heads 1/4)."""
    cases = [(cell, dt, dh, gpu, b, nh) for cell, dt, dh, (b, nh) in itertools.product(
        sorted(CELLS), ("bfloat16", "tf32"), range(16, 1025, 16), SWEEP_SHAPES)]
    _check_coverage(cases)


def test_elman_dh40_bf16_h100_backward_on_mma_sync():
    """Elman DH 40 (padded 48, 4.6 KB of weights) on an H100: no tiling wgmma serves fits (48
    rows k make one 64-row tile, and the kernel's 16-row warp tiles over G*BH = 48 gate columns
    allow one warp, not a warpgroup), so the backward plans mma.sync on sm_90a, as the forward
    does, and the build agrees."""
    fwd = plan_fused_rnn("elman", 16, 1, 40, torch.bfloat16, "h100", backend="cuda")
    assert fwd.path == "fused" and not cuda_compile.uses_wgmma("sm_90a", fwd)
    plan = plan_fused_rnn_backward("elman", 16, 1, 40, torch.bfloat16, "h100")
    check_backward_plan_fits(plan, GPUSpec.from_name("h100"))
    assert plan.padded_head_dim == 48 and not plan.wgmma
    assert not cuda_compile.uses_wgmma("sm_90a", plan)
    assert "mma.sync on sm_90a" in plan.reason
    assert cuda_compile.backward_defines(plan)["FLASHSEQ_DHP"] == "48"


def test_backward_pads_wider_where_the_forward_padding_has_no_tiling():
    """fp32 LSTM DH 176 at batch 64 x 4 heads on an A100: at DHP 176 (11 x 16) the rows k go
    to one warp only (gcd(W, 11) = 1), whose accumulators of all 176 rows do not fit beside the
    weights in a co-resident grid; padded to 192 (12 x 16) four warps share them."""
    from flashseq.kernels.fused_rnn.plan_bwd import build_backward_model

    _, why = _coverage_hole("lstm", "tf32", 176, "a100", 64, 4) or (None, None)
    assert why is None, why
    plan = plan_fused_rnn_backward("lstm", 64, 4, 176, "tf32", "a100")
    assert plan.padded_head_dim == 192 and "padded to 192" in plan.reason
    model, _ = build_backward_model("lstm", 64, 4, 176, "tf32", "a100")
    assert not model.solve()
    # the binding launches the backward at its own DHP: r is padded to it
    assert cuda_compile.backward_defines(plan)["FLASHSEQ_DHP"] == "192"


def test_padding_candidates():
    assert padding_candidates(40) == [48, 64, 128, 256, 512, 1024]
    assert padding_candidates(176) == [176, 192, 256, 512, 1024]
    assert padding_candidates(1024) == [1024]
    assert padding_candidates(1) == [16, 32, 64, 128, 256, 512, 1024]
