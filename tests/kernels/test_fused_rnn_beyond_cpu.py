"""The compiled CPU back end with fused_rnn's extras (dropconnect, variational dropout, zoneout,
reset, return_all_states) and the LayerNorm cells, against the reference back end with the same
generator state: forward, every gradient, lengths, determinism, second derivatives."""
import warnings

import pytest
import torch

from flashseq import _jit
from flashseq.cells import get_cell
from flashseq.kernels.fused_rnn import backends
from flashseq.ops import fused_rnn
from tests.helpers import assert_close, make_rnn_inputs, random_lengths

pytestmark = pytest.mark.skipif(
    "cpu" not in backends.available_backends("cpu"),
    reason="the compiled CPU extension is not available (no compiler)")

F32, F64 = torch.float32, torch.float64

# (id, cell, keyword arguments of fused_rnn, with lengths)
CASES = [
    ("lstm-dropconnect", "lstm", dict(dropconnect=0.4), False),
    ("gru-variational", "gru", dict(variational_dropout=0.5), False),
    ("lstm-zoneout", "lstm", dict(zoneout=(0.3, 0.4)), False),
    ("slstm-zoneout-reset", "slstm", dict(zoneout=(0.2, 0.3), reset="random"), False),
    ("elman-reset-lengths", "elman", dict(reset="random"), True),
    ("lstm-all-states", "lstm", dict(return_all_states=True), False),
    ("gru-everything-lengths", "gru",
     dict(dropconnect=0.3, variational_dropout=0.4, zoneout=(0.3, 0.0), reset="random",
          return_all_states=True), True),
    ("layernorm_lstm", "layernorm_lstm", {}, False),
    ("layernorm_gru", "layernorm_gru", {}, False),
    ("layernorm_lstm-everything-lengths", "layernorm_lstm",
     dict(dropconnect=0.2, variational_dropout=0.3, zoneout=(0.25, 0.35), reset="random",
          return_all_states=True), True),
    ("layernorm_gru-zoneout-all-lengths", "layernorm_gru",
     dict(zoneout=(0.4, 0.0), return_all_states=True), True),
]


def _call(backend, leaves, cell_name, kwargs, lengths, seed):
    kwargs = dict(kwargs)
    if kwargs.get("reset") == "random":
        B, T = leaves[0].shape[:2]
        kwargs["reset"] = torch.rand(B, T, generator=torch.Generator().manual_seed(seed + 1)) < 0.3
    return fused_rnn(*leaves, cell=cell_name, lengths=lengths, backend=backend,
                     generator=torch.Generator().manual_seed(seed), **kwargs)


def _upstream(outputs, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outputs]


def _run(backend, inputs, cell_name, kwargs, lengths, seed=7):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    outputs = _call(backend, leaves, cell_name, kwargs, lengths, seed)
    grads = torch.autograd.grad(outputs, leaves, _upstream(outputs))
    return outputs, grads


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("case_id, cell_name, kwargs, with_lengths", CASES,
                         ids=[c[0] for c in CASES])
def test_cpu_extras_equal_the_reference(case_id, cell_name, kwargs, with_lengths, dtype):
    """Forward (h, last states, every step's states) and d wx, d r, d b, d states against the
    reference back end in float64 on the same values and masks."""
    B, T, NH, DH = (5, 7, 2, 5) if cell_name.startswith("layernorm") else (4, 6, 2, 3)
    inputs = make_rnn_inputs(get_cell(cell_name), B, T, NH, DH, seed=3)
    lengths = random_lengths(B, T, seed=4) if with_lengths else None
    ref_out, ref_grads = _run("reference", inputs, cell_name, kwargs, lengths)
    out, grads = _run("cpu", [t.to(dtype) for t in inputs], cell_name, kwargs, lengths)
    tol = 1e-5 if dtype == F32 else 1e-12
    names = ["h", "last_states", "all_states"]
    assert len(out) == len(ref_out)
    for name, got, exp in zip(names, out, ref_out):
        assert got.dtype == dtype
        assert_close(name, got, exp, tol)
    for name, got, exp in zip(["d wx", "d r", "d b", "d states"], grads, ref_grads):
        assert_close(name, got, exp, tol)


def test_the_extras_change_the_result():
    """The masks reach the cpu result (a comparison with the reference alone would also pass if
    both ignored them)."""
    inputs = make_rnn_inputs(get_cell("lstm"), 3, 6, 2, 4, seed=1)
    plain = fused_rnn(*inputs, cell="lstm", backend="cpu")[0]
    for kwargs in (dict(dropconnect=0.4), dict(variational_dropout=0.4), dict(zoneout=(0.5, 0.5)),
                   dict(reset="random")):
        h = _call("cpu", inputs, "lstm", kwargs, None, seed=2)[0]
        assert (h - plain).abs().max() > 1e-3, kwargs


@pytest.mark.parametrize("cell_name", ["lstm", "gru", "slstm"])
def test_zero_probabilities_through_the_extras_loop_equal_the_plain_call(cell_name):
    """p = 0 with an all-False reset and return_all_states runs the extras loop and gives the
    plain call's values; all_states[-1] is last_states."""
    inputs = make_rnn_inputs(get_cell(cell_name), 3, 5, 2, 4, seed=2)
    lengths = random_lengths(3, 5, seed=3)
    plain_out, plain_grads = _run("cpu", inputs, cell_name, {}, lengths)
    reset = torch.zeros(3, 5, dtype=torch.bool)
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    h, last, every = fused_rnn(*leaves, cell=cell_name, lengths=lengths, backend="cpu",
                               dropconnect=0.0, variational_dropout=0.0, zoneout=(0.0, 0.0),
                               reset=reset, return_all_states=True)
    assert_close("h", h, plain_out[0], 1e-13)
    assert_close("last_states", last, plain_out[1], 1e-13)
    assert torch.equal(every[-1], last)
    grads = torch.autograd.grad([h, last], leaves, _upstream(plain_out))
    for name, got, exp in zip(["d wx", "d r", "d b", "d states"], grads, plain_grads):
        assert_close(name, got, exp, 1e-12)


def test_zoneout_one_keeps_the_initial_state_and_reset_splits_the_run():
    wx, r, b, states = make_rnn_inputs(get_cell("lstm"), 3, 7, 1, 4, seed=5)
    h, last = fused_rnn(wx, r, b, states, cell="lstm", backend="cpu", zoneout=(1.0, 1.0))
    assert torch.equal(h, states[0][:, None].expand_as(h))
    assert torch.equal(last, states)
    reset = torch.zeros(3, 7, dtype=torch.bool)
    reset[:, 3] = True
    h, last = fused_rnn(wx, r, b, states, cell="lstm", backend="cpu", reset=reset)
    h1, _ = fused_rnn(wx[:, :3], r, b, states, cell="lstm", backend="cpu")
    h2, last2 = fused_rnn(wx[:, 3:], r, b, states, cell="lstm", backend="cpu")
    assert_close("h", h, torch.cat([h1, h2], 1), 1e-13)
    assert_close("last_states", last, last2, 1e-13)


def test_the_library_gemm_path_equals_the_reference():
    """Batches above the packed step GEMM's limit run at::bmm; forced here on a small batch."""
    ext = _jit.extension()
    old = ext._set_step_gemm_max_batch(0)
    try:
        kwargs = dict(variational_dropout=0.3, zoneout=(0.2, 0.3), return_all_states=True)
        inputs = make_rnn_inputs(get_cell("layernorm_lstm"), 4, 5, 2, 6, seed=8)
        lengths = random_lengths(4, 5, seed=9)
        ref_out, ref_grads = _run("reference", inputs, "layernorm_lstm", kwargs, lengths)
        out, grads = _run("cpu", inputs, "layernorm_lstm", kwargs, lengths)
    finally:
        ext._set_step_gemm_max_batch(old)
    for got, exp in zip((*out, *grads), (*ref_out, *ref_grads)):
        assert_close("output or gradient", got, exp, 1e-12)


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("cell_name", ["lstm", "layernorm_gru"])
def test_two_deterministic_runs_are_bitwise_identical(deterministic, cell_name):
    kwargs = dict(dropconnect=0.3, variational_dropout=0.3, zoneout=(0.3, 0.0),
                  return_all_states=True)
    inputs = make_rnn_inputs(get_cell(cell_name), 6, 9, 2, 8, dtype=F32, seed=6)
    first = _run("cpu", inputs, cell_name, kwargs, None, seed=3)
    second = _run("cpu", inputs, cell_name, kwargs, None, seed=3)
    for a, b in zip((*first[0], *first[1]), (*second[0], *second[1])):
        assert torch.equal(a, b)


def test_return_all_states_gradcheck_and_gradgradcheck():
    inputs = make_rnn_inputs(get_cell("lstm"), 2, 3, 1, 2, seed=10)
    reset = torch.tensor([[False, True, False], [False, False, False]])

    def every_state(wx, r, b, states):
        return fused_rnn(wx, r, b, states, cell="lstm", backend="cpu", return_all_states=True,
                         zoneout=(0.3, 0.3), variational_dropout=0.3, reset=reset,
                         generator=torch.Generator().manual_seed(4))

    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(every_state, leaves)
    assert torch.autograd.gradgradcheck(every_state, leaves)


def test_auto_on_cpu_serves_the_extras_without_fallback(monkeypatch):
    monkeypatch.setattr(backends, "_warned", set())
    inputs = make_rnn_inputs(get_cell("layernorm_lstm"), 2, 4, 1, 3, dtype=F32, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = fused_rnn(*inputs, cell="layernorm_lstm", zoneout=(0.2, 0.2),
                         generator=torch.Generator().manual_seed(1))
    cpu = fused_rnn(*inputs, cell="layernorm_lstm", backend="cpu", zoneout=(0.2, 0.2),
                    generator=torch.Generator().manual_seed(1))
    assert torch.equal(auto[0], cpu[0])


def test_extras_path_traces_as_one_graph():
    """cpu_extras' custom ops (fake implementations) and autograd Function under torch.compile
    with fullgraph=True, a LayerNorm cell with every mask and every step's states."""
    from flashseq.kernels.fused_rnn import cpu_extras
    from flashseq.kernels.fused_rnn.extras import Extras
    from flashseq.kernels.fused_rnn.reference import fused_rnn_reference

    cell = get_cell("layernorm_lstm")
    wx, r, b, states = make_rnn_inputs(cell, 3, 4, 1, 4, seed=12)
    g = torch.Generator().manual_seed(0)
    extras = Extras(variational=(torch.rand(3, 1, 4, generator=g) > 0.3).double() / 0.7,
                    zoneout=torch.rand(4, 2, 3, 1, 4, generator=g) < 0.3,
                    reset=torch.rand(3, 4, generator=g) < 0.3, return_all_states=True)
    lengths = torch.tensor([4, 0, 2])

    def loss_fn(fn, wx, r, b, states):
        h, last, every = fn(wx, r, b, states, cell=cell, lengths=lengths, extras=extras)
        return h.sum() + (last * last).sum() + every[1].sum()

    compiled = torch.compile(lambda *ts: loss_fn(cpu_extras.fused_rnn, *ts), backend="aot_eager",
                             fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (wx, r, b, states)]
    grads = torch.autograd.grad(compiled(*leaves), leaves)
    ref_leaves = [t.clone().requires_grad_() for t in (wx, r, b, states)]
    grads_ref = torch.autograd.grad(loss_fn(fused_rnn_reference, *ref_leaves), ref_leaves)
    for name, got, exp in zip(("d wx", "d r", "d b", "d states"), grads, grads_ref):
        assert_close(name, got, exp, 1e-12)
