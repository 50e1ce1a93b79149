"""The Triton back end with the extras of fused_rnn (dropconnect, variational dropout, zoneout,
reset, return_all_states) and the LayerNorm cells, against the reference back end in float64
with the same generator state: forward and every gradient, with lengths.

On CPU the kernels run under TRITON_INTERPRET=1 (set by conftest), on tiny shapes.
"""
import dataclasses
import os

import pytest
import torch

from flashseq.cells import get_cell
from flashseq.kernels.fused_rnn import backends
from flashseq.ops import fused_rnn
from tests.conftest import HAS_CUDA
from tests.helpers import TOLERANCE, assert_close, make_rnn_inputs, random_lengths

pytestmark = pytest.mark.skipif(
    not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1")

DEVICE = "cuda" if HAS_CUDA else "cpu"
B, T, NH, DH = 3, 4, 2, 5  # DH 5 pads to 16 lanes: the padded lanes are exercised too
GRAD_NAMES = ("wx", "r", "b", "states")


def _case(cell_name, seed=0, lengths=True):
    cell = get_cell(cell_name)
    inputs = make_rnn_inputs(cell, B, T, NH, DH, device=DEVICE, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    dh = torch.randn(B, T, NH, DH, generator=g, dtype=torch.float64).to(DEVICE)
    dlast = torch.randn(cell.num_states, B, NH, DH, generator=g, dtype=torch.float64).to(DEVICE)
    dall = torch.randn(T, cell.num_states, B, NH, DH, generator=g, dtype=torch.float64).to(DEVICE)
    lens = random_lengths(B, T, seed=seed).to(DEVICE) if lengths else None
    return inputs, (dh, dlast, dall), lens


def _reset():
    reset = torch.zeros(B, T, dtype=torch.bool, device=DEVICE)
    reset[0, 2] = True  # mid-sequence
    reset[2, 0] = True  # before the first step: a no-op
    reset[2, 3] = True
    return reset


def _run(backend, cell_name, inputs, upstream, lengths, dtype, seed=7, **kwargs):
    """Outputs and the gradients of (wx, r, b, states) of one call, all in float64."""
    leaves = [x.detach().to(dtype).requires_grad_() for x in inputs]
    out = fused_rnn(*leaves, cell=cell_name, lengths=lengths, backend=backend,
                    generator=torch.Generator(DEVICE).manual_seed(seed), **kwargs)
    loss = sum((o.double() * u).sum() for o, u in zip(out, upstream))
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach().double() for o in out] + [g.double() for g in grads]


def _compare(cell_name, dtype=torch.float32, lengths=True, seed=0, **kwargs):
    inputs, upstream, lens = _case(cell_name, seed, lengths)
    got = _run("triton", cell_name, inputs, upstream, lens, dtype, **kwargs)
    ref = _run("reference", cell_name, inputs, upstream, lens, torch.float64, **kwargs)
    names = ["h", "last_states", "all_states"][:len(got) - 4] + [f"d {n}" for n in GRAD_NAMES]
    for name, a, b in zip(names, got, ref):
        assert_close(f"{cell_name} {name}", a, b, TOLERANCE[dtype])
    return got


EXTRAS = {
    "dropconnect": dict(dropconnect=0.4),
    "variational_dropout": dict(variational_dropout=0.5),
    "zoneout": dict(zoneout=(0.3, 0.4)),
    "reset": dict(reset=None),  # filled in by _extras (a tensor on DEVICE)
    "return_all_states": dict(return_all_states=True),
}


def _extras(name, cell_name="lstm"):
    kwargs = dict(EXTRAS[name])
    if name == "reset":
        kwargs["reset"] = _reset()
    if name == "zoneout" and get_cell(cell_name).num_states == 1:
        kwargs["zoneout"] = (0.3, 0.0)
    return kwargs


def _all_extras(cell_name):
    kwargs = {}
    for name in EXTRAS:
        kwargs.update(_extras(name, cell_name))
    return kwargs


@pytest.mark.parametrize("name", list(EXTRAS))
def test_each_extra_matches_reference(name):
    """LSTM, fp32, with lengths: forward and all gradients within 1e-5 of the float64
    reference drawing the same masks."""
    _compare("lstm", **_extras(name))


@pytest.mark.parametrize("cell_name", ["layernorm_lstm", "layernorm_gru"])
@pytest.mark.parametrize("with_extras", [False, True], ids=["plain", "extras"])
def test_layernorm_cells_match_reference(cell_name, with_extras):
    """The LayerNorm cells (norms of LN(wx), LN(h @ r) and for the LSTM LN(c) inside the
    kernels) against the stepped float64 reference, alone and with every extra at once."""
    _compare(cell_name, **(_all_extras(cell_name) if with_extras else {}))


@pytest.mark.parametrize("cell_name", ["gru", "slstm", "elman"])
def test_other_cells_with_every_extra(cell_name):
    _compare(cell_name, **_all_extras(cell_name))


@pytest.mark.parametrize("cell_name", ["lstm", "layernorm_lstm"])
def test_float16_with_every_extra(cell_name):
    _compare(cell_name, dtype=torch.float16, **_all_extras(cell_name))


def test_extras_kernel_with_nothing_drawn_equals_the_plain_call():
    """p = 0 everywhere but return_all_states: the extras kernels run with every mask off and
    give the plain kernels' results; all_states ends in last_states and holds each step's h."""
    inputs, upstream, _ = _case("lstm", lengths=False)
    up2 = upstream[:2]
    zero = dict(dropconnect=0.0, variational_dropout=0.0, zoneout=(0.0, 0.0))
    plain = _run("triton", "lstm", inputs, up2, None, torch.float32, **zero)
    every = _run("triton", "lstm", inputs, (*up2, torch.zeros_like(upstream[2])), None,
                 torch.float32, return_all_states=True, **zero)
    h, last, all_states = every[:3]
    for name, a, b in zip(["h", "last", *GRAD_NAMES], [h, last, *every[3:]], plain):
        assert_close(f"p=0 {name}", a, b, 1e-6)
    assert torch.equal(all_states[-1], last)
    assert torch.equal(all_states[:, 0], h.transpose(0, 1))


def test_deterministic_runs_are_bitwise_identical():
    inputs, upstream, lens = _case("layernorm_lstm", seed=3)
    kwargs = _all_extras("layernorm_lstm")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = _run("triton", "layernorm_lstm", inputs, upstream, lens, torch.float32, **kwargs)
        second = _run("triton", "layernorm_lstm", inputs, upstream, lens, torch.float32,
                      **kwargs)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def _force_split(monkeypatch):
    from flashseq.kernels.fused_rnn import triton_function

    def split(cell_name, batch, heads, head_dim, dtype, gpu, max_onchip_bytes):
        plan = triton_function.plan_fused_rnn(cell_name, batch, heads, head_dim, dtype, gpu,
                                              "triton", max_onchip_bytes)
        return dataclasses.replace(plan, path="split", BH=16, BK=plan.padded_head_dim)

    monkeypatch.setattr(triton_function, "_cached_plan", split)


def test_split_head_plan_is_refused_by_name_and_falls_back_under_auto(monkeypatch):
    """Heads the plan splits over programs (large DH) have no extras kernels: backend="triton"
    says so (NotImplementedError), "auto" runs the reference with one warning."""
    _force_split(monkeypatch)
    inputs, _, _ = _case("lstm", lengths=False)
    wx, r, b, states = [x.float() for x in inputs]
    with pytest.raises(NotImplementedError, match="persistent kernel only"):
        fused_rnn(wx, r, b, states, cell="lstm", backend="triton", return_all_states=True)
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.setitem(backends.AUTO_ORDER, DEVICE, ("triton", "reference"))
    with pytest.warns(RuntimeWarning, match="persistent kernel only") as record:
        auto = fused_rnn(wx, r, b, states, cell="lstm", return_all_states=True)
        fused_rnn(wx, r, b, states, cell="lstm", return_all_states=True)
    assert len([w for w in record if "falling back" in str(w.message)]) == 1
    ref = fused_rnn(wx, r, b, states, cell="lstm", backend="reference", return_all_states=True)
    assert all(torch.equal(a, b) for a, b in zip(auto, ref))


def test_extras_custom_ops_have_matching_fake_implementations():
    """torch.compile traces the extras through their custom ops' fake (meta) implementations:
    those must give the real kernels' shapes, dtypes and strides (forward and backward)."""
    inputs, _, lens = _case("layernorm_lstm")
    wx, r, b, states = [x.float() for x in inputs]
    zone = torch.rand(T, 2, B, NH, DH, device=DEVICE) < 0.3
    var = torch.full((B, NH, DH), 2.0, device=DEVICE)
    fwd_args = (wx, r, b, states, lens, var, zone, _reset(), "layernorm_lstm", True, True)
    torch.library.opcheck(torch.ops.flashseq.fused_rnn_triton_extras_fwd.default, fwd_args,
                          test_utils=("test_schema", "test_faketensor"))
    h, last, every, rh_st, hr_st, s_st = torch.ops.flashseq.fused_rnn_triton_extras_fwd(*fwd_args)
    bwd_args = (torch.ones_like(h), torch.ones_like(last), torch.ones_like(every), wx, r, rh_st,
                hr_st, s_st, lens, var, zone, _reset(), "layernorm_lstm")
    torch.library.opcheck(torch.ops.flashseq.fused_rnn_triton_extras_bwd.default, bwd_args,
                          test_utils=("test_schema", "test_faketensor"))


def _triton(cell_name, wx, r, b, states, **kwargs):
    return fused_rnn(wx, r, b, states, cell=cell_name, backend="triton", **kwargs)


def test_zoneout_one_keeps_the_initial_states():
    inputs, _, _ = _case("lstm", lengths=False)
    wx, r, b, states = [x.float() for x in inputs]
    h, last = _triton("lstm", wx, r, b, states, zoneout=(1.0, 1.0))
    assert torch.equal(last, states)
    assert torch.equal(h, states[0].unsqueeze(1).expand_as(h))


def test_reset_at_k_equals_two_runs_split_at_k():
    inputs, _, _ = _case("layernorm_gru", lengths=False)
    wx, r, b, states = [x.float() for x in inputs]
    k = 2
    reset = torch.zeros(B, T, dtype=torch.bool, device=DEVICE)
    reset[:, k] = True
    h, last = _triton("layernorm_gru", wx, r, b, states, reset=reset)
    h_a, _ = _triton("layernorm_gru", wx[:, :k], r, b, states)
    h_b, last_b = _triton("layernorm_gru", wx[:, k:], r, b, states)
    assert_close("h before k", h[:, :k], h_a, 1e-6)
    assert_close("h from k", h[:, k:], h_b, 1e-6)
    assert_close("last", last, last_b, 1e-6)


def test_nan_past_the_lengths_reaches_nothing():
    """wx past a row's length is never read by the extras kernels (LN of a NaN row would
    otherwise poison the whole row's norm): outputs and gradients equal the clean call's."""
    inputs, upstream, lens = _case("layernorm_lstm", seed=5)
    poisoned = inputs[0].clone()
    for row, n in enumerate(lens.tolist()):
        poisoned[row, n:] = float("nan")
    kwargs = _all_extras("layernorm_lstm")
    clean = _run("triton", "layernorm_lstm", inputs, upstream, lens, torch.float32, **kwargs)
    dirty = _run("triton", "layernorm_lstm", (poisoned, *inputs[1:]), upstream, lens,
                 torch.float32, **kwargs)
    for a, b in zip(dirty, clean):
        assert torch.equal(a, b)


def test_create_graph_backward_differentiates_the_reference_with_the_same_masks():
    """Under create_graph=True the extras backward is the reference loop's with the masks the
    forward drew: a second derivative through it equals the reference back end's."""
    inputs, upstream, lens = _case("layernorm_gru", seed=2)
    kwargs = _all_extras("layernorm_gru")
    results = []
    for backend in ("triton", "reference"):
        leaves = [x.detach().float().requires_grad_() for x in inputs]
        out = fused_rnn(*leaves, cell="layernorm_gru", lengths=lens, backend=backend,
                        generator=torch.Generator(DEVICE).manual_seed(4), **kwargs)
        loss = sum((o * u.float()).sum() for o, u in zip(out, upstream))
        d_wx, d_r = torch.autograd.grad(loss, leaves[:2], create_graph=True)
        second = torch.autograd.grad((d_wx * d_wx).sum() + d_r.sum(), leaves[1])[0]
        results.append((d_wx, d_r, second))
    for name, a, b in zip(("d wx", "d r", "d2"), *results):
        assert_close(f"create_graph {name}", a, b, 1e-5)
