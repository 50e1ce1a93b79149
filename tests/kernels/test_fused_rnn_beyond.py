"""fused_rnn beyond torch.nn: dropconnect, variational dropout, zoneout, reset, every step's
states, the LayerNorm cells, reproducible masks; checked against loops written here."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from flashseq.cells import get_cell
from flashseq.kernels.fused_rnn import backends
from flashseq.ops import fused_rnn
from tests.helpers import assert_close, make_rnn_inputs, random_lengths

F64 = torch.float64


def _inputs(cell_name, B=3, T=6, NH=2, DH=3, seed=0):
    return make_rnn_inputs(get_cell(cell_name), B, T, NH, DH, seed=seed)


def _draw_masks(wx, r, S, p_dc, p_var, p_zone, seed):
    """The masks redrawn here from the documented order and shapes (extras.py)."""
    B, T, _, NH, DH = wx.shape
    g = torch.Generator().manual_seed(seed)
    dc = var = zone = None
    if p_dc > 0:
        dc = (torch.rand(r.shape, generator=g) >= p_dc).to(F64) / (1 - p_dc)
    if p_var > 0:
        var = (torch.rand(B, NH, DH, generator=g) >= p_var).to(F64) / (1 - p_var)
    if p_zone[0] > 0 or p_zone[1] > 0:
        u = torch.rand(T, S, B, NH, DH, generator=g)
        zone = torch.stack([u[:, s] < (p_zone[0] if s == 0 else p_zone[1]) for s in range(S)], 1)
    return dc, var, zone


def _stepped(wx, r, b, states, cell_name, dc=None, var=None, zone=None, reset=None):
    """The recurrence one step at a time with one dropconnect mask and one variational mask used
    at every step, zoneout and reset applied explicitly (LSTM and GRU written out)."""
    B, T, G, NH, DH = wx.shape
    r_used = r * dc if dc is not None else r
    state = list(states.unbind(0))
    hs, every = [], []
    for t in range(T):
        prev = state
        if reset is not None:
            prev = [torch.where(reset[:, t].view(B, 1, 1), s0, s) for s0, s in zip(states, state)]
        h_in = prev[0] * var if var is not None else prev[0]
        rh = torch.stack([torch.stack([h_in[:, n] @ r_used[g, n] for n in range(NH)], 1)
                          for g in range(G)], 1) + b
        if cell_name == "lstm":
            pre = wx[:, t] + rh
            i, f, o = pre[:, 0].sigmoid(), pre[:, 1].sigmoid(), pre[:, 3].sigmoid()
            gg = pre[:, 2].tanh()
            c = f * prev[1] + i * gg
            new = [o * c.tanh(), c]
        else:  # gru
            rr = (wx[:, t, 0] + rh[:, 0]).sigmoid()
            z = (wx[:, t, 1] + rh[:, 1]).sigmoid()
            n = (wx[:, t, 2] + rr * rh[:, 2]).tanh()
            new = [(1 - z) * n + z * prev[0]]
        if zone is not None:
            new = [torch.where(zone[t, s], prev[s], new[s]) for s in range(len(new))]
        state = new
        hs.append(new[0])
        every.append(torch.stack(new))
    return torch.stack(hs, 1), torch.stack(state), torch.stack(every)


def _grads(outputs, leaves, seed=1):
    g = torch.Generator().manual_seed(seed)
    ups = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outputs]
    return torch.autograd.grad(outputs, leaves, ups)


@pytest.mark.parametrize("cell_name", ["lstm", "gru", "slstm", "elman"])
def test_zero_probabilities_equal_the_plain_call_without_warning(cell_name):
    wx, r, b, states = _inputs(cell_name)
    plain = fused_rnn(wx, r, b, states, cell=cell_name, backend="reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        off = fused_rnn(wx, r, b, states, cell=cell_name, backend="reference", dropconnect=0.0,
                        variational_dropout=0, zoneout=(0.0, 0.0),
                        generator=torch.Generator().manual_seed(3))
    for a, e in zip(off, plain):
        assert torch.equal(a, e)


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
@pytest.mark.parametrize("p_dc, p_var, p_zone", [
    (0.4, 0.0, (0.0, 0.0)), (0.0, 0.5, (0.0, 0.0)), (0.0, 0.0, (0.3, 0.0)),
    (0.3, 0.4, (0.2, 0.0))])
def test_masks_match_a_loop_applying_them_at_every_step(cell_name, p_dc, p_var, p_zone):
    """One dropconnect and one variational mask, constant over t, and zoneout per step: the
    fused call equals the stepped loop with the masks drawn in the documented order."""
    if cell_name == "lstm" and p_zone[0] > 0:
        p_zone = (p_zone[0], 0.35)
    wx, r, b, states = _inputs(cell_name)
    leaves = [t.requires_grad_() for t in (wx, r, b, states)]
    h, last = fused_rnn(*leaves, cell=cell_name, backend="reference", dropconnect=p_dc,
                        variational_dropout=p_var, zoneout=p_zone,
                        generator=torch.Generator().manual_seed(11))
    S = states.shape[0]
    dc, var, zone = _draw_masks(wx, r, S, p_dc, p_var, p_zone, seed=11)
    h_ref, last_ref, _ = _stepped(wx, r, b, states, cell_name, dc, var, zone)
    assert_close("h", h, h_ref, 1e-12)
    assert_close("last_states", last, last_ref, 1e-12)
    for name, got, exp in zip("wx r b states".split(), _grads([h, last], leaves),
                              _grads([h_ref, last_ref], leaves)):
        assert_close(f"d {name}", got, exp, 1e-12)
    # the masks change the result (a test that cannot fail would pass without them)
    plain, _ = fused_rnn(wx, r, b, states, cell=cell_name, backend="reference")
    assert (h - plain).abs().max() > 1e-3


def test_zoneout_one_keeps_the_initial_state():
    wx, r, b, states = _inputs("lstm")
    h, last = fused_rnn(wx, r, b, states, cell="lstm", backend="reference", zoneout=(1.0, 1.0))
    assert torch.equal(h, states[0][:, None].expand_as(h))
    assert torch.equal(last, states)


@pytest.mark.parametrize("cell_name", ["lstm", "gru", "slstm"])
def test_reset_at_step_k_equals_two_runs_split_at_k(cell_name):
    wx, r, b, states = _inputs(cell_name, T=7)
    k = 3
    reset = torch.zeros(3, 7, dtype=torch.bool)
    reset[:, k] = True
    h, last = fused_rnn(wx, r, b, states, cell=cell_name, backend="reference", reset=reset)
    h1, _ = fused_rnn(wx[:, :k], r, b, states, cell=cell_name, backend="reference")
    h2, last2 = fused_rnn(wx[:, k:], r, b, states, cell=cell_name, backend="reference")
    assert_close("h", h, torch.cat([h1, h2], 1), 1e-14)
    assert_close("last_states", last, last2, 1e-14)
    # a reset of one row only touches that row
    reset_row = torch.zeros_like(reset)
    reset_row[1, k] = True
    h_row, _ = fused_rnn(wx, r, b, states, cell=cell_name, backend="reference", reset=reset_row)
    plain, _ = fused_rnn(wx, r, b, states, cell=cell_name, backend="reference")
    assert torch.equal(h_row[[0, 2]], plain[[0, 2]])
    assert_close("h row 1", h_row[1], h[1], 1e-14)


def test_reset_with_zoneout_matches_the_stepped_loop():
    wx, r, b, states = _inputs("lstm")
    reset = torch.rand(3, 6, generator=torch.Generator().manual_seed(2)) < 0.3
    h, last = fused_rnn(wx, r, b, states, cell="lstm", backend="reference", reset=reset,
                        zoneout=(0.3, 0.3), generator=torch.Generator().manual_seed(5))
    _, _, zone = _draw_masks(wx, r, 2, 0, 0, (0.3, 0.3), seed=5)
    h_ref, last_ref, _ = _stepped(wx, r, b, states, "lstm", zone=zone, reset=reset)
    assert_close("h", h, h_ref, 1e-12)
    assert_close("last_states", last, last_ref, 1e-12)


def test_reset_past_a_rows_length_changes_nothing():
    wx, r, b, states = _inputs("lstm")
    lengths = torch.tensor([6, 2, 4])
    reset = torch.zeros(3, 6, dtype=torch.bool)
    reset[1, 3:] = True  # row 1 ends after step 1
    reset[2, 5] = True   # row 2 ends after step 3
    out = fused_rnn(wx, r, b, states, cell="lstm", lengths=lengths, reset=reset,
                    backend="reference")
    plain = fused_rnn(wx, r, b, states, cell="lstm", lengths=lengths, backend="reference")
    assert torch.equal(out[0], plain[0]) and torch.equal(out[1], plain[1])


# ---- LayerNorm cells -----------------------------------------------------------------------

def _ln_heads(x):
    """[B, G, NH, DH] normalised per row and head over G*DH, unit gain, zero bias."""
    B, G, NH, DH = x.shape
    y = F.layer_norm(x.permute(0, 2, 1, 3).reshape(B, NH, G * DH), (G * DH,), eps=1e-5)
    return y.reshape(B, NH, G, DH).permute(0, 2, 1, 3)


def _stepped_layernorm(wx, r, b, states, cell_name):
    """Ba et al. 2016's layer-normalised LSTM (and the GRU built the same way), by hand."""
    B, T, G, NH, DH = wx.shape
    state = list(states.unbind(0))
    hs = []
    for t in range(T):
        hr = torch.einsum("bnd,gnde->bgne", state[0], r)
        a, u = _ln_heads(wx[:, t]), _ln_heads(hr) + b
        if cell_name == "layernorm_lstm":
            pre = a + u
            c = pre[:, 1].sigmoid() * state[1] + pre[:, 0].sigmoid() * pre[:, 2].tanh()
            h = pre[:, 3].sigmoid() * F.layer_norm(c, (DH,), eps=1e-5).tanh()
            state = [h, c]
        else:
            rr, z = (a[:, 0] + u[:, 0]).sigmoid(), (a[:, 1] + u[:, 1]).sigmoid()
            n = (a[:, 2] + rr * u[:, 2]).tanh()
            state = [(1 - z) * n + z * state[0]]
        hs.append(state[0])
    return torch.stack(hs, 1), torch.stack(state)


@pytest.mark.parametrize("cell_name", ["layernorm_lstm", "layernorm_gru"])
def test_layernorm_cell_against_a_stepped_float64_loop(cell_name):
    wx, r, b, states = _inputs(cell_name, B=3, T=5, NH=2, DH=4)
    leaves = [t.requires_grad_() for t in (wx, r, b, states)]
    h, last = fused_rnn(*leaves, cell=cell_name, backend="reference")
    h_ref, last_ref = _stepped_layernorm(wx, r, b, states, cell_name)
    assert_close("h", h, h_ref, 1e-12)
    assert_close("last_states", last, last_ref, 1e-12)
    for name, got, exp in zip("wx r b states".split(), _grads([h, last], leaves),
                              _grads([h_ref, last_ref], leaves)):
        assert_close(f"d {name}", got, exp, 1e-12)
    # the norm matters: the plain cell differs
    plain, _ = fused_rnn(wx, r, b, states, cell=cell_name.split("_")[1], backend="reference")
    assert (h - plain).abs().max() > 1e-2


@pytest.mark.parametrize("cell_name", ["layernorm_lstm", "layernorm_gru"])
def test_layernorm_cell_gradcheck(cell_name):
    wx, r, b, states = _inputs(cell_name, B=2, T=3, NH=2, DH=2, seed=4)
    lengths = torch.tensor([3, 1])

    def run(*args):
        return fused_rnn(*args, cell=cell_name, lengths=lengths, backend="reference")

    assert torch.autograd.gradcheck(run, [t.requires_grad_() for t in (wx, r, b, states)])


def test_layernorm_cell_auto_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(backends, "_warned", set())
    # the cpu back end serves the LayerNorm cells (test_fused_rnn_beyond_cpu.py): one that
    # does not declare SERVES_EXTRAS is simulated here to check the fallback itself
    monkeypatch.setattr(backends.load("cpu"), "SERVES_EXTRAS", False)
    wx, r, b, states = _inputs("layernorm_lstm")
    with pytest.warns(RuntimeWarning, match="layernorm_lstm") as record:
        auto = fused_rnn(wx, r, b, states, cell="layernorm_lstm")
        fused_rnn(wx, r, b, states, cell="layernorm_lstm")
    assert len([w for w in record if "falling back" in str(w.message)]) == 1
    ref = fused_rnn(wx, r, b, states, cell="layernorm_lstm", backend="reference")
    assert torch.equal(auto[0], ref[0])


# ---- every step's states -------------------------------------------------------------------

@pytest.mark.parametrize("cell_name", ["lstm", "slstm"])
def test_return_all_states_matches_the_loop_and_last_states(cell_name):
    wx, r, b, states = _inputs(cell_name)
    h, last, every = fused_rnn(wx, r, b, states, cell=cell_name, backend="reference",
                               return_all_states=True)
    assert every.shape == (6, states.shape[0], 3, 2, 3)
    assert torch.equal(every[-1], last)
    assert torch.equal(every[:, 0], h.transpose(0, 1))
    for t in (0, 3):
        _, last_t = fused_rnn(wx[:, :t + 1], r, b, states, cell=cell_name, backend="reference")
        assert_close(f"all_states[{t}]", every[t], last_t, 1e-14)
    lengths = random_lengths(3, 6, seed=1)
    _, last, every = fused_rnn(wx, r, b, states, cell=cell_name, lengths=lengths,
                               backend="reference", return_all_states=True)
    for row, n in enumerate(lengths.tolist()):
        assert torch.equal(every[n - 1:, :, row] if n > 0 else every[:, :, row],
                           last[:, row].expand(6 - max(n - 1, 0), *last[:, row].shape))


def test_return_all_states_gradcheck():
    wx, r, b, states = _inputs("lstm", B=2, T=3, NH=1, DH=2, seed=5)

    def run(*args):
        return fused_rnn(*args, cell="lstm", backend="reference", return_all_states=True,
                         dropconnect=0.3, zoneout=(0.3, 0.3),
                         generator=torch.Generator().manual_seed(0))[2]

    assert torch.autograd.gradcheck(run, [t.requires_grad_() for t in (wx, r, b, states)])


# ---- reproducibility ---------------------------------------------------------------------

def _noisy_run(seed, cell_name="lstm"):
    wx, r, b, states = _inputs(cell_name)
    leaves = [t.requires_grad_() for t in (wx, r, b, states)]
    out = fused_rnn(*leaves, cell=cell_name, backend="reference", dropconnect=0.3,
                    variational_dropout=0.3, zoneout=(0.2, 0.2),
                    generator=torch.Generator().manual_seed(seed))
    return [o.detach() for o in out] + list(_grads(list(out), leaves))


def test_same_seed_bitwise_same_and_other_seed_different():
    first, again, other = _noisy_run(7), _noisy_run(7), _noisy_run(8)
    assert all(torch.equal(a, e) for a, e in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_default_generator_follows_manual_seed():
    wx, r, b, states = _inputs("gru")
    torch.manual_seed(3)
    one = fused_rnn(wx, r, b, states, cell="gru", backend="reference", variational_dropout=0.5)
    torch.manual_seed(3)
    two = fused_rnn(wx, r, b, states, cell="gru", backend="reference", variational_dropout=0.5)
    assert torch.equal(one[0], two[0])


def test_deterministic_algorithms_two_runs_bitwise_equal():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, again = _noisy_run(9), _noisy_run(9)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert all(torch.equal(a, e) for a, e in zip(first, again))


# ---- refused inputs and back ends -----------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(dropconnect=1.0), ValueError, "dropconnect"),
    (dict(dropconnect=-0.1), ValueError, "dropconnect"),
    (dict(dropconnect="0.1"), TypeError, "dropconnect"),
    (dict(variational_dropout=1.5), ValueError, "variational_dropout"),
    (dict(zoneout=0.1), TypeError, "zoneout"),
    (dict(zoneout=(0.1, 0.2, 0.3)), TypeError, "zoneout"),
    (dict(zoneout=(0.1, 1.5)), ValueError, "zoneout"),
    (dict(reset=torch.zeros(3, 5, dtype=torch.bool)), ValueError, "reset"),
    (dict(reset=torch.zeros(3, 6)), TypeError, "reset"),
    (dict(reset=[[False] * 6] * 3), TypeError, "reset"),
    (dict(generator=3), TypeError, "generator"),
    (dict(return_all_states=1), TypeError, "return_all_states"),
])
def test_bad_extras_raise_naming_the_argument(kwargs, error, match):
    wx, r, b, states = _inputs("lstm")
    with pytest.raises(error, match=match):
        fused_rnn(wx, r, b, states, cell="lstm", backend="reference", **kwargs)


def test_generator_on_another_device_is_refused():
    """wx on the meta device stands for an accelerator this machine may not have."""
    wx, r, b, states = (t.to("meta") for t in _inputs("lstm"))
    with pytest.raises(ValueError, match="generator must be on wx's device meta"):
        fused_rnn(wx, r, b, states, cell="lstm", backend="reference", dropconnect=0.1,
                  generator=torch.Generator())


def test_cell_zoneout_is_refused_for_a_cell_with_h_only():
    wx, r, b, states = _inputs("gru")
    with pytest.raises(ValueError, match="zoneout"):
        fused_rnn(wx, r, b, states, cell="gru", backend="reference", zoneout=(0.1, 0.1))


def test_auto_on_cpu_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(backends, "_warned", set())
    # as above: the cpu back end serves the extras; a back end that does not is simulated
    monkeypatch.setattr(backends.load("cpu"), "SERVES_EXTRAS", False)
    wx, r, b, states = _inputs("lstm")
    kwargs = dict(variational_dropout=0.2, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match="variational_dropout") as record:
        auto = fused_rnn(wx, r, b, states, cell="lstm", **kwargs)
        fused_rnn(wx, r, b, states, cell="lstm", **kwargs)
    assert len([w for w in record if "falling back" in str(w.message)]) == 1
    kwargs["generator"] = torch.Generator().manual_seed(1)
    ref = fused_rnn(wx, r, b, states, cell="lstm", backend="reference", **kwargs)
    assert torch.equal(auto[0], ref[0])


# the triton and cpu back ends serve the extras (test_fused_rnn_beyond_triton.py,
# test_fused_rnn_beyond_cpu.py): a back end without SERVES_EXTRAS is simulated on cpu
@pytest.mark.parametrize("backend", ["cpu"])
@pytest.mark.parametrize("kwargs, match", [
    (dict(reset=torch.zeros(3, 6, dtype=torch.bool)), "reset"),
    (dict(return_all_states=True), "return_all_states"),
    (dict(variational_dropout=0.1), "variational_dropout"),
    (dict(cell="layernorm_gru"), "layernorm_gru"),
])
def test_named_fast_back_end_refuses_the_extras(backend, kwargs, match, monkeypatch):
    monkeypatch.setattr(backends.load(backend), "SERVES_EXTRAS", False)
    kwargs = {"cell": "lstm", **kwargs}
    wx, r, b, states = _inputs(kwargs["cell"])
    with pytest.raises(NotImplementedError, match=match):
        fused_rnn(wx.float(), r.float(), b.float(), states.float(), backend=backend, **kwargs)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_dropconnect_alone_runs_the_plain_path_with_masked_weights(backend, monkeypatch):
    """dropconnect alone is the plain recurrence with r * mask: a back end serves it through its
    plain path (so one that serves no extras still does), with the reference's results and d(r)
    masked."""
    monkeypatch.setattr(backends.load(backend), "SERVES_EXTRAS", False)
    wx, r, b, states = (t.float().requires_grad_() for t in _inputs("lstm"))
    out = fused_rnn(wx, r, b, states, cell="lstm", backend=backend, dropconnect=0.4,
                    generator=torch.Generator().manual_seed(3))
    ref_in = [t.detach().double().requires_grad_() for t in (wx, r, b, states)]
    ref = fused_rnn(*ref_in, cell="lstm", backend="reference", dropconnect=0.4,
                    generator=torch.Generator().manual_seed(3))
    mask = torch.rand(r.shape, generator=torch.Generator().manual_seed(3)) >= 0.4
    plain = fused_rnn(*(t.detach().double() for t in (wx,)), (r.detach().double() * mask) / 0.6,
                      b.detach().double(), states.detach().double(), cell="lstm",
                      backend="reference")
    assert torch.allclose(ref[0], plain[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[0].double(), ref[0], rtol=1e-5, atol=1e-5)
    (out[0].sum() + out[1][1].sum()).backward()
    (ref[0].sum() + ref[1][1].sum()).backward()
    for ours, theirs in zip((wx, r, b, states), ref_in):
        assert torch.isfinite(ours.grad).all()
        torch.testing.assert_close(ours.grad.double(), theirs.grad, rtol=1e-4, atol=1e-5)
    assert (r.grad[~mask] == 0).all()
