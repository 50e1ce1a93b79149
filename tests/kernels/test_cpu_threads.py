"""The compiled CPU loops run on torch's threads: the extension is built with OpenMP where
torch's at::parallel_for is OpenMP's (without -fopenmp its pragma was dropped and every loop ran
on one thread at any torch.set_num_threads), and results at 1 and 2 threads agree."""
from __future__ import annotations

import platform

import pytest
import torch

import flashseq
from flashseq import _jit
from flashseq.cells import CELLS
from tests.kernels.test_fused_rnn_cpu import check_against_reference

pytestmark = pytest.mark.skipif(_jit.extension_error() is not None,
                                reason="the CPU extension does not build here")


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.skipif(platform.system() != "Linux" or not torch.backends.openmp.is_available(),
                    reason="torch's parallel_for is OpenMP's only in OpenMP builds (Linux here)")
def test_parallel_for_runs_on_torchs_threads(threads):
    assert "-fopenmp" in _jit.compile_flags()
    ext = _jit.extension()
    threads(2)
    assert ext._parallel_for_threads(64) == 2
    threads(1)
    assert ext._parallel_for_threads(64) == 1


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("grad", [False, True])
def test_one_and_two_threads_agree(kind, grad, threads):
    torch.manual_seed(0)
    m = getattr(flashseq, kind)(24, 40, num_layers=2)  # B=8: the LSTM takes the folded projection
    x = torch.randn(9, 8, 24)
    results = []
    for n in (1, 2):
        threads(n)
        xi = x.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            y, _ = m(xi)
        out = [y.detach()]
        if grad:
            grads = torch.autograd.grad(y.square().sum(), [xi, *m.parameters()])
            out += list(grads)
        results.append(out)
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def _loss(y, last, w):
    """A weighted sum of h and the last states (h_T, c_T for an LSTM), so each gets a gradient."""
    states = last if isinstance(last, tuple) else (last,)
    return (y * w).sum() + sum((s * (i + 2)).sin().sum() for i, s in enumerate(states))


def _rel(a, ref):
    return ((a.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("hidden", [200, 128, 520])
@pytest.mark.parametrize("balanced", [True, False])
@pytest.mark.parametrize("row_split", [True, False])
def test_two_thread_step_gemm_split_matches_float64(kind, hidden, balanced, row_split, threads):
    """At 2 threads against torch.nn in float64, forward and every gradient (through h, h_T and
    c_T): the step GEMM's per-thread panel ranges (by columns; H=200: 5 panels the last 8
    columns wide, 128: 3 panels, 520: 11 panels of 4H) or OpenMP's equal counts, and the
    backward's per-thread batch rows through all steps (B=20: 10 rows each; H=200 and 128 take
    it, H=520's weight is too large) or its per-step split."""
    ext = _jit.extension()
    threads(2)
    before = ext._set_step_gemm_balanced(balanced)
    before_rows = ext._set_backward_row_split(row_split)
    try:
        torch.manual_seed(0)
        ref = getattr(torch.nn, kind)(16, hidden).double()
        m = getattr(flashseq, kind)(16, hidden)
        m.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
        x = torch.randn(5, 20, 16, dtype=torch.float64)
        w = torch.randn(5, 20, hidden, dtype=torch.float64)
        xr = x.clone().requires_grad_()
        y_ref, last_ref = ref(xr)
        g_ref = torch.autograd.grad(_loss(y_ref, last_ref, w), [xr, *ref.parameters()])
        xf = x.float().requires_grad_()
        y, last = m(xf)
        g = torch.autograd.grad(_loss(y, last, w.float()), [xf, *m.parameters()])
    finally:
        ext._set_step_gemm_balanced(before)
        ext._set_backward_row_split(before_rows)
    assert _rel(y, y_ref) <= 1e-5
    for a, b in zip(g, g_ref):
        assert _rel(a, b) <= 1e-5


@pytest.mark.parametrize("row_split", [True, False])
@pytest.mark.parametrize("cell_name", sorted(CELLS))
def test_two_thread_backward_rows_every_cell(cell_name, row_split, threads):
    """fused_rnn's compiled backward at 2 threads, one head, B=20 (10 rows a thread when each
    thread takes its own rows through all steps) against the float64 reference, forward and
    every gradient, for every cell."""
    ext = _jit.extension()
    threads(2)
    before = ext._set_backward_row_split(row_split)
    try:
        check_against_reference(CELLS[cell_name], torch.float32, B=20, T=6, NH=1, DH=24,
                                with_lengths=False, with_states=True, seed=3)
    finally:
        ext._set_backward_row_split(before)
