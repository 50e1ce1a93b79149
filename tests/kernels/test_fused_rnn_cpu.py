"""backend="cpu" (the compiled C++ loop) against the float64 reference: forward, every gradient,
lengths, initial states, gradcheck, dtype fallback, non-contiguous inputs and torch.compile."""
import pytest
import torch

import flashseq
from flashseq.cells import CELLS
from flashseq.kernels.fused_rnn import backends
from flashseq.kernels.fused_rnn import cpu as cpu_backend
from flashseq.kernels.fused_rnn.reference import fused_rnn_reference
from tests.helpers import (TOLERANCE, assert_close, cpu_has_avx512_tile, make_rnn_inputs,
                           random_lengths)

CELL_NAMES = sorted(CELLS)


def test_extension_is_available():
    """The extension must load or build here; the other tests then fail rather than skip."""
    assert cpu_backend.unavailable_reason(torch.device("cpu")) is None
    assert cpu_backend._layout("lstm") == (4, 2, 4)


def run_and_grad(fn, inputs, grad_h, grad_last, **kwargs):
    """fn(*inputs, **kwargs) -> (h, last_states) and the gradients of
    sum(h*grad_h) + sum(last*grad_last) w.r.t. each input (fresh leaves, inputs untouched)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    h, last = fn(*leaves, **kwargs)
    loss = (h * grad_h).sum() + (last * grad_last).sum()
    return h.detach(), last.detach(), torch.autograd.grad(loss, leaves)


def check_against_reference(cell, dtype, B, T, NH, DH, with_lengths, with_states, seed):
    wx, r, b, states = make_rnn_inputs(cell, B, T, NH, DH, dtype=torch.float64,
                                       with_states=with_states, seed=seed)
    lengths = random_lengths(B, T, seed=seed) if with_lengths else None
    gen = torch.Generator().manual_seed(seed + 1)
    grad_h = torch.randn(B, T, NH, DH, generator=gen, dtype=torch.float64)
    grad_last = torch.randn(cell.num_states, B, NH, DH, generator=gen, dtype=torch.float64)
    # The reference always gets explicit states; None means zeros (m = 0 too).
    ref_states = states if states is not None else torch.zeros(cell.num_states, B, NH, DH,
                                                                dtype=torch.float64)
    h_ref, last_ref, grads_ref = run_and_grad(
        fused_rnn_reference, (wx, r, b, ref_states), grad_h, grad_last, cell=cell, lengths=lengths)

    inputs = [t.to(dtype) for t in (wx, r, b)] + ([states.to(dtype)] if states is not None else [])
    fn = lambda *ts: flashseq.ops.fused_rnn(*ts, cell=cell.name, lengths=lengths, backend="cpu")
    h, last, grads = run_and_grad(fn, inputs, grad_h.to(dtype), grad_last.to(dtype))
    tol = TOLERANCE[dtype] if dtype != torch.float64 else 1e-12
    assert h.dtype == dtype and last.dtype == dtype
    assert_close("h", h, h_ref, tol)
    assert_close("last_states", last, last_ref, tol)
    for name, g, g_ref in zip(("d_wx", "d_r", "d_b", "d_states"), grads, grads_ref):
        assert_close(name, g, g_ref, tol)
    if lengths is not None:  # outputs past a row's length are exactly zero
        past = torch.arange(T)[None, :] >= lengths[:, None]
        assert (h[past] == 0).all()


@pytest.mark.parametrize("with_states", [True, False], ids=["states", "no_states"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("NH", [1, 3], ids=lambda n: f"NH{n}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("cell_name", CELL_NAMES)
def test_matches_reference(cell_name, dtype, NH, with_lengths, with_states):
    check_against_reference(CELLS[cell_name], dtype, B=3, T=7, NH=NH, DH=5,
                            with_lengths=with_lengths, with_states=with_states, seed=11)


@pytest.mark.parametrize("cell_name", CELL_NAMES)
@pytest.mark.parametrize("shape", [(3, 1, 2, 5), (1, 9, 1, 1), (4, 5, 1, 16)],
                         ids=["T1", "B1_DH1", "DH16"])
def test_odd_shapes(cell_name, shape):
    B, T, NH, DH = shape
    check_against_reference(CELLS[cell_name], torch.float32, B, T, NH, DH,
                            with_lengths=B > 2, with_states=True, seed=5)


@pytest.fixture(params=["own_gemm", "aten_gemm", "mixed"])
def step_gemm_path(request):
    """Runs the test with each per-step GEMM: the built-in one (used up to a batch threshold),
    ATen/MKL's (used above it), whatever the batch size, and a threshold of 4 rows, which mixes
    both as the live rows of a ragged batch shrink."""
    ext = cpu_backend._jit.extension()
    max_batch = {"own_gemm": 1 << 30, "aten_gemm": 0, "mixed": 4}[request.param]
    old = ext._set_step_gemm_max_batch(max_batch)
    yield request.param
    ext._set_step_gemm_max_batch(old)


@pytest.mark.parametrize("NH", [1, 3], ids=lambda n: f"NH{n}")
@pytest.mark.parametrize("cell_name", CELL_NAMES)
def test_both_step_gemm_paths(cell_name, NH, step_gemm_path):
    # DH=37: 4*37 columns leave a ragged tail after the built-in GEMM's column tiles.
    check_against_reference(CELLS[cell_name], torch.float32, B=5, T=4, NH=NH, DH=37,
                            with_lengths=True, with_states=True, seed=21)


@pytest.mark.parametrize("NH", [1, 2], ids=lambda n: f"NH{n}")
@pytest.mark.parametrize("cell_name", CELL_NAMES)
def test_sorted_lengths_shrink_the_step_gemms(cell_name, NH, step_gemm_path):
    # A PackedSequence's rows come sorted by length, so the loops multiply only the live prefix
    # of rows at each step (9 rows down to 0, crossing the built-in/MKL threshold on the way).
    cell, B, T, DH = CELLS[cell_name], 9, 11, 6
    wx, r, b, states = make_rnn_inputs(cell, B, T, NH, DH, dtype=torch.float64, seed=3)
    lengths = torch.tensor([11, 11, 9, 7, 6, 4, 3, 1, 0])
    gen = torch.Generator().manual_seed(4)
    grad_h = torch.randn(B, T, NH, DH, generator=gen, dtype=torch.float64)
    grad_last = torch.randn(cell.num_states, B, NH, DH, generator=gen, dtype=torch.float64)
    ref = run_and_grad(fused_rnn_reference, (wx, r, b, states), grad_h, grad_last, cell=cell,
                       lengths=lengths)
    fn = lambda *ts: flashseq.ops.fused_rnn(*ts, cell=cell_name, lengths=lengths, backend="cpu")
    ours = run_and_grad(fn, (wx, r, b, states), grad_h, grad_last)
    names = ("h", "last_states", "d_wx", "d_r", "d_b", "d_states")
    for name, got, want in zip(names, [*ours[:2], *ours[2]], [*ref[:2], *ref[2]]):
        assert_close(name, got, want, 1e-12)


def test_float_tanh_of_the_loops_is_accurate():
    # The loops compute float tanh from one exp, with a series near 0 (csrc/cpu/vec_lanes.h).
    x = torch.cat([torch.linspace(-30, 30, 200_001), torch.logspace(-30, 1, 5_000),
                   -torch.logspace(-30, 1, 5_000), torch.tensor([0.0, 0.25, -0.25])])
    got = cpu_backend._jit.extension()._lanes_tanh(x).double()
    want = torch.tanh(x.double())
    rel = ((got - want).abs() / want.abs().clamp_min(1e-300))[want != 0]
    assert rel.max() < 1e-6, f"max relative error {rel.max():.3g} at x={x[want != 0][rel.argmax()]}"
    assert (got[want == 0] == 0).all()
    special = cpu_backend._jit.extension()._lanes_tanh(torch.tensor([float("inf"), -float("inf"),
                                                                    float("nan"), 1e30, -1e30]))
    assert special[:2].tolist() == [1.0, -1.0] and special[2].isnan()
    assert special[3:].tolist() == [1.0, -1.0]


@pytest.mark.parametrize("cell_name", CELL_NAMES)
def test_gradcheck(cell_name):
    cell = CELLS[cell_name]
    wx, r, b, states = make_rnn_inputs(cell, 3, 4, 2, 3, dtype=torch.float64, seed=3)
    lengths = torch.tensor([4, 0, 2])
    inputs = [t.requires_grad_() for t in (wx, r, b, states)]

    def fn(*ts):
        return flashseq.ops.fused_rnn(*ts, cell=cell_name, lengths=lengths, backend="cpu")

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_slstm_tie_gives_whole_gradient_to_forget_path():
    """lf + m_prev == i~ exactly: f~ = 1000 makes logsigmoid(f~) == 0, i~ = m_prev = 0.5."""
    cell = CELLS["slstm"]
    B, NH, DH = 2, 1, 3
    wx = torch.zeros(B, 1, 4, NH, DH, dtype=torch.float64)
    wx[:, :, 0] = 0.5
    wx[:, :, 1] = 1000.0
    wx[:, :, 2:] = torch.randn(B, 1, 2, NH, DH, dtype=torch.float64)
    r = torch.randn(4, NH, DH, DH, dtype=torch.float64)
    b = torch.zeros(4, NH, DH, dtype=torch.float64)
    states = torch.rand(4, B, NH, DH, dtype=torch.float64) + 0.5
    states[0] = 0.0   # h_prev = 0, so rh = b = 0 and i~ is exactly wx_i
    states[3] = 0.5   # m_prev
    grad_h = torch.randn(B, 1, NH, DH, dtype=torch.float64)
    grad_last = torch.randn(4, B, NH, DH, dtype=torch.float64)
    _, last_ref, grads_ref = run_and_grad(fused_rnn_reference, (wx, r, b, states), grad_h,
                                          grad_last, cell=cell, lengths=None)
    fn = lambda *ts: flashseq.ops.fused_rnn(*ts, cell="slstm", backend="cpu")
    _, last, grads = run_and_grad(fn, (wx, r, b, states), grad_h, grad_last)
    assert (last_ref[3] == 0.5).all()  # the tie really happened
    assert_close("last_states", last, last_ref, 1e-12)
    for name, g, g_ref in zip(("d_wx", "d_r", "d_b", "d_states"), grads, grads_ref):
        assert_close(name, g, g_ref, 1e-12)


@pytest.mark.parametrize("cell_name", ["lstm", "slstm"])
def test_non_contiguous_inputs(cell_name):
    cell = CELLS[cell_name]
    B, T, NH, DH = 3, 5, 2, 4
    S = cell.num_states
    wx, r, b, states = make_rnn_inputs(cell, B, T, NH, DH, dtype=torch.float32, seed=7)
    # Same values, other memory layouts: transposed storage and a strided slice.
    wx_nc = wx.permute(1, 0, 4, 3, 2).contiguous().permute(1, 0, 4, 3, 2)
    r_nc = r.transpose(2, 3).contiguous().transpose(2, 3)
    b_nc = torch.stack([b, b], dim=-1)[..., 0]
    states_nc = states.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)
    assert not any(t.is_contiguous() for t in (wx_nc, r_nc, b_nc, states_nc))
    grad_h = torch.randn(B, T, NH, DH)
    grad_last = torch.randn(S, B, NH, DH)
    fn = lambda *ts: flashseq.ops.fused_rnn(*ts, cell=cell_name, backend="cpu")
    h_ref, last_ref, grads_ref = run_and_grad(
        fused_rnn_reference, [t.double() for t in (wx, r, b, states)], grad_h.double(),
        grad_last.double(), cell=cell, lengths=None)
    # Non-contiguous upstream gradients too.
    grad_last_nc = grad_last.transpose(0, 1).contiguous().transpose(0, 1)
    h, last, grads = run_and_grad(fn, (wx_nc, r_nc, b_nc, states_nc), grad_h, grad_last_nc)
    assert_close("h", h, h_ref, TOLERANCE[torch.float32])
    assert_close("last_states", last, last_ref, TOLERANCE[torch.float32])
    for name, g, g_ref in zip(("d_wx", "d_r", "d_b", "d_states"), grads, grads_ref):
        assert_close(name, g, g_ref, TOLERANCE[torch.float32])


def test_inference_without_grad_matches():
    cell = CELLS["lstm"]
    wx, r, b, states = make_rnn_inputs(cell, 3, 6, 2, 5, dtype=torch.float32, seed=2)
    lengths = random_lengths(3, 6, seed=2)
    with torch.no_grad():
        h, last = flashseq.ops.fused_rnn(wx, r, b, states, cell="lstm", lengths=lengths, backend="cpu")
    h_ref, last_ref = fused_rnn_reference(*(t.double() for t in (wx, r, b, states)), cell=cell,
                                          lengths=lengths)
    assert_close("h", h, h_ref, TOLERANCE[torch.float32])
    assert_close("last_states", last, last_ref, TOLERANCE[torch.float32])


def test_only_last_states_used():
    """No gradient reaches h (only last_states is used): the backward gets dh = None."""
    cell = CELLS["gru"]
    wx, r, b, states = make_rnn_inputs(cell, 2, 4, 1, 3, dtype=torch.float64, seed=4)
    leaves = [t.clone().requires_grad_() for t in (wx, r, b, states)]
    _, last = flashseq.ops.fused_rnn(*leaves, cell="gru", backend="cpu")
    grads = torch.autograd.grad(last.sum(), leaves)
    ref_leaves = [t.clone().requires_grad_() for t in (wx, r, b, states)]
    _, last_ref = fused_rnn_reference(*ref_leaves, cell=cell)
    grads_ref = torch.autograd.grad(last_ref.sum(), ref_leaves)
    for name, g, g_ref in zip(("d_wx", "d_r", "d_b", "d_states"), grads, grads_ref):
        assert_close(name, g, g_ref, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_auto_falls_back_with_warning(dtype, monkeypatch):
    monkeypatch.setattr(backends, "_warned", set())  # the fallback warns once per process
    cell = CELLS["lstm"]
    wx, r, b, states = make_rnn_inputs(cell, 2, 3, 1, 4, dtype=dtype, seed=1)
    with pytest.warns(RuntimeWarning, match=r"falling back to backend 'reference'.*cpu: dtype"):
        h, last = flashseq.ops.fused_rnn(wx, r, b, states, cell="lstm", backend="auto")
    h_ref, last_ref = fused_rnn_reference(*(t.double() for t in (wx, r, b, states)), cell=cell)
    assert h.dtype == dtype
    assert_close("h", h, h_ref, TOLERANCE[dtype])
    assert_close("last_states", last, last_ref, TOLERANCE[dtype])


def test_half_precision_named_cpu_raises():
    wx, r, b, states = make_rnn_inputs(CELLS["lstm"], 2, 3, 1, 4, dtype=torch.float16, seed=1)
    with pytest.raises(NotImplementedError, match="float32 and float64 only"):
        flashseq.ops.fused_rnn(wx, r, b, states, cell="lstm", backend="cpu")


def test_auto_prefers_cpu_and_unavailable_extension_falls_back(monkeypatch):
    assert flashseq.ops.available_backends("cpu")[0] == "cpu"
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.setattr(cpu_backend._jit, "extension_error", lambda: "simulated build failure")
    wx, r, b, states = make_rnn_inputs(CELLS["elman"], 2, 3, 1, 4, dtype=torch.float32, seed=1)
    with pytest.warns(RuntimeWarning, match="simulated build failure"):
        flashseq.ops.fused_rnn(wx, r, b, states, cell="elman", backend="auto")
    with pytest.raises(NotImplementedError, match="simulated build failure"):
        flashseq.ops.fused_rnn(wx, r, b, states, cell="elman", backend="cpu")


def test_torch_compile_traces_cpu_backend():
    cell = CELLS["lstm"]
    wx, r, b, states = make_rnn_inputs(cell, 2, 4, 2, 3, dtype=torch.float32, seed=9)
    lengths = torch.tensor([4, 2])

    def loss_fn(wx, r, b, states):
        h, last = flashseq.ops.fused_rnn(wx, r, b, states, cell="lstm", lengths=lengths,
                                         backend="cpu")
        return (h * h).sum() + last[1].sum()

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=False)
    leaves = [t.clone().requires_grad_() for t in (wx, r, b, states)]
    loss = compiled(*leaves)
    grads = torch.autograd.grad(loss, leaves)
    ref_leaves = [t.double().requires_grad_() for t in (wx, r, b, states)]
    h_ref, last_ref = fused_rnn_reference(*ref_leaves, cell=cell, lengths=lengths)
    loss_ref = (h_ref * h_ref).sum() + last_ref[1].sum()
    grads_ref = torch.autograd.grad(loss_ref, ref_leaves)
    assert_close("loss", loss.detach().reshape(1), loss_ref.detach().reshape(1), 1e-5)
    for name, g, g_ref in zip(("d_wx", "d_r", "d_b", "d_states"), grads, grads_ref):
        assert_close(name, g, g_ref, 1e-5)


CELL_HEADERS_PROBE = r"""
#include "cells/elman.h"
#include "cells/gru.h"
#include "cells/lstm.h"
#include "cells/slstm.h"
using namespace flashseq::cells;
template <typename Cell, typename T>
__global__ void probe(const T* in, T* out) {
  T wx[Cell::kNumGates], rh[Cell::kNumGates], prev[Cell::kNumStates], next[Cell::kNumStates];
  T saved[Cell::kNumSaved > 0 ? Cell::kNumSaved : 1], dnext[Cell::kNumStates];
  T dwx[Cell::kNumGates], drh[Cell::kNumGates], dprev[Cell::kNumStates];
  for (int g = 0; g < Cell::kNumGates; ++g) { wx[g] = in[g]; rh[g] = in[4 + g]; }
  for (int s = 0; s < Cell::kNumStates; ++s) { prev[s] = in[8 + s]; dnext[s] = in[12 + s]; }
  Cell::forward(wx, rh, prev, next, saved);
  Cell::backward(saved, prev, next[0], dnext, dwx, drh, dprev);
  out[threadIdx.x] = next[0] + dwx[0] + drh[0] + dprev[0];
}
template __global__ void probe<LstmCell, float>(const float*, float*);
template __global__ void probe<GruCell, float>(const float*, float*);
template __global__ void probe<SlstmCell, float>(const float*, float*);
template __global__ void probe<ElmanCell, float>(const float*, float*);
template __global__ void probe<SlstmCell, double>(const double*, double*);
"""


@pytest.mark.nvcc
def test_cell_headers_compile_for_cuda_without_stack(tmp_path):
    """csrc/cells/ is shared with the CUDA kernels: it must compile under nvcc, and the
    pointer-to-array interface must stay in registers (no stack frame)."""
    import pathlib
    import subprocess

    csrc = pathlib.Path(cpu_backend._jit.CSRC_DIR)
    src = tmp_path / "cells_probe.cu"
    src.write_text(CELL_HEADERS_PROBE)
    result = subprocess.run(
        ["nvcc", "-std=c++17", "-arch=sm_80", f"-I{csrc}", "-Xptxas", "-v", "-c", str(src),
         "-o", str(tmp_path / "cells_probe.o")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    frames = [line for line in result.stderr.splitlines() if "stack frame" in line]
    assert len(frames) == 5, result.stderr
    assert all(line.strip().startswith("0 bytes stack frame") for line in frames), result.stderr


def test_cpu_backend_traces_as_one_graph():
    """The backend's own function (custom ops + autograd Function) compiles with fullgraph=True;
    the public entry point's dispatch is outside this file's scope."""
    cell = CELLS["slstm"]
    wx, r, b, states = make_rnn_inputs(cell, 2, 3, 1, 4, dtype=torch.float64, seed=8)
    lengths = torch.tensor([3, 1])

    def loss_fn(wx, r, b, states):
        h, last = cpu_backend.fused_rnn(wx, r, b, states, cell=cell, lengths=lengths)
        return h.sum() + (last * last).sum()

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (wx, r, b, states)]
    grads = torch.autograd.grad(compiled(*leaves), leaves)
    ref_leaves = [t.clone().requires_grad_() for t in (wx, r, b, states)]
    h_ref, last_ref = fused_rnn_reference(*ref_leaves, cell=cell, lengths=lengths)
    grads_ref = torch.autograd.grad(h_ref.sum() + (last_ref * last_ref).sum(), ref_leaves)
    for name, g, g_ref in zip(("d_wx", "d_r", "d_b", "d_states"), grads, grads_ref):
        assert_close(name, g, g_ref, 1e-12)


@pytest.fixture(params=[
    pytest.param("avx512_tile", marks=pytest.mark.skipif(
        cpu_backend.unavailable_reason(torch.device("cpu")) is not None
        or not cpu_has_avx512_tile(), reason="this CPU or build has no AVX-512 step GEMM tile")),
    "avx2_tile"])
def float_tile(request):
    """Runs the test with float32 step GEMMs on the AVX-512 tile and on the AVX2 one."""
    ext = cpu_backend._jit.extension()
    old = ext._set_avx512_tile(request.param == "avx512_tile")
    yield request.param
    ext._set_avx512_tile(old)


@pytest.mark.parametrize("B", [1, 2, 13], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_both_float_step_gemm_tiles(cell_name, B, float_tile):
    # DH=37: 4*37 = 148 gate columns = 3 AVX-512 panels of 48 and a tail of 4 (9 AVX2 panels and
    # a tail); B=13 = one 8-row tile + a 5-row one; K=37 leaves a k remainder after the 2- and
    # 3-way k splits of the 1- and 2-row tiles. Forward and backward both run the tile.
    check_against_reference(CELLS[cell_name], torch.float32, B=B, T=4, NH=2, DH=37,
                            with_lengths=B > 2, with_states=True, seed=23)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("NH", [1, 2], ids=lambda n: f"NH{n}")
@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_weight_gradient_over_many_rows(cell_name, NH, with_lengths):
    # B*T = 600 (batch, step) rows against DH=37: float32 d(r) and d(b) take the blocked
    # AVX-512 product where the CPU has it (two k-blocks of at most 512 rows; with lengths the
    # blocks cover each row's valid steps only); 148 gate columns = 3 panels of 48 and a tail
    # of 4. The LSTM with one head also stores d(wx) once and reads it back as d(rh).
    check_against_reference(CELLS[cell_name], torch.float32, B=6, T=100, NH=NH, DH=37,
                            with_lengths=with_lengths, with_states=True, seed=29)


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
@pytest.mark.parametrize("DH", [20, 50], ids=lambda d: f"DH{d}")
def test_paired_pointwise_tails(cell_name, DH):
    """The AVX-512 pointwise passes run 32 units at a time (two vectors) and a last 16: DH=20
    leaves a pair whose second vector is partly masked, DH=50 a full pair then a partial one."""
    check_against_reference(CELLS[cell_name], torch.float32, B=3, T=4, NH=1, DH=DH,
                            with_lengths=True, with_states=True, seed=7)


def test_reused_big_buffers_hold_no_stale_values():
    """Buffers of 4 MB and more are kept when freed and handed to the next call
    (csrc/cpu/big_alloc.cpp): a second call of the same size gets the first call's memory back
    and must still return only its own values, including the zeros past each row's length."""
    cell, B, T, NH, DH = CELLS["lstm"], 64, 66, 1, 256  # h: 4.1 MB
    results = []
    for seed in (1, 2):
        wx, r, b, states = make_rnn_inputs(cell, B, T, NH, DH, dtype=torch.float32,
                                           with_states=True, seed=seed)
        lengths = random_lengths(B, T, seed=seed) if seed == 2 else None
        with torch.no_grad():
            h, last = flashseq.ops.fused_rnn(wx, r, b, states, cell="lstm", lengths=lengths,
                                             backend="cpu")
            h_ref, last_ref = fused_rnn_reference(wx.double(), r.double(), b.double(),
                                                  states.double(), cell=cell, lengths=lengths)
        assert_close("h", h, h_ref, TOLERANCE[torch.float32])
        assert_close("last_states", last, last_ref, TOLERANCE[torch.float32])
        results.append(h.untyped_storage().data_ptr())
        del h, last  # frees the 4 MB h for the second call
    assert results[0] == results[1], "the second call did not reuse the first call's h buffer"
