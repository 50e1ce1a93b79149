"""plstm_2d's Triton forward and backward kernels (interpreter on CPU) against direct DAG
propagation in float64: odd grids and tiles that do not divide them, P-mode and D-mode gates,
exact-zero transitions, several V blocks, every gradient; NaN-poisoned output and scratch, K rows
in several steps; float16 and bfloat16; back-end choice; the Triton tile plan's register limit.
Sizes are small: the interpreter runs every program of both kernels on the CPU."""
import os
import warnings

import pytest
import torch

from flashseq.kernels.plstm import d_mode_2d, p_mode_2d, plstm_2d, plstm_dag
from flashseq.kernels.plstm.plan import (TRITON_MAX_NODES, TRITON_MAX_REGISTERS,
                                         plan_plstm_2d_triton, triton_2d_registers)
from tests.helpers import assert_close
from tests.kernels.plstm_cases import grid_as_dag, grid_problem

NAMES = ("q", "k", "v", "source", "transition", "mark", "direct")
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (tests/conftest.py sets it without CUDA)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _problem(B, X, Y, H, K, V, mode, seed):
    """A float64 grid problem with P-mode ("p"), D-mode ("dL"/"dR") or free ("free")
    transitions; "zero" zeroes a few transitions exactly."""
    p = grid_problem(B, X, Y, H, K, V, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    shape = (B, X, Y, H)
    with torch.no_grad():
        if mode == "p":
            orient, decay = torch.rand(*shape, generator=g), torch.rand(*shape, generator=g)
            p["transition"].copy_(p_mode_2d(orient.double(), decay.double()))
        elif mode in ("dL", "dR"):
            pre = [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(3)]
            p["transition"].copy_(d_mode_2d(*pre, chirality=mode[1]))
        elif mode == "zero":
            p["transition"][:, 1, 2, :, 0, 0] = 0.0
            p["transition"][:, 3, :, :, 1, 1] = 0.0
    return p


def _grads(out, inputs):
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    return torch.autograd.grad(out, inputs, do.to(out.device, out.dtype), allow_unused=True,
                               materialize_grads=True)


def _dag_ref(p64):
    B, X, Y, H, _ = p64["q"].shape
    args, kw = grid_as_dag(p64)
    return plstm_dag(*args, **kw).reshape(B, X, Y, H, -1)


# (X, Y, tile, mode, K, V): V = 20 runs two V blocks of 16 (dq, dk and the gate gradients are
# summed over them); K = 3 and 5 are not powers of two; K = 20 takes two steps of the backward's
# 16 K columns, the second partial
GRAD_CASES = [(5, 7, (2, 4), "p", 4, 20), (5, 7, (4, 2), "dL", 3, 6), (6, 5, (4, 4), "dR", 4, 5),
              (3, 9, (2, 8), "free", 5, 4), (5, 6, (4, 2), "zero", 4, 6),
              (3, 5, (2, 4), "p", 20, 20)]


@needs_triton
@pytest.mark.parametrize("X,Y,tile,mode,K,V", GRAD_CASES, ids=str)
def test_forward_and_gradients_equal_dag(X, Y, tile, mode, K, V, nan_poison_empty):
    """Forward kernel and backward kernels (triton_2d_bwd's five launches + the coefficient
    gradients) against plstm_dag's autograd in float64, every input's gradient; every buffer
    the kernels allocate starts as NaN."""
    p64 = _problem(1, X, Y, 2, K, V, mode, seed=X * Y)
    p32 = {n: t.detach().float().to(DEVICE).requires_grad_() for n, t in p64.items()}
    out = plstm_2d(*(p32[n] for n in NAMES), tile=tile, backend="triton")
    ref = _dag_ref(p64)
    assert_close("o", out, ref, 1e-5)
    grads = _grads(out, [p32[n] for n in NAMES])
    for name, g, g_ref in zip(NAMES, grads, _grads(ref, [p64[n] for n in NAMES])):
        assert_close(f"d{name}", g, g_ref, 1e-5)


@needs_triton
def test_backward_runs_the_triton_kernel(monkeypatch):
    """The gradients come from the backward kernels (coefficients, adjoint walk, the tiles' own
    terms, their mark reads, their leaving edges), not a PyTorch recompute of the outputs; the
    tile kernels run one program per (tile, V block, batch row x head)."""
    from flashseq.kernels.plstm import parallel, triton_2d_bwd
    names = ("plstm2d_coef_kernel", "plstm2d_bwd_walk_kernel", "plstm2d_bwd_kernel",
             "plstm2d_bwd_mark_kernel", "plstm2d_bwd_leaving_kernel")
    launches = []

    class Spy:
        def __init__(self, name):
            self.name, self.kernel = name, getattr(triton_2d_bwd, name)

        def __getitem__(self, grid):
            launches.append((self.name, tuple(grid)))
            return self.kernel[grid]

    def no_tiled_form(*args, **kwargs):
        raise AssertionError("the Triton backward recomputed the PyTorch tiled form")

    for name in names:
        monkeypatch.setattr(triton_2d_bwd, name, Spy(name))
    monkeypatch.setattr(parallel, "plstm_2d_tiled", no_tiled_form)
    # 3 x 3 grid, tile 2 x 2: 2 x 2 tiles; V = 20: two V blocks of 16
    p = {n: t.detach().float().to(DEVICE).requires_grad_()
         for n, t in _problem(1, 3, 3, 1, 2, 20, "p", seed=1).items()}
    out = plstm_2d(*(p[n] for n in NAMES), tile=(2, 2), backend="triton")
    out.sum().backward()
    assert launches == [(names[0], (4, 1)), (names[1], (2, 1)), (names[2], (4, 2, 1)),
                        (names[3], (4, 2, 1)), (names[4], (4, 2, 1))]
    assert all(p[n].grad is not None and torch.isfinite(p[n].grad).all() for n in NAMES)


@needs_triton
def test_float16_forward_and_gradients():
    p64 = _problem(1, 5, 3, 2, 8, 8, "dL", seed=11)
    p16 = {n: t.detach().to(DEVICE, torch.float16).requires_grad_() for n, t in p64.items()}
    out = plstm_2d(*(p16[n] for n in NAMES), tile=(2, 2), backend="triton")
    assert out.dtype == torch.float16
    # the reference sees the same (float16-rounded) inputs, in float64
    p_ref = {n: t.detach().double().requires_grad_() for n, t in p16.items()}
    ref = _dag_ref(p_ref)
    assert_close("o", out, ref, 1e-2)
    grads = _grads(out, [p16[n] for n in NAMES])
    for name, g, g_ref in zip(NAMES, grads, _grads(ref, [p_ref[n] for n in NAMES])):
        assert g.dtype == torch.float16
        assert_close(f"d{name}", g, g_ref, 1e-2)


@needs_triton
@pytest.mark.parametrize("tile", [(2, 4), (4, 4), (1, 2)], ids=str)
def test_poisoned_output_and_scratch_are_overwritten(tile):
    """Every output element, every edge-state slot and every coefficient the kernel reads is
    written first (the kernel walks the K rows of the edge states one at a time)."""
    from flashseq.kernels.plstm.triton_2d import coef_shape, kernel_meta, plstm_2d_triton_fwd
    B, X, Y, H, K, V = 1, 5, 7, 2, 16, 20
    p64 = _problem(B, X, Y, H, K, V, "p", seed=3)
    args = [p64[n].detach().float().to(DEVICE) for n in NAMES]
    meta = kernel_meta(tile, K, V, BV=16)
    slots = -(-Y // meta["BY"]) * meta["BY"] + meta["BX"]
    out = torch.full((B, X, Y, H, V), float("nan"), device=DEVICE)
    scratch = torch.full((B * H, slots, K, V), float("nan"), device=DEVICE)
    coef = torch.full(coef_shape(meta, B * H, V), float("nan"), device=DEVICE)
    o = plstm_2d_triton_fwd(*args, K ** -0.5, tile, BV=16, out=out, scratch=scratch, coef=coef)
    assert o.data_ptr() == out.data_ptr()
    assert not torch.isnan(o).any()
    assert_close("o", o, _dag_ref(p64), 1e-5)


@needs_triton
def test_planned_tile_and_bfloat16():
    p64 = _problem(1, 6, 6, 2, 16, 16, "p", seed=5)
    pb = {n: t.detach().to(DEVICE, torch.bfloat16) for n, t in p64.items()}
    out = plstm_2d(*(pb[n] for n in NAMES), backend="triton")
    assert out.dtype == torch.bfloat16
    ref = plstm_2d(*(pb[n].double() for n in NAMES), backend="torch")
    assert_close("o", out, ref, 1e-2)


def test_float64_with_triton_backend_warns_and_uses_pytorch():
    p = {n: t.detach() for n, t in grid_problem(1, 3, 4, 1, 4, 4).items()}
    with pytest.warns(UserWarning, match="plstm_2d: the Triton back end serves"):
        out = plstm_2d(*(p[n] for n in NAMES), backend="triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = plstm_2d(*(p[n] for n in NAMES), backend="torch")
    assert torch.equal(out, ref)


def test_unknown_backend():
    p = {n: t.detach() for n, t in grid_problem(1, 2, 2, 1, 2, 2).items()}
    with pytest.raises(ValueError, match="backend must be 'auto', 'torch' or 'triton'"):
        plstm_2d(*(p[n] for n in NAMES), backend="cuda")


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("X,K", [(32, 64), (64, 64), (128, 64), (7, 16), (128, 128)])
def test_triton_plan_fits_registers_and_tl_dot(X, K, dtype):
    plan = plan_plstm_2d_triton(X, X, K, K, 64, "cuda", dtype)
    assert plan.BY in (16, 32), plan                # every sweep product is a tl.dot
    assert plan.BX * plan.BY <= TRITON_MAX_NODES
    assert plan.registers_per_thread == triton_2d_registers(plan.BX, plan.BY, K, dtype=dtype)
    assert plan.registers_per_thread <= TRITON_MAX_REGISTERS
    # float32 (tl.dot "ieee", FMA loops on sm_80) runs 4 warps: 8 spilled there
    assert plan.num_warps == (4 if dtype == "float32" else 8)
