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
                                      request):
    check_against_reference(cell_name, 2, 3, NH, DH, dtype, use_lengths, expect_path="fused",
                            seed=_seed(request.node.callspec.id))


def _slice_budget(cell_name, DH, dtype):
    # weight bytes of the smallest split slice (16 columns of every gate): the plan then splits
    DHP = max(16, 1 << (DH - 1).bit_length())
    return get_cell(cell_name).num_gates * DHP * 16 * torch.finfo(dtype).bits // 8


@pytest.mark.parametrize("path", ["split", "stepwise"])
@pytest.mark.parametrize("cell_name", CELL_NAMES)
def test_split_head_paths_match_reference(cell_name, path, nan_poison_empty, request):
    """A tiny on-chip budget forces a head over several programs: "split" (one slice of 16
    units per program, weights on chip; under the interpreter launched per step, i.e. without
    the GPU barrier) or "stepwise" (budget 1: nothing on chip). DH 40 -> 3 programs per head,
    the last one partial; B = 3, lengths on."""
    budget = _slice_budget(cell_name, 40, torch.float32) if path == "split" else 1
    check_against_reference(cell_name, 3, 3, 2, 40, torch.float32, True,
                            max_onchip_bytes=budget, expect_path=path,
                            seed=_seed(request.node.callspec.id))


@pytest.mark.parametrize("path", ["split", "stepwise"])
@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_split_kernels_streaming_weights(cell_name, path, monkeypatch, nan_poison_empty):
    """BK < DHP: the split kernels stream the weights in [BK, BH] chunks (a reduction loop over
    3 chunks of 16 for DH 40) instead of holding them; forced by editing the plan's BK."""
    from flashseq.kernels.fused_rnn import triton_function

    planned = triton_function.plan_tiles

    def plan_with_small_bk(cell, wx, max_onchip_bytes=None):
        return dataclasses.replace(planned(cell, wx, max_onchip_bytes), BK=16)

    monkeypatch.setattr(triton_function, "plan_tiles", plan_with_small_bk)
    budget = _slice_budget(cell_name, 40, torch.float32) if path == "split" else 1
    check_against_reference(cell_name, 2, 3, 1, 40, torch.float32, True, max_onchip_bytes=budget,
                            expect_path=path, seed=_seed(f"{cell_name}-{path}-bk16"))


def test_split_path_fp16(nan_poison_empty):
    check_against_reference("slstm", 2, 3, 1, 24, torch.float16, True,
                            max_onchip_bytes=_slice_budget("slstm", 24, torch.float16),
                            expect_path="split", seed=11)


@pytest.mark.parametrize("DH", [1, 5, 24], ids=lambda d: f"DH{d}")
@pytest.mark.parametrize("cell_name", CELL_NAMES)
def test_odd_head_sizes_and_single_step(cell_name, DH, nan_poison_empty):
    # DH not a power of two (padded internally), B = 3 not a multiple of anything, T = 1
    check_against_reference(cell_name, 3, 1, 2, DH, torch.float32, False, expect_path="fused",
                            seed=DH)


@pytest.mark.parametrize("path", ["fused", "split", "stepwise"])
def test_public_entry_no_grad_and_default_states(path, monkeypatch):
    """backend="triton" through fused_rnn: states=None, int32 lengths on the CPU, no grad (the
    kernels then store nothing for the backward; split heads ping-pong 2 state slots)."""
    from flashseq.kernels.fused_rnn import triton_function

    budget = {"fused": None, "split": _slice_budget("slstm", 32, torch.float32), "stepwise": 1}[path]
    planned = triton_function.plan_tiles
    monkeypatch.setattr(triton_function, "plan_tiles",
                        lambda cell, wx, _=None: planned(cell, wx, budget))
    assert planned(get_cell("slstm"), torch.empty(2, 5, 4, 2, 32), budget).path == path
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
@pytest.mark.parametrize("path", ["planned", "split", "stepwise"])
@pytest.mark.parametrize("cell_name", CELL_NAMES)
def test_gpu_odd_sizes(cell_name, path):
    """DH 100 (padded to 128), B = 37 (several batch tiles, partial last), T = 33, every path;
    "split" runs one launch with the atomic per-step barrier among a head's programs."""
    budget = {"planned": None, "split": _slice_budget(cell_name, 100, torch.float32),
              "stepwise": 1}[path]
    check_against_reference(cell_name, 37, 33, 3, 100, torch.float32, True,
                            max_onchip_bytes=budget, seed=_seed(cell_name), device="cuda",
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
