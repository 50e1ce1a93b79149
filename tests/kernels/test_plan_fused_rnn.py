"""fused_rnn tiling plans: every plan fits its GPU by plain arithmetic, the solver's choice is the
model's optimum, infeasible requests are explained, bad arguments are refused."""
import dataclasses
import importlib.util
import itertools

import pytest
import torch

from flashseq.cells import CELLS
from flashseq.hardware import GPUS, GPUSpec
from flashseq.kernels.fused_rnn.plan import (FusedRNNPlan, build_model, plan_fused_rnn,
                                             resources, stepwise_resources)

HEAD_DIMS = (16, 32, 64, 128, 256, 512, 768, 1024)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
ELEMENT_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "tf32": 4}
HAS_ORTOOLS = importlib.util.find_spec("ortools") is not None
BATCH = 16


def heads_for(dh):
    # the head-wise configurations of docs/design.md: H = 768 as NH x DH
    return max(1, 768 // dh)


def _pow2(n):
    return n >= 1 and n & (n - 1) == 0


def check_plan_fits(plan: FusedRNNPlan, gpu: GPUSpec, cell):
    """Re-check a plan against the GPU's limits with plain integer arithmetic."""
    G, S = cell.num_gates, cell.num_states
    eb = ELEMENT_BYTES[plan.dtype]
    threads = 32 * plan.num_warps
    assert plan.path in ("fused", "split", "stepwise")
    assert plan.num_warps == plan.warps_m * plan.warps_n
    assert threads <= gpu.max_threads_per_block
    assert 0 < plan.registers_per_thread <= gpu.max_registers_per_thread
    assert plan.registers_per_thread * threads <= gpu.registers_per_block
    assert 0 < plan.shared_memory_bytes <= gpu.shared_mem_per_block_optin
    assert plan.head_dim <= plan.padded_head_dim
    assert plan.programs_per_head * plan.BH == plan.padded_head_dim
    assert plan.grid == (plan.heads * plan.programs_per_head, -(-plan.batch // plan.BB))
    assert 0 < plan.predicted_step_ns < 1e9
    assert plan.binding and plan.reason
    if plan.backend == "triton" or plan.path == "stepwise":
        for tile in (plan.BB, plan.BH, plan.BK):
            assert tile >= 16 and _pow2(tile), plan
        assert _pow2(plan.padded_head_dim)
    if plan.path == "stepwise":
        assert plan.onchip_weight_bytes == 0 and plan.cluster_size == 1
        return
    # the weight slice kept on chip: G x DHP x BH elements, and the registers must hold it
    assert plan.onchip_weight_bytes == G * plan.padded_head_dim * plan.BH * eb
    assert plan.registers_per_thread * threads * 4 >= plan.onchip_weight_bytes
    # fp32 accumulators of every gate and the fp32 states also live in registers
    assert plan.registers_per_thread * threads >= plan.onchip_weight_bytes // 4 + (G + S) * plan.BB * plan.BH
    if plan.backend == "triton":
        assert plan.BK == plan.padded_head_dim          # the whole reduction is on chip
        assert 16 * plan.warps_m <= plan.BB and 8 * plan.warps_n <= plan.BH
    else:
        assert plan.BB % 8 == 0 and plan.padded_head_dim % 16 == 0
        assert (G * plan.BH) % (16 * plan.warps_m) == 0
        assert plan.padded_head_dim % (16 * plan.warps_n) == 0
        assert plan.BK * plan.warps_n == plan.padded_head_dim
    if plan.path == "fused":
        assert plan.programs_per_head == 1 and plan.cluster_size == 1
    elif plan.cluster_size > 1:
        assert plan.cluster_size == plan.programs_per_head <= gpu.max_cluster_size
        assert gpu.supports_clusters and plan.backend == "cuda"
    else:
        # a global barrier: the whole grid must be resident at once
        assert plan.programs_per_head > 1
        per_sm = min(gpu.registers_per_sm // (plan.registers_per_thread * threads),
                     gpu.max_threads_per_sm // threads, gpu.max_blocks_per_sm,
                     gpu.shared_mem_per_sm // plan.shared_memory_bytes)
        assert plan.grid_size <= gpu.sm_count * per_sm, plan


def _cases(backend, dtypes):
    for gpu, cell, dh, dt in itertools.product(sorted(GPUS), sorted(CELLS), HEAD_DIMS, dtypes):
        yield pytest.param(backend, gpu, cell, dh, dt, id=f"{backend}-{gpu}-{cell}-DH{dh}-{dt}")


def _plan_and_check(backend, gpu, cell, dh, dt):
    spec = GPUS[gpu]
    plan = plan_fused_rnn(cell, BATCH, heads_for(dh), dh, DTYPES[dt], spec, backend=backend)
    check_plan_fits(plan, spec, CELLS[cell])
    if plan.path == "stepwise":
        assert f"DH={dh}" in plan.reason and "KB" in plan.reason, plan.reason
    return plan


# Triton: every GPU x cell x DH x dtype (the Triton models are small); CUDA: every GPU x cell x
# DH in bf16 by default, all dtypes with --runslow.
@pytest.mark.parametrize("backend,gpu,cell,dh,dt", [*_cases("triton", DTYPES), *_cases("cuda", ["bf16"])])
def test_plan_fits_gpu_limits(backend, gpu, cell, dh, dt):
    _plan_and_check(backend, gpu, cell, dh, dt)


@pytest.mark.slow
@pytest.mark.parametrize("backend,gpu,cell,dh,dt", [*_cases("cuda", ["fp16", "fp32"])])
def test_plan_fits_gpu_limits_cuda_all_dtypes(backend, gpu, cell, dh, dt):
    _plan_and_check(backend, gpu, cell, dh, dt)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_small_heads_stay_on_chip_and_huge_heads_do_not(backend):
    small = plan_fused_rnn("lstm", 16, 12, 64, torch.bfloat16, "h100", backend=backend)
    assert small.path in ("fused", "split")
    huge = plan_fused_rnn("lstm", 16, 1, 4096, torch.bfloat16, "a10", backend=backend)
    assert huge.path == "stepwise"
    assert "DH=4096" in huge.reason and "KB" in huge.reason


def test_cuda_uses_clusters_only_where_they_exist():
    hopper = plan_fused_rnn("lstm", 16, 3, 256, torch.bfloat16, "h100", backend="cuda")
    ampere = plan_fused_rnn("lstm", 16, 3, 256, torch.bfloat16, "a100", backend="cuda")
    assert ampere.cluster_size == 1
    assert hopper.cluster_size <= 8
    check_plan_fits(hopper, GPUS["h100-sxm"], CELLS["lstm"])
    check_plan_fits(ampere, GPUS["a100-40gb"], CELLS["lstm"])


def test_max_onchip_bytes_forces_the_split_path():
    # LSTM DH=64 bf16: a whole head is 4*64*64*2 = 32 KB; allow a quarter of that per program
    plan = plan_fused_rnn("lstm", 16, 1, 64, torch.bfloat16, "h100", backend="triton",
                          max_onchip_bytes=8192)
    assert plan.path == "split" and plan.programs_per_head == 4
    assert plan.onchip_weight_bytes <= 8192
    assert "max_onchip_bytes" in plan.binding
    check_plan_fits(plan, GPUS["h100-sxm"], CELLS["lstm"])


def test_max_onchip_bytes_below_any_tile_falls_back_with_reason():
    plan = plan_fused_rnn("gru", 16, 1, 64, torch.bfloat16, "h100", backend="triton",
                          max_onchip_bytes=100)
    assert plan.path == "stepwise"
    assert "max_onchip_bytes=100" in plan.reason and "smallest weight slice" in plan.reason


def _brute_force_optimum(model):
    best = None
    for values in model.solutions():
        value = model.objective[0].evaluate(values)
        best = value if best is None else min(best, value)
    return best


@pytest.mark.parametrize("backend,dh,feasible", [("triton", 32, True), ("triton", 64, True),
                                                 ("triton", 128, False), ("cuda", 64, True)])
def test_solver_returns_the_models_optimum(backend, dh, feasible):
    model, _ = build_model("slstm", 8, 4, dh, torch.bfloat16, "l4", backend=backend)
    sol = model.solve()
    best = _brute_force_optimum(model)
    if feasible:
        assert sol.status == "optimal" and sol.objective == best
    else:
        assert sol.status == "infeasible" and best is None


def test_plan_predictions_match_the_resource_formulas():
    spec = GPUS["a100-80gb"]
    plan = plan_fused_rnn("gru", 8, 2, 96, torch.float16, spec, backend="cuda")
    model, v = build_model("gru", 8, 2, 96, torch.float16, spec, backend="cuda")
    sol = model.solve()
    assert sol.objective == round(plan.predicted_step_ns * 1000)
    assert plan.BB == sol[v["BB"]] and plan.BH == sol[v["BH"]]


def test_stepwise_resources_are_plain_arithmetic():
    plan = plan_fused_rnn("lstm", 4, 1, 2048, torch.bfloat16, "l4", backend="triton")
    assert plan.path == "stepwise"
    check_plan_fits(plan, GPUS["l4"], CELLS["lstm"])
    assert callable(stepwise_resources) and callable(resources)


@pytest.mark.skipif(not HAS_ORTOOLS, reason="ortools (optional) is not installed")
@pytest.mark.parametrize("backend,gpu,dh", [("triton", "h100", 64), ("cuda", "h100", 256),
                                            ("cuda", "a10", 768)])
def test_cpsat_finds_the_same_optimum(backend, gpu, dh):
    import constrint.cpsat as cpsat

    model, _ = build_model("lstm", 16, heads_for(dh), dh, torch.bfloat16, gpu, backend=backend)
    ours, theirs = model.solve(), cpsat.solve(model)
    assert ours.status == theirs.status == "optimal"
    assert ours.objective == theirs.objective


def test_plan_is_frozen():
    plan = plan_fused_rnn("elman", 2, 1, 16, torch.float32, "a10")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.BB = 32


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(gpu="h300"), ValueError, "known names"),
    (dict(gpu=3), TypeError, "GPUSpec or a GPU name"),
    (dict(head_dim=0), ValueError, "head_dim must be >= 1"),
    (dict(head_dim=-16), ValueError, "head_dim must be >= 1"),
    (dict(head_dim=16.0), TypeError, "head_dim must be an int"),
    (dict(batch=True), TypeError, "batch must be an int"),
    (dict(heads=0), ValueError, "heads must be >= 1"),
    (dict(cell="lstmx"), ValueError, "allowed"),
    (dict(dtype=torch.float64), TypeError, "float64"),
    (dict(dtype=torch.int32), TypeError, "dtype must be"),
    (dict(dtype="fp8"), TypeError, "dtype must be"),
    (dict(backend="cudnn"), ValueError, "allowed: \\['triton', 'cuda'\\]"),
    (dict(max_onchip_bytes=0), ValueError, "max_onchip_bytes must be >= 1"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    args = dict(cell="lstm", batch=4, heads=2, head_dim=32, dtype=torch.bfloat16, gpu="h100",
                backend="triton")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        plan_fused_rnn(**args)
    if "max_onchip_bytes" not in kwargs:
        with pytest.raises(error, match=match):
            build_model(**args)
