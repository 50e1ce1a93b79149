"""Triton fused_rnn kernels vs the float64 reference: forward and every gradient.

On CPU the kernels run under TRITON_INTERPRET=1 (set by conftest before triton is imported), on
tiny shapes; ``-m gpu`` runs the same checks at real sizes, bf16 included. Compile-to-GPU-target
checks live in test_fused_rnn_triton_compile.py.
"""
import dataclasses
import os
import zlib

import pytest
import torch

from flashseq.cells import CELLS, get_cell
from flashseq.kernels.fused_rnn import fused_rnn
from flashseq.kernels.fused_rnn.reference import fused_rnn_reference
from tests.conftest import HAS_CUDA
from tests.helpers import TOLERANCE, assert_close, make_rnn_inputs, random_lengths, rel_err

pytestmark = pytest.mark.skipif(
    not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1")

DEVICE = "cuda" if HAS_CUDA else "cpu"
GRAD_NAMES = ("wx", "r", "b", "states")


def _seed(case_id: str) -> int:
    return zlib.crc32(case_id.encode())


def _run_and_grad(fn, inputs, dh, dlast, lengths):
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    h, last = fn(*inputs, lengths)
    loss = (h.double() * dh).sum() + (last.double() * dlast).sum()
    loss.backward()
    return h, last, [x.grad for x in inputs]


def force_plan(monkeypatch, path, **fields):
    """Make the launchers run ``path`` whatever the plan prefers (the plan evolves; these tests
    are about the kernels): the plan's own tiles, with BH/BK set for the path unless given."""
    from flashseq.kernels.fused_rnn import triton_function

    planned = triton_function.plan_tiles

    def forced(cell, wx, max_onchip_bytes=None):
        plan = planned(cell, wx, max_onchip_bytes)
        DHP = plan.padded_head_dim
        tiles = dict(BH=DHP if path == "fused" else 16, BK=DHP)
        tiles.update(fields)
        return dataclasses.replace(plan, path=path, **tiles)

    monkeypatch.setattr(triton_function, "plan_tiles", forced)


def check_against_reference(cell_name, B, T, NH, DH, dtype, use_lengths, *, max_onchip_bytes=None,
                            tol=None, seed=0, device=DEVICE, expect_path=None):
    """Run the Triton kernels and the float64 reference on the same fresh random inputs with
    random upstream gradients; compare h, last_states and the gradients of wx, r, b, states."""
    from flashseq.kernels.fused_rnn.triton_function import fused_rnn_triton, plan_tiles

    cell = get_cell(cell_name)
    wx, r, b, states = make_rnn_inputs(cell, B, T, NH, DH, seed=seed, device=device)
    lengths = random_lengths(B, T, seed=seed).to(device) if use_lengths else None
    g = torch.Generator().manual_seed(seed + 1)
    dh = torch.randn(B, T, NH, DH, generator=g, dtype=torch.float64).to(device)
    dlast = torch.randn(cell.num_states, B, NH, DH, generator=g, dtype=torch.float64).to(device)
    if use_lengths:  # h past a row's length is a constant 0; its gradient must not matter
        dh = dh.masked_fill(torch.arange(T, device=device)[None, :, None, None]
                            >= lengths[:, None, None, None], 0.0)
    ref = _run_and_grad(lambda *a: fused_rnn_reference(*a[:4], cell=cell, lengths=a[4]),
                        (wx, r, b, states), dh, dlast, lengths)
    low = [x.to(dtype) for x in (wx, r, b, states)]
    if expect_path is not None:
        assert plan_tiles(cell, low[0], max_onchip_bytes).path == expect_path
    out = _run_and_grad(lambda *a: fused_rnn_triton(*a[:4], cell=cell, lengths=a[4],
                                                    max_onchip_bytes=max_onchip_bytes),
                        low, dh, dlast, lengths)
    tol = TOLERANCE[dtype] if tol is None else tol
    assert out[0].dtype == dtype and out[1].dtype == dtype
    assert_close("h", out[0], ref[0], tol)
    assert_close("last_states", out[1], ref[1], tol)
    for name, got, want in zip(GRAD_NAMES, out[2], ref[2]):
        assert got.dtype == dtype, f"d{name} dtype {got.dtype}"
        assert_close(f"d{name}", got, want, tol)


# ---------------------------------------------------------------- CPU interpreter, tiny shapes
CELL_NAMES = sorted(CELLS)
CPU_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", CPU_DTYPES.values(), ids=CPU_DTYPES.keys())
@pytest.mark.parametrize("DH", [16, 32, 64], ids=lambda d: f"DH{d}")
@pytest.mark.parametrize("NH", [1, 2], ids=lambda n: f"NH{n}")
@pytest.mark.parametrize("cell_name", CELL_NAMES)
def test_fused_path_matches_reference(cell_name, NH, DH, dtype, use_lengths, nan_poison_empty,
                                      monkeypatch, request):
    force_plan(monkeypatch, "fused")
    check_against_reference(cell_name, 2, 3, NH, DH, dtype, use_lengths, expect_path="fused",
                            seed=_seed(request.node.callspec.id))


@pytest.mark.parametrize("path", ["split", "stepwise"])
@pytest.mark.parametrize("cell_name", CELL_NAMES)
def test_split_head_paths_match_reference(cell_name, path, monkeypatch, nan_poison_empty, request):
    """A head over several programs of 16 units: "split" (weights on chip; under the
    interpreter launched once per step, i.e. without the GPU barrier) or "stepwise" (the plan's
    answer to a 1-byte on-chip budget). DH 40 -> 3 programs per head, the last one partial;
    B = 3, lengths on."""
    if path == "split":
        force_plan(monkeypatch, "split")
    check_against_reference(cell_name, 3, 3, 2, 40, torch.float32, True,
                            max_onchip_bytes=1 if path == "stepwise" else None,
                            expect_path=path, seed=_seed(request.node.callspec.id))


@pytest.mark.parametrize("path", ["split", "stepwise"])
@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_split_kernels_streaming_weights(cell_name, path, monkeypatch, nan_poison_empty):
    """BK < DHP: the split kernels stream the weights in [BK, BH] chunks (a reduction loop over
    3 chunks of 16 for DH 40) instead of holding them."""
    force_plan(monkeypatch, path, BK=16)
    check_against_reference(cell_name, 2, 3, 1, 40, torch.float32, True, expect_path=path,
                            seed=_seed(f"{cell_name}-{path}-bk16"))


def test_split_path_fp16(monkeypatch, nan_poison_empty):
    force_plan(monkeypatch, "split")
    check_against_reference("slstm", 2, 3, 1, 24, torch.float16, True, expect_path="split",
                            seed=11)


def test_tiny_onchip_budget_plans_stepwise():
    from flashseq.kernels.fused_rnn.triton_function import plan_tiles

    for name in CELL_NAMES:
        plan = plan_tiles(get_cell(name), torch.empty(2, 3, 4, 2, 24), max_onchip_bytes=1)
        assert plan.path == "stepwise" and plan.reason


@pytest.mark.parametrize("DH", [1, 5, 24], ids=lambda d: f"DH{d}")
@pytest.mark.parametrize("cell_name", CELL_NAMES)
def test_odd_head_sizes_and_single_step(cell_name, DH, nan_poison_empty):
    # DH not a power of two (padded internally), B = 3 not a multiple of anything, T = 1,
    # whichever path the plan picks
    check_against_reference(cell_name, 3, 1, 2, DH, torch.float32, False, seed=DH)


@pytest.mark.parametrize("path", ["fused", "split", "stepwise"])
def test_public_entry_no_grad_and_default_states(path, monkeypatch):
    """backend="triton" through fused_rnn: states=None, int32 lengths on the CPU, no grad (the
    kernels then store nothing for the backward; split heads ping-pong 2 state slots)."""
    from flashseq.kernels.fused_rnn import triton_function

    force_plan(monkeypatch, path)
    assert triton_function.plan_tiles(get_cell("slstm"), torch.empty(2, 5, 4, 2, 32)).path == path
    cell = get_cell("slstm")
    wx, r, b, _ = make_rnn_inputs(cell, 2, 5, 2, 32, seed=3, device=DEVICE)
    lengths = torch.tensor([5, 2], dtype=torch.int32)
    zeros = wx.new_zeros(4, 2, 2, 32)
    ref_h, ref_last = fused_rnn_reference(wx, r, b, zeros, cell=cell,
                                          lengths=lengths.to(DEVICE, torch.int64))
    with torch.no_grad():
        h, last = fused_rnn(wx.float(), r.float(), b.float(), cell="slstm", lengths=lengths,
                            backend="triton")
    assert_close("h", h, ref_h, TOLERANCE[torch.float32])
    assert_close("last_states", last, ref_last, TOLERANCE[torch.float32])


def test_gradient_only_through_last_states(nan_poison_empty):
    """Only last_states used: autograd passes dh = None, the Function supplies zeros."""
    from flashseq.kernels.fused_rnn.triton_function import fused_rnn_triton

    cell = get_cell("gru")
    wx, r, b, states = make_rnn_inputs(cell, 2, 3, 1, 16, seed=5, device=DEVICE)
    got = [x.float().requires_grad_() for x in (wx, r, b, states)]
    want = [x.clone().requires_grad_() for x in (wx, r, b, states)]
    fused_rnn_triton(*got, cell=cell)[1].sum().backward()
    fused_rnn_reference(*want, cell=cell)[1].sum().backward()
    for name, x, y in zip(GRAD_NAMES, got, want):
        assert_close(f"d{name}", x.grad, y.grad, TOLERANCE[torch.float32])


def test_custom_ops_trace_under_torch_compile():
    """The kernels sit in torch.library custom ops with fake implementations, so torch.compile
    traces FusedRNNTritonFunction in one graph (aot_eager: no C++ compiler needed)."""
    from flashseq.kernels.fused_rnn.triton_function import fused_rnn_triton

    cell = get_cell("lstm")
    inputs = make_rnn_inputs(cell, 2, 3, 1, 16, seed=7, device=DEVICE)
    wx, r, b, states = (x.float() for x in inputs)
    lengths = torch.tensor([3, 1], device=DEVICE)

    def loss(wx, r, b, states):
        h, last = fused_rnn_triton(wx, r, b, states, cell="lstm", lengths=lengths)
        return h.sum() + last.sum()

    got = [x.clone().requires_grad_() for x in (wx, r, b, states)]
    want = [x.double().requires_grad_() for x in (wx, r, b, states)]
    torch.compile(loss, backend="aot_eager", fullgraph=True)(*got).backward()
    h, last = fused_rnn_reference(*want, cell=cell, lengths=lengths)
    (h.sum() + last.sum()).backward()
    for name, x, y in zip(GRAD_NAMES, got, want):
        assert_close(f"d{name}", x.grad, y.grad, TOLERANCE[torch.float32])


def test_float64_is_refused_with_a_reason():
    from flashseq.kernels.fused_rnn import triton as backend
    from flashseq.kernels.fused_rnn.problem import validate

    cell = get_cell("lstm")
    wx, r, b, states = make_rnn_inputs(cell, 2, 2, 1, 8, device=DEVICE)
    reason = backend.unsupported_reason(validate(wx, r, b, states, "lstm", None))
    assert reason is not None and "float64" in reason
    with pytest.raises(NotImplementedError, match="float64"):
        fused_rnn(wx, r, b, states, cell="lstm", backend="triton")


def test_cpu_without_interpreter_is_unavailable(monkeypatch):
    from flashseq.kernels.fused_rnn import triton as backend

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = backend.unavailable_reason(torch.device("cpu"))
    assert reason is not None and "TRITON_INTERPRET=1" in reason


# ---------------------------------------------------------------- GPU, real sizes
GPU_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _gpu_tolerance(cell_name, B, T, NH, DH, dtype, seed):
    """The dtype bound, or twice what the reference itself loses at this dtype over T steps
    (long bf16 recurrences drift beyond 1e-2 in any implementation)."""
    if dtype == torch.float32:
        return TOLERANCE[dtype]
    cell = get_cell(cell_name)
    wx, r, b, states = make_rnn_inputs(cell, B, T, NH, DH, seed=seed, device="cuda")
    h64, _ = fused_rnn_reference(wx, r, b, states, cell=cell)
    h_low, _ = fused_rnn_reference(*(x.to(dtype) for x in (wx, r, b, states)), cell=cell)
    return max(TOLERANCE[dtype], 2 * rel_err(h_low, h64))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES.values(), ids=GPU_DTYPES.keys())
@pytest.mark.parametrize("DH", [16, 32, 64, 128, 192, 256, 384, 768], ids=lambda d: f"DH{d}")
@pytest.mark.parametrize("cell_name", CELL_NAMES)
def test_gpu_headwise_768(cell_name, DH, dtype):
    """H = 768 as NH x DH for every head size, B = 16, T = 64, lengths on."""
    B, T, NH = 16, 64, 768 // DH
    seed = _seed(f"{cell_name}-{DH}-{dtype}")
    tol = _gpu_tolerance(cell_name, B, T, NH, DH, dtype, seed)
    check_against_reference(cell_name, B, T, NH, DH, dtype, True, tol=tol, seed=seed,
                            device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["planned", "fused", "split", "stepwise"])
@pytest.mark.parametrize("cell_name", CELL_NAMES)
def test_gpu_odd_sizes(cell_name, path, monkeypatch):
    """DH 100 (padded to 128), B = 37 (several batch tiles, partial last), T = 33, every path;
    "split" runs one launch with the atomic per-step barrier among a head's programs (or, if
    the grid is not co-resident, per-step launches with a warning)."""
    if path != "planned":
        force_plan(monkeypatch, path)
    check_against_reference(cell_name, 37, 33, 3, 100, torch.float32, True,
                            seed=_seed(cell_name), device="cuda",
                            expect_path=None if path == "planned" else path)


@pytest.mark.gpu
@pytest.mark.parametrize("cell_name", CELL_NAMES)
def test_gpu_4096_units_run(cell_name):
    """NH * DH = 4096 (16 heads of 256) at bf16 runs forward and backward without failing."""
    from flashseq.kernels.fused_rnn.triton_function import fused_rnn_triton

    cell = get_cell(cell_name)
    wx, r, b, states = make_rnn_inputs(cell, 8, 16, 16, 256, dtype=torch.bfloat16, device="cuda")
    inputs = [x.requires_grad_() for x in (wx, r, b, states)]
    h, last = fused_rnn_triton(*inputs, cell=cell)
    (h.float().sum() + last.float().sum()).backward()
    for x in (h, last, *(t.grad for t in inputs)):
        assert torch.isfinite(x).all()
