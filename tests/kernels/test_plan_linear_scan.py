"""Chunkwise linear-scan plans: fit the GPU by plain arithmetic, are the model's optimum, refuse
bad arguments."""
import dataclasses
import importlib.util
import itertools

import pytest
import torch

from flashseq.hardware import GPUS
from flashseq.kernels.linear_scan import LinearScanPlan, plan_linear_scan
from flashseq.kernels.linear_scan.plan import MAX_TILES, MIN_WARPS, OPS, build_model

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
ELEMENT_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
HAS_ORTOOLS = importlib.util.find_spec("ortools") is not None
DIMS = (16, 64, 100, 128, 256)


def _pow2(n):
    return n >= 1 and n & (n - 1) == 0


def check_plan_fits(plan: LinearScanPlan, gpu):
    eb = ELEMENT_BYTES[plan.dtype]
    threads = 32 * plan.num_warps
    kp = max(16, 1 << (plan.k_dim - 1).bit_length())
    vp = max(16, 1 << (plan.v_dim - 1).bit_length())
    for tile in (plan.BT, plan.BK, plan.BV):
        assert tile >= 16 and _pow2(tile)
    assert plan.BK <= kp and plan.BV <= vp and kp % plan.BK == 0 and vp % plan.BV == 0
    assert plan.num_chunks == -(-plan.seq_len // plan.BT)
    assert plan.state_grid == (kp // plan.BK, vp // plan.BV, plan.batch * plan.heads)
    assert plan.output_grid == (vp // plan.BV, plan.num_chunks, plan.batch * plan.heads)
    assert threads <= gpu.max_threads_per_block
    assert 0 < plan.registers_per_thread <= gpu.max_registers_per_thread
    assert plan.registers_per_thread * threads <= gpu.registers_per_block
    # the output pass holds fp32 o [BT, BV] and A [BT, BT] in registers
    assert plan.registers_per_thread * threads >= plan.BT * (plan.BV + plan.BT)
    # the state pass holds its fp32 [BK, BV] state block
    assert plan.registers_per_thread * threads >= plan.BK * plan.BV
    assert plan.shared_memory_bytes <= gpu.shared_mem_per_block_optin
    # the output pass stages its q, k, S tiles num_stages deep, plus v and A
    assert plan.shared_memory_bytes >= (plan.num_stages * (2 * plan.BT * plan.BK + plan.BK * plan.BV)
                                        + plan.BT * plan.BV + plan.BT * plan.BT) * eb
    # the tiles the launchers run (the model's domains stop at them): the plan is what runs
    assert plan.BT <= MAX_TILES["BT"] and plan.BK <= MAX_TILES["BK"]
    assert plan.BV <= MAX_TILES["BV"] and plan.num_warps >= MIN_WARPS
    assert 128 * (plan.num_warps - MIN_WARPS) <= plan.BT * plan.BV
    assert 0 < plan.predicted_ns and plan.binding and plan.reason


@pytest.mark.parametrize("gpu,op,dim,dt", [
    pytest.param(g, o, d, t, id=f"{g}-{o}-K{d}-{t}")
    for g, o, d, t in itertools.product(sorted(GPUS), OPS, DIMS, DTYPES)])
def test_plan_fits_gpu_limits(gpu, op, dim, dt):
    plan = plan_linear_scan(op, 2, 2048, 4, dim, dim, DTYPES[dt], gpu)
    check_plan_fits(plan, GPUS[gpu])


def test_launchers_run_the_plan_unchanged():
    """The chunk launchers' tiles are the plan's own (it used to pick BT 128 / BV 128 here,
    which the launchers then cut down to tiles the model never priced)."""
    from flashseq.kernels.linear_scan.triton_ops import capped_tiles
    for op in OPS:
        for dim in (64, 128):
            plan = plan_linear_scan(op, 2, 2048, 16, dim, dim, torch.bfloat16, "h100")
            assert capped_tiles(plan) == (plan.BT, plan.BK, plan.BV, plan.num_warps)


def test_long_sequences_take_longer_chunks():
    short = plan_linear_scan("gla", 1, 16, 2, 64, 64, torch.bfloat16, "h100")
    assert short.BT == 16 and short.num_chunks == 1
    long = plan_linear_scan("gla", 2, 16384, 16, 128, 128, torch.bfloat16, "h100")
    assert long.BT >= 64
    check_plan_fits(long, GPUS["h100-sxm"])


def test_k_and_v_differ():
    plan = plan_linear_scan("mlstm", 2, 1000, 3, 48, 200, torch.float16, "a10")
    assert plan.BK <= 64 and plan.BV <= 256
    check_plan_fits(plan, GPUS["a10"])


@pytest.mark.parametrize("op", OPS)
def test_solver_returns_the_models_optimum(op):
    model, _ = build_model(op, 1, 512, 2, 64, 32, torch.bfloat16, "rtx4090")
    sol = model.solve()
    best = min(model.objective[0].evaluate(values) for values in model.solutions())
    assert sol.status == "optimal" and sol.objective == best


@pytest.mark.skipif(not HAS_ORTOOLS, reason="ortools (optional) is not installed")
def test_cpsat_finds_the_same_optimum():
    import constrint.cpsat as cpsat

    model, _ = build_model("delta", 2, 4096, 8, 128, 128, torch.bfloat16, "h200")
    ours, theirs = model.solve(), cpsat.solve(model)
    assert ours.status == theirs.status == "optimal" and ours.objective == theirs.objective


def test_plan_is_frozen():
    plan = plan_linear_scan("gla", 1, 64, 1, 16, 16, torch.float32, "l4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.BT = 32


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(op="retnet"), ValueError, "allowed: \\['gla', 'delta', 'mlstm'\\]"),
    (dict(gpu="v100"), ValueError, "known names"),
    (dict(k_dim=0), ValueError, "k_dim must be >= 1"),
    (dict(v_dim=-1), ValueError, "v_dim must be >= 1"),
    (dict(seq_len=2.5), TypeError, "seq_len must be an int"),
    (dict(dtype=torch.float64), TypeError, "float64"),
    (dict(dtype=torch.int8), TypeError, "dtype must be"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    args = dict(op="gla", batch=1, seq_len=128, heads=2, k_dim=64, v_dim=64,
                dtype=torch.bfloat16, gpu="h100")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        plan_linear_scan(**args)
