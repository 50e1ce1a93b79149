"""parallel_rnn (Newton + PyTorch scan) equals the sequential fused_rnn: forward and gradients."""
from __future__ import annotations

import warnings

import pytest
import torch

from flashseq.cells import CELLS
from flashseq.kernels.parallel_rnn import ParallelRNNStats, newton, scan_torch
from flashseq.ops import parallel_rnn
from tests.helpers import TOLERANCE, assert_close, random_lengths
from tests.kernels.parallel_rnn_cases import (NEWTON_CELLS, STRUCTURES, make_inputs,
                                              outputs_and_grads, sequential)

GRAD_NAMES = ("d_wx", "d_r", "d_b", "d_states")


def check_against_sequential(cell, structure, B, T, NH, DH, dtype, seed, lengths=None,
                             backend="reference", max_iters_bound=32):
    inputs = make_inputs(cell, structure, B, T, NH, DH, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    d_h = torch.randn(B, T, NH, DH, generator=g, dtype=torch.float64).to(dtype)
    S = CELLS[cell].num_states
    d_last = torch.randn(S, B, NH, DH, generator=g, dtype=torch.float64).to(dtype)
    stats = ParallelRNNStats()

    def par(wx, r, b, states):
        return parallel_rnn(wx, r, b, states, cell=cell, structure=structure, lengths=lengths,
                            backend=backend, stats=stats)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to the sequential path must not pass quietly
        h, last, grads = outputs_and_grads(par, inputs, d_h, d_last)
    h_ref, last_ref, grads_ref = outputs_and_grads(sequential(cell, structure, lengths), inputs,
                                                   d_h, d_last)
    tol = TOLERANCE[dtype]
    assert_close("h", h, h_ref, tol)
    assert_close("last_states", last, last_ref, tol)
    for name, out, ref in zip(GRAD_NAMES, grads, grads_ref):
        assert_close(name, out, ref, tol)
    assert stats.converged and not stats.fell_back
    assert 1 <= stats.iterations <= min(T, max_iters_bound), stats
    return stats


def test_cell_partials_match_autograd():
    """The analytic partials in flashseq/cells equal autograd's derivatives of each step."""
    torch.manual_seed(0)
    for name in NEWTON_CELLS:
        cell = CELLS[name]
        G, S = cell.num_gates, cell.num_states
        wx = torch.randn(3, G, 2, 5, dtype=torch.float64, requires_grad=True)
        rh = torch.randn(3, G, 2, 5, dtype=torch.float64, requires_grad=True)
        states = [torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True) for _ in range(S)]
        new, d_wx, d_rh, d_states = cell.partials(wx, rh, states)
        ref = cell.step(wx, rh, states)
        for s in range(S):
            assert_close(f"{name} state {s}", new[s], ref[s], 1e-15)
            grads = torch.autograd.grad(ref[s].sum(), [wx, rh, *states], allow_unused=True,
                                        retain_graph=True)
            assert_close(f"{name} d{s}/d wx", d_wx[:, s], grads[0], 1e-14)
            assert_close(f"{name} d{s}/d rh", d_rh[:, s], grads[1], 1e-14)
            for k in range(S):
                ref_k = grads[2 + k] if grads[2 + k] is not None else torch.zeros_like(states[k])
                assert torch.allclose(d_states[:, s, k], ref_k, atol=1e-14), (name, s, k)


@pytest.mark.parametrize("m", [1, 2, 5])
@pytest.mark.parametrize("T", [1, 2, 7, 64, 65])
def test_reference_scan_equals_loop(m, T):
    g = torch.Generator().manual_seed(T * 10 + m)
    A = torch.randn(3, T, m, m, generator=g, dtype=torch.float64) * 0.6
    c = torch.randn(3, T, m, generator=g, dtype=torch.float64)
    x0 = torch.randn(3, m, generator=g, dtype=torch.float64)
    x, xs = x0, []
    for t in range(T):
        x = (A[:, t] @ x.unsqueeze(-1)).squeeze(-1) + c[:, t]
        xs.append(x)
    assert_close("x", scan_torch.affine_scan(A, c, x0), torch.stack(xs, 1), 1e-13)
    lam, lams = torch.zeros(3, m, dtype=torch.float64), [None] * T
    for t in reversed(range(T)):
        nxt = (A[:, t + 1].transpose(-1, -2) @ lam.unsqueeze(-1)).squeeze(-1) if t + 1 < T else 0
        lam = nxt + c[:, t]
        lams[t] = lam
    assert_close("lam", scan_torch.affine_scan_reverse(A, c), torch.stack(lams, 1), 1e-13)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("T", [1, 2, 63])
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("cell", NEWTON_CELLS)
def test_parallel_equals_sequential(cell, structure, T, dtype):
    check_against_sequential(cell, structure, B=3, T=T, NH=2, DH=3, dtype=dtype, seed=T)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("cell", NEWTON_CELLS)
def test_parallel_equals_sequential_lengths_and_nan_padding(cell, structure):
    T = 40
    lengths = random_lengths(4, T, seed=5)
    lengths[2] = 17
    inputs = make_inputs(cell, structure, 4, T, 1, 4, torch.float64, seed=9)
    inputs[0][2, 17:] = float("nan")  # padding is never read
    d_h = torch.randn(4, T, 1, 4, dtype=torch.float64)
    d_last = torch.randn(CELLS[cell].num_states, 4, 1, 4, dtype=torch.float64)
    run = lambda *a: parallel_rnn(*a, cell=cell, structure=structure, lengths=lengths)  # noqa: E731
    h, last, grads = outputs_and_grads(run, inputs, d_h, d_last)
    clean = [t.nan_to_num(0.0) for t in inputs]
    h_ref, last_ref, grads_ref = outputs_and_grads(sequential(cell, structure, lengths), clean,
                                                   d_h, d_last)
    assert_close("h", h, h_ref, 1e-10)
    assert_close("last_states", last, last_ref, 1e-10)
    for name, out, ref in zip(GRAD_NAMES, grads, grads_ref):
        assert_close(name, out, ref, 1e-10)
    assert torch.equal(last[:, 1], clean[3][:, 1])  # length 0 returns the initial states


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("cell", NEWTON_CELLS)
def test_time_chunks_of_the_newton_correction(cell, structure, monkeypatch):
    """On the CPU the correction is solved in time chunks, each scan starting from the previous
    chunk's last value: force chunks of MIN_CHUNK_STEPS (T = 100: 3 full chunks and a partial
    one), with lengths ending inside and across chunks."""
    monkeypatch.setattr(newton, "CPU_CHUNK_ELEMENTS", 1)
    wx = torch.zeros(2, 100, CELLS[cell].num_gates, 1, 3)
    assert newton.chunk_steps(wx, CELLS[cell].num_states, structure) == newton.MIN_CHUNK_STEPS
    # the correction itself (the end result alone would not show a wrong carry: any linear
    # map in place of J still converges to the same solution, only more slowly)
    inputs = [t.detach() for t in make_inputs(cell, structure, 3, 100, 1, 3, torch.float64, 2)]
    X = torch.randn(3, 100, CELLS[cell].num_states, 1, 3, dtype=torch.float64) * 0.5
    args = (*inputs, X, CELLS[cell], structure, None, scan_torch.affine_scan)
    whole = newton.newton_correction(*args, 100, 1.0, out=torch.empty_like(X))
    chunked = newton.newton_correction(*args, newton.MIN_CHUNK_STEPS, 1.0, out=torch.empty_like(X))
    assert_close("chunked correction", chunked, whole, 1e-12)
    check_against_sequential(cell, structure, B=3, T=100, NH=1, DH=3, dtype=torch.float64, seed=4)
    check_against_sequential(cell, structure, B=3, T=100, NH=1, DH=3, dtype=torch.float64, seed=6,
                             lengths=torch.tensor([100, 33, 70]))


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("cell", NEWTON_CELLS)
def test_long_sequence_float32(cell, structure):
    stats = check_against_sequential(cell, structure, B=2, T=512, NH=1, DH=4,
                                     dtype=torch.float32, seed=3)
    assert stats.iterations <= 20


# 1.5-6 s each on an idle core (10-30 s under a load of 14), almost all of it the sequential
# reference's forward and backward loops
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("cell", NEWTON_CELLS)
def test_T4096_float64(cell, structure):
    """T = 4096: a handful of Newton iterations, not T (observed 6-16, see the docs)."""
    stats = check_against_sequential(cell, structure, B=1, T=4096, NH=1, DH=2,
                                     dtype=torch.float64, seed=11)
    assert stats.iterations <= 24


def test_states_none_and_half_precision():
    wx, r, b, _ = make_inputs("lstm", "diag", 2, 30, 2, 4, torch.float64, seed=4)
    h, last = parallel_rnn(wx, r, b, cell="lstm", structure="diag")
    h_ref, last_ref = sequential("lstm", "diag")(wx, r, b, None)
    assert_close("h", h, h_ref, 1e-10)
    assert_close("last_states", last, last_ref, 1e-10)
    h16, last16 = parallel_rnn(wx.bfloat16(), r.bfloat16(), b.bfloat16(), cell="lstm",
                               structure="diag")
    assert h16.dtype == torch.bfloat16 and last16.dtype == torch.bfloat16
    assert_close("h bf16", h16, h_ref, 1e-2)


def test_not_converged_warns_and_falls_back_to_sequential():
    inputs = make_inputs("gru", "block", 2, 50, 1, 3, torch.float64, seed=6)
    stats = ParallelRNNStats()
    with pytest.warns(RuntimeWarning, match="did not converge"):
        h, last = parallel_rnn(*inputs, cell="gru", structure="block", max_iters=2, stats=stats)
    assert stats.fell_back and not stats.converged and stats.iterations == 2
    h_ref, last_ref = sequential("gru", "block")(*inputs)
    assert_close("h", h, h_ref, 1e-12)
    assert_close("last_states", last, last_ref, 1e-12)


def test_iterations_bounded_by_max_iters_and_T():
    inputs = make_inputs("elman", "diag", 2, 5, 1, 3, torch.float64, seed=7)
    stats = ParallelRNNStats()
    parallel_rnn(*inputs, cell="elman", structure="diag", tol=1e-300, stats=stats)
    # T iterations are exact (each makes one more step exact), so a tiny tol stops at T
    assert stats.converged and stats.iterations == 5


def _bad(**overrides):
    wx, r, b, states = make_inputs("lstm", "diag", 2, 6, 2, 4, torch.float32, seed=0)
    args = dict(wx=wx, r=r, b=b, states=states, cell="lstm", structure="diag")
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides, error, match", [
    (dict(r=torch.randn(4, 2, 4, 4)), ValueError, "r is dense"),
    (dict(structure="block", r=torch.randn(4, 2, 4)), ValueError, "r must be 4-D"),
    (dict(structure="block", wx=torch.randn(1, 3, 4, 1, 17), r=torch.randn(4, 1, 17, 17),
          b=torch.randn(4, 1, 17), states=None), ValueError, "DH <= 16"),
    (dict(max_iters=0), ValueError, "max_iters must be >= 1"),
    (dict(max_iters=-3), ValueError, "max_iters must be >= 1"),
    (dict(max_iters=2.5), TypeError, "max_iters"),
    (dict(tol=0.0), ValueError, "tol must be > 0"),
    (dict(structure="dense"), ValueError, "structure must be one of"),
    (dict(structure=None), ValueError, "structure must be one of"),
    (dict(cell="layernorm_lstm"), ValueError, "no analytic Jacobian"),
    (dict(b=torch.randn(4, 2, 4, dtype=torch.float64)), TypeError, "b must have wx's dtype"),
    (dict(r=torch.randn(4, 2, 5)), ValueError, r"r must have shape"),
    (dict(wx=torch.randn(2, 6, 3, 2, 4)), ValueError, "gate axis"),
    (dict(wx=torch.randint(0, 3, (2, 6, 4, 2, 4))), TypeError, "wx must be float"),
    (dict(states=torch.randn(1, 2, 2, 4)), ValueError, "states must have shape"),
    (dict(lengths=torch.tensor([7, 1])), ValueError, "lengths must lie in"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
    (dict(stats={}), TypeError, "stats must be"),
], ids=["dense-r-diag", "diag-r-block", "block-dh17", "max-iters-0", "max-iters-neg",
        "max-iters-float", "tol-0", "structure-unknown", "structure-none", "layernorm-lstm",
        "b-dtype", "r-shape", "wx-gates", "wx-int", "states-shape", "lengths-range", "backend", "stats"])
def test_bad_arguments_raise(overrides, error, match):
    with pytest.raises(error, match=match):
        parallel_rnn(**_bad(**overrides))


def test_expanding_recurrence_is_damped_then_falls_back_correctly():
    """Elman with r = 4 (bistable, |J| ~ 4 near h = 0): the first linearisations overflow over
    200 steps in float32, so corrections are damped; Newton still does not settle within
    max_iters here, and the answer comes from the sequential path with a warning."""
    g = torch.Generator().manual_seed(0)
    wx = torch.randn(2, 200, 1, 1, 4, generator=g) * 0.1
    r, b = torch.full((1, 1, 4), 4.0), torch.zeros(1, 1, 4)
    stats = ParallelRNNStats()
    with pytest.warns(RuntimeWarning, match="did not converge"):
        h, last = parallel_rnn(wx, r, b, cell="elman", structure="diag", stats=stats)
    assert stats.damped_iterations >= 1 and stats.fell_back
    h_ref, last_ref = sequential("elman", "diag")(wx.double(), r.double(), b.double(), None)
    assert_close("h", h, h_ref, 1e-5)
    assert_close("last_states", last, last_ref, 1e-5)

