"""The options beyond torch.nn on the modules: the regularisers dropconnect /
variational_dropout / zoneout of flashseq.LSTM, GRU, RNN (constructor, training mode only), and
forward's ``reset`` and ``generator`` there and on LayerNormLSTM / LayerNormGRU; PackedSequence
input of the LayerNorm modules; deterministic runs with masks."""
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import flashseq
from flashseq.kernels.fused_rnn import fused_rnn
from flashseq.nn import rnn_base

KINDS = ("lstm", "gru", "rnn")
ALL_KINDS = KINDS + ("layernorm_lstm", "layernorm_gru")
CELLS = {"lstm": ("lstm", 4), "gru": ("gru", 3), "rnn": ("elman", 1),
         "layernorm_lstm": ("layernorm_lstm", 4), "layernorm_gru": ("layernorm_gru", 3)}
REGS = {"lstm": dict(dropconnect=0.3, variational_dropout=0.25, zoneout=(0.2, 0.3)),
        "gru": dict(dropconnect=0.3, variational_dropout=0.25, zoneout=(0.2, 0.0)),
        "rnn": dict(dropconnect=0.3, variational_dropout=0.25, zoneout=(0.2, 0.0))}
REGS["layernorm_lstm"], REGS["layernorm_gru"] = REGS["lstm"], REGS["gru"]


def make(kind, *args, **kwargs):
    cls = {"lstm": flashseq.LSTM, "gru": flashseq.GRU, "rnn": flashseq.RNN,
           "layernorm_lstm": flashseq.LayerNormLSTM, "layernorm_gru": flashseq.LayerNormGRU}[kind]
    return cls(*args, **kwargs)


def torch_twin(kind, module):
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    twin = cls(module.input_size, module.hidden_size, module.num_layers,
               bidirectional=module.bidirectional, dtype=module.weight_ih_l0.dtype)
    twin.load_state_dict(module.state_dict())
    return twin


def make_hx(kind, L, B, H, dtype=torch.float64):
    h = torch.randn(L, B, H, dtype=dtype)
    return (h, torch.randn(L, B, H, dtype=dtype)) if kind.endswith("lstm") else h


def hx_row(hx, b):
    """The unbatched hx of row b."""
    return tuple(s[:, b] for s in hx) if isinstance(hx, tuple) else hx[:, b]


def as_list(hx):
    return list(hx) if isinstance(hx, tuple) else [hx]


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def pieces_run(module, x_row, hx, reset_row):
    """One row run as separate unbatched calls on the pieces reset_row cuts it into.
    Returns (output [T, D*H], finals list of [L*D, H]): the forward direction's final states
    are the last piece's, the reverse direction's the first piece's (it ends at step 0)."""
    cuts = [0] + [t for t in range(1, x_row.shape[0]) if reset_row[t]] + [x_row.shape[0]]
    runs = [module(x_row[a:b], hx) for a, b in zip(cuts, cuts[1:])]
    out = torch.cat([o for o, _ in runs])
    first, last = as_list(runs[0][1]), as_list(runs[-1][1])
    D = module.num_directions
    finals = [torch.stack([(lst if k % D == 0 else fst)[k] for k in range(fst.shape[0])])
              for fst, lst in zip(first, last)]
    return out, finals


# ------------------------------------------------------------------ constructor and signature
@pytest.mark.parametrize("kind", KINDS)
def test_keywords_are_stored_and_shown_and_defaults_stay_torch(kind):
    m = make(kind, 3, 4, **REGS[kind])
    assert (m.dropconnect, m.variational_dropout, m.zoneout) == (
        REGS[kind]["dropconnect"], REGS[kind]["variational_dropout"], REGS[kind]["zoneout"])
    assert "dropconnect=0.3" in repr(m) and "zoneout=(0.2," in repr(m)
    plain = make(kind, 3, 4)
    assert repr(plain).split("(", 1)[1] == repr(torch_twin(kind, plain)).split("(", 1)[1]
    assert m.state_dict().keys() == plain.state_dict().keys()  # plain attributes, no buffers


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_forward_keeps_torch_signature_and_adds_keyword_only_options(kind):
    params = inspect.signature(make(kind, 3, 4).forward).parameters
    assert list(params)[:2] == ["input", "hx"] and params["hx"].default is None
    for name in ("reset", "generator"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default is None


# ------------------------------------------------------------------ train / eval
@pytest.mark.parametrize("kind", KINDS)
def test_eval_applies_no_mask(kind):
    torch.manual_seed(0)
    m = make(kind, 3, 5, 2, bidirectional=True, dtype=torch.float64, **REGS[kind]).eval()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    out, _ = m(x, generator=torch.Generator().manual_seed(1))
    ref, _ = torch_twin(kind, m)(x)
    assert rel(out, ref) < 1e-12


def manual_direction(kind, m, x_bt, layer, direction, gen, regs):
    """One layer and direction through fused_rnn (reference) with the masks from ``gen``."""
    cell, G = CELLS[kind]
    sfx = "_reverse" if direction else ""
    w_ih, w_hh, b_ih, b_hh = (getattr(m, f"{n}_l{layer}{sfx}") for n in
                              ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    H = m.hidden_size
    x_in = x_bt.flip(1) if direction else x_bt
    B, T = x_in.shape[:2]
    wx = F.linear(x_in, w_ih, b_ih).view(B, T, G, 1, H)
    r = w_hh.view(G, H, H).transpose(1, 2).unsqueeze(1)
    h, _ = fused_rnn(wx, r, b_hh.view(G, 1, H), cell=cell, backend="reference", generator=gen,
                     **regs)
    h = h.reshape(B, T, H)
    return h.flip(1) if direction else h


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_train_masks_are_fused_rnns_drawn_from_the_generator(kind):
    """Training mode: the module equals fused_rnn's reference fed the same generator, one draw
    per direction in the documented order (forward, then reverse), and differs from eval."""
    torch.manual_seed(1)
    regs = REGS[kind]
    m = make(kind, 3, 5, bidirectional=True, dtype=torch.float64, **regs)
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    out, _ = m(x, generator=torch.Generator().manual_seed(11))
    gen = torch.Generator().manual_seed(11)
    x_bt = x.transpose(0, 1)
    ref = torch.cat([manual_direction(kind, m, x_bt, 0, d, gen, regs) for d in (0, 1)], -1)
    assert rel(out.transpose(0, 1), ref) < 1e-12
    again, _ = m(x, generator=torch.Generator().manual_seed(11))
    assert torch.equal(out, again)
    plain, _ = m.eval()(x)
    assert rel(out, plain) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_fused_rnn_gets_exactly_the_keywords_in_use(kind, monkeypatch):
    """No option: exactly the plain call (no extra keyword reaches fused_rnn); options: only
    those in use, with the module's backend ("auto")."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return fused_rnn(*args, **kwargs)

    monkeypatch.setattr(rnn_base, "fused_rnn", spy)
    # the plain call takes fast_path.py on CPU (no fused_rnn call to see): the general path here
    monkeypatch.setattr(rnn_base.fast_path, "_plain_cpu_call", lambda *args: False)
    x = torch.randn(4, 2, 3)
    make(kind, 3, 4)(x)
    assert set(calls[-1]) == {"cell", "lengths", "backend"}
    gen = torch.Generator().manual_seed(0)
    make(kind, 3, 4, dropconnect=0.2)(x, generator=gen)
    assert set(calls[-1]) == {"cell", "lengths", "backend", "dropconnect", "generator"}
    assert calls[-1]["backend"] == "auto" and calls[-1]["generator"] is gen
    make(kind, 3, 4, dropconnect=0.2).eval()(x, generator=gen)
    assert set(calls[-1]) == {"cell", "lengths", "backend"}


# ------------------------------------------------------------------ reset
def reset_mask(B, T):
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, 3] = True
    reset[1, 2] = reset[1, 5] = True
    reset[2, 0] = True  # a reset before the first step changes nothing
    return reset


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_reset_equals_separate_runs_of_the_pieces(kind):
    """Two layers, both directions, given hx: a reset at step k equals running the pieces
    before and from k separately (outputs and final states)."""
    torch.manual_seed(2)
    B, T, L = 3, 7, 2
    m = make(kind, 3, 4, L, bidirectional=True, dtype=torch.float64, backend="reference").eval()
    x = torch.randn(T, B, 3, dtype=torch.float64)
    hx = make_hx(kind, 2 * L, B, 4)
    reset = reset_mask(B, T)
    out, finals = m(x, hx, reset=reset)
    plain, _ = m(x, hx)
    assert rel(out, plain) > 1e-3
    for b in range(B):
        ref_out, ref_finals = pieces_run(m, x[:, b], hx_row(hx, b), reset[b])
        assert rel(out[:, b], ref_out) < 1e-12
        for got, want in zip(as_list(finals), ref_finals):
            assert rel(got[:, b], want) < 1e-12


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_reset_with_packed_input(kind):
    """PackedSequence (unsorted lengths): reset [B, T] in the original row order, T the longest
    length; each row equals separate runs of its pieces."""
    torch.manual_seed(3)
    lengths = torch.tensor([5, 7, 3])
    B, T = 3, 7
    m = make(kind, 3, 4, bidirectional=True, dtype=torch.float64, backend="reference").eval()
    x = torch.randn(T, B, 3, dtype=torch.float64)
    hx = make_hx(kind, 2, B, 4)
    reset = reset_mask(B, T)
    reset[2, 4] = True  # past row 2's length: ignored
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, finals = m(packed, hx, reset=reset)
    out, out_lengths = pad_packed_sequence(out)
    assert torch.equal(out_lengths, lengths)
    for b in range(B):
        n = int(lengths[b])
        ref_out, ref_finals = pieces_run(m, x[:n, b], hx_row(hx, b), reset[b, :n])
        assert rel(out[:n, b], ref_out) < 1e-12
        for got, want in zip(as_list(finals), ref_finals):
            assert rel(got[:, b], want) < 1e-12


def test_reset_batch_first_and_unbatched():
    torch.manual_seed(4)
    m = flashseq.GRU(3, 4, batch_first=True, dtype=torch.float64, backend="reference")
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    reset = torch.zeros(2, 6, dtype=torch.bool)
    reset[:, 4] = True
    out, _ = m(x, reset=reset)
    ref = torch.cat([m(x[:, :4])[0], m(x[:, 4:])[0]], 1)
    assert rel(out, ref) < 1e-12
    out1, _ = m(x[0], reset=reset[0])
    assert rel(out1, ref[0]) < 1e-12


# ------------------------------------------------------------------ LayerNorm modules, packed
@pytest.mark.parametrize("kind", ("layernorm_lstm", "layernorm_gru"))
def test_layernorm_modules_take_packed_sequences(kind):
    torch.manual_seed(5)
    lengths = torch.tensor([4, 6, 2])
    m = make(kind, 3, 4, 2, bidirectional=True, dtype=torch.float64, backend="reference").eval()
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    hx = make_hx(kind, 4, 3, 4)
    out, finals = m(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
    out, _ = pad_packed_sequence(out)
    for b in range(3):
        n = int(lengths[b])
        ref_out, ref_finals = m(x[:n, b], hx_row(hx, b))
        assert rel(out[:n, b], ref_out) < 1e-12
        for got, want in zip(as_list(finals), as_list(ref_finals)):
            assert rel(got[:, b], want) < 1e-12


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("kind", ("lstm", "layernorm_gru"))
def test_deterministic_runs_with_masks_are_bitwise_equal(kind):
    """Under torch.use_deterministic_algorithms(True) two training runs with the same generator
    seed give bitwise identical outputs and gradients (backend "auto")."""
    torch.manual_seed(6)
    m = make(kind, 3, 8, 2, **REGS[kind])
    x = torch.randn(9, 4, 3, requires_grad=True)
    reset = torch.zeros(4, 9, dtype=torch.bool)
    reset[1, 5] = True
    dy = torch.randn(9, 4, 8)

    def run():
        out, _ = m(x, reset=reset, generator=torch.Generator().manual_seed(21))
        grads = torch.autograd.grad(out, [x, *m.parameters()], dy)
        return [out.detach(), *grads]

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = run(), run()
    finally:
        torch.use_deterministic_algorithms(before)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert all(torch.isfinite(a).all() for a in first)


# ------------------------------------------------------------------ bad values
@pytest.mark.parametrize("kind", KINDS)  # the LayerNorm modules' are in test_layernorm_rnn.py
@pytest.mark.parametrize("kwargs, error, word", [
    (dict(dropconnect=1.0), ValueError, r"dropconnect must lie in \[0, 1\)"),
    (dict(dropconnect="0.1"), TypeError, "dropconnect must be a float"),
    (dict(variational_dropout=-0.1), ValueError, "variational_dropout must lie"),
    (dict(zoneout=0.1), TypeError, r"zoneout must be a pair \(p_h, p_c\)"),
    (dict(zoneout=(0.1, 1.5)), ValueError, r"zoneout\[1\] \(p_c\) must lie in \[0, 1\]"),
])
def test_bad_regularisers_raise_naming_the_argument(kind, kwargs, error, word):
    with pytest.raises(error, match=word):
        make(kind, 3, 4, **kwargs)


@pytest.mark.parametrize("kind", ("gru", "rnn"))
def test_zoneout_of_a_cell_state_needs_one(kind):
    with pytest.raises(ValueError, match=r"zoneout\[1\]"):
        make(kind, 3, 4, zoneout=(0.1, 0.2))


@pytest.mark.parametrize("build", [
    lambda **kw: flashseq.LSTM(3, 4, proj_size=2, **kw),
    lambda **kw: flashseq.RNN(3, 4, nonlinearity="relu", **kw),
    lambda **kw: flashseq.GRU(3, 4, parallel_in_time=True, **kw),
], ids=["proj_size", "relu", "parallel_in_time"])
def test_options_need_the_fused_recurrence(build):
    with pytest.raises(ValueError, match="fused_rnn"):
        build(dropconnect=0.1)
    with pytest.raises(ValueError, match="fused_rnn"):
        build()(torch.randn(4, 2, 3), reset=torch.zeros(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_bad_reset_and_generator_raise_naming_the_argument(kind):
    m = make(kind, 3, 4, backend="reference")
    x = torch.randn(5, 2, 3)
    with pytest.raises(TypeError, match="reset"):
        m(x, reset=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"reset.*\(2, 5\)"):
        m(x, reset=torch.zeros(5, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="reset"):
        m(x, reset=[[False] * 5] * 2)
    with pytest.raises(TypeError, match="generator"):
        m.train()
        make(kind, 3, 4, dropconnect=0.1)(x, generator=0)


def test_tracing_refuses_masks_and_resets():
    """torch.jit.trace runs torch.nn's forward, which has no masks: training-mode regularisers
    or a reset raise instead of being dropped (or frozen into the trace); eval traces."""
    m = flashseq.LSTM(3, 4, dropconnect=0.2)
    x = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=r"\.eval\(\)"):
        torch.jit.trace(m, x)
    traced = torch.jit.trace(m.eval(), x)
    assert torch.allclose(traced(x)[0], m(x)[0])
