"""``forward(..., return_all_states=True)`` of flashseq.LSTM / GRU / RNN and LayerNormLSTM /
GRU: every step's states of every layer and direction, in hx's structure, laid out
[L*D, T, B, H] ([L*D, B, T, H] batch_first, [L*D, T, H] unbatched), checked against a stepped
loop of torch.nn.LSTMCell / GRUCell / RNNCell (or an explicit LayerNorm cell) with the module's
weights, forward and gradients; gradcheck through the states; PackedSequence rows (final states
past a row's length); refusals."""
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import flashseq
from flashseq.kernels.fused_rnn import fused_rnn
from flashseq.nn import rnn_base

KINDS = ("lstm", "gru", "rnn", "layernorm_lstm", "layernorm_gru")
GATES = {"lstm": 4, "gru": 3, "rnn": 1, "layernorm_lstm": 4, "layernorm_gru": 3}
F64 = torch.float64


def make(kind, *args, **kwargs):
    cls = {"lstm": flashseq.LSTM, "gru": flashseq.GRU, "rnn": flashseq.RNN,
           "layernorm_lstm": flashseq.LayerNormLSTM, "layernorm_gru": flashseq.LayerNormGRU}[kind]
    return cls(*args, **kwargs)


def has_c(kind):
    return kind.endswith("lstm")


def as_list(states):
    return list(states) if isinstance(states, tuple) else [states]


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


# ------------------------------------------------------------------ the stepped reference
def layer_norm(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-5)


def ln_lstm_step(x_t, state, w_ih, w_hh, b_ih, b_hh):
    h, c = state
    pre = layer_norm(F.linear(x_t, w_ih, b_ih)) + layer_norm(h @ w_hh.T) + b_hh
    i, f, g, o = pre.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(layer_norm(c)), c


def ln_gru_step(x_t, h, w_ih, w_hh, b_ih, b_hh):
    a = layer_norm(F.linear(x_t, w_ih, b_ih)).chunk(3, -1)
    u = (layer_norm(h @ w_hh.T) + b_hh).chunk(3, -1)
    r, z = torch.sigmoid(a[0] + u[0]), torch.sigmoid(a[1] + u[1])
    n = torch.tanh(a[2] + r * u[2])
    return (1 - z) * n + z * h


def step_fn(kind, m, layer, direction):
    """(x_t [B, F], states list) -> new states list, with the module's Parameters of that
    layer and direction (autograd reaches them)."""
    sfx = "_reverse" if direction else ""
    w = [getattr(m, f"{n}_l{layer}{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    if kind.startswith("layernorm"):
        if kind == "layernorm_lstm":
            return lambda x_t, s: list(ln_lstm_step(x_t, s, *w))
        return lambda x_t, s: [ln_gru_step(x_t, s[0], *w)]
    cls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[kind]
    cell = cls(w[0].shape[1], m.hidden_size, dtype=w[0].dtype)
    params = dict(zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), w))
    if kind == "lstm":
        return lambda x_t, s: list(functional_call(cell, params, (x_t, tuple(s))))
    return lambda x_t, s: [functional_call(cell, params, (x_t, s[0]))]


def stepped_all_states(kind, m, x, hx):
    """x [B, T, F], hx list of S [L*D, B, H] -> (output [B, T, D*H], S tensors [L*D, B, T, H]):
    every layer and direction stepped one time position at a time, the reverse direction from
    T-1 down to 0, each state stored at the time position it was computed at."""
    B, T, H = x.shape[0], x.shape[1], m.hidden_size
    S = 2 if has_c(kind) else 1
    every = [[] for _ in range(S)]
    for layer in range(m.num_layers):
        outs = []
        for direction in range(m.num_directions):
            k = layer * m.num_directions + direction
            step = step_fn(kind, m, layer, direction)
            state = [s[k] for s in hx]
            per_t = [None] * T
            for t in (reversed(range(T)) if direction else range(T)):
                state = step(x[:, t], state)
                per_t[t] = state
            for s in range(S):
                every[s].append(torch.stack([p[s] for p in per_t], 1))  # [B, T, H]
            outs.append(every[0][-1])
        x = torch.cat(outs, -1)
    return x, [torch.stack(e) for e in every]


def random_hx(kind, LD, B, H):
    return [torch.randn(LD, B, H, dtype=F64) for _ in range(2 if has_c(kind) else 1)]


def join(kind, states):
    return tuple(states) if has_c(kind) else states[0]


# ------------------------------------------------------------------ signature, default
@pytest.mark.parametrize("kind", KINDS)
def test_forward_takes_keyword_only_return_all_states_default_false(kind):
    param = inspect.signature(make(kind, 3, 4).forward).parameters["return_all_states"]
    assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is False


@pytest.mark.parametrize("kind", ("lstm", "gru", "rnn"))
def test_fused_rnn_gets_return_all_states_only_when_asked(kind, monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return fused_rnn(*args, **kwargs)

    monkeypatch.setattr(rnn_base, "fused_rnn", spy)
    # the plain call takes fast_path.py on CPU (no fused_rnn call to see): the general path here
    monkeypatch.setattr(rnn_base.fast_path, "_plain_cpu_call", lambda *args: False)
    m = make(kind, 3, 4)
    x = torch.randn(5, 2, 3)
    plain = m(x)
    assert len(plain) == 2 and set(calls[-1]) == {"cell", "lengths", "backend"}
    out, finals, _ = m(x, return_all_states=True)
    assert set(calls[-1]) == {"cell", "lengths", "backend", "return_all_states"}
    # the cpu back end serves return_all_states in its extras loop: float32 rounding may differ
    assert rel(out, plain[0]) < 1e-5
    for got, want in zip(as_list(finals), as_list(plain[1])):
        assert rel(got, want) < 1e-5


# ------------------------------------------------------------------ against a stepped loop
@pytest.mark.parametrize("layout", ("time_major", "batch_first", "unbatched"))
@pytest.mark.parametrize("kind", KINDS)
def test_all_states_equal_a_stepped_cell_loop_forward_and_gradients(kind, layout):
    """Two layers, both directions, given hx: every layer's and direction's states at every
    time position equal a stepped torch.nn.*Cell loop (an explicit LayerNorm cell for the
    LayerNorm modules) with the same weights, and so do the gradients of a loss on them with
    respect to the input, hx and every parameter."""
    torch.manual_seed(10)
    B, T, I, H, L = 3, 5, 3, 4, 2
    batch_first = layout == "batch_first"
    m = make(kind, I, H, L, bidirectional=True, batch_first=batch_first, dtype=F64,
             backend="reference")
    x_bt = torch.randn(B, T, I, dtype=F64, requires_grad=True)
    hx = [s.requires_grad_() for s in random_hx(kind, 2 * L, B, H)]
    if layout == "unbatched":
        x_bt = x_bt[:1].detach().requires_grad_()
        hx = [s[:, :1].detach().requires_grad_() for s in hx]
        out, finals, every = m(x_bt[0], join(kind, [s[:, 0] for s in hx]), return_all_states=True)
        out, finals = out.unsqueeze(0), [s.unsqueeze(1) for s in as_list(finals)]
        every = [e.unsqueeze(2) for e in as_list(every)]  # [L*D, T, 1, H]
    else:
        x_in = x_bt if batch_first else x_bt.transpose(0, 1)
        out, finals, every = m(x_in, join(kind, hx), return_all_states=True)
        out = out if batch_first else out.transpose(0, 1)
        finals, every = as_list(finals), as_list(every)
    if batch_first:
        every = [e.transpose(1, 2) for e in every]  # -> [L*D, T, B, H]
    assert isinstance(every, list) and len(every) == (2 if has_c(kind) else 1)
    Bx = x_bt.shape[0]
    for e in every:
        assert e.shape == (2 * L, T, Bx, H)

    ref_out, ref_every = stepped_all_states(kind, m, x_bt, hx)  # [L*D, B, T, H]
    ref_every = [e.transpose(1, 2) for e in ref_every]
    assert rel(out, ref_out) < 1e-12
    for got, want in zip(every, ref_every):
        assert rel(got, want) < 1e-12

    weights = [torch.randn_like(e) for e in every]
    inputs = [x_bt, *hx, *m.parameters()]
    grads = torch.autograd.grad(sum((w * e).sum() for w, e in zip(weights, every)), inputs)
    ref_grads = torch.autograd.grad(sum((w * e).sum() for w, e in zip(weights, ref_every)), inputs)
    for g, r in zip(grads, ref_grads):
        assert rel(g, r) < 1e-10


@pytest.mark.parametrize("kind", KINDS)
def test_last_step_is_the_final_state_and_h_is_the_output(kind):
    """Full-length rows: the forward direction's last time position and the reverse
    direction's first one are h_n (and c_n) of each layer; the last layer's h at every step is
    the output, both directions."""
    torch.manual_seed(11)
    L, H = 2, 4
    m = make(kind, 3, H, L, bidirectional=True, dtype=F64, backend="reference")
    x = torch.randn(6, 2, 3, dtype=F64)
    out, finals, every = m(x, join(kind, random_hx(kind, 2 * L, 2, H)), return_all_states=True)
    for final, e in zip(as_list(finals), as_list(every)):
        assert torch.equal(e[0::2, -1], final[0::2])  # forward directions: after step T-1
        assert torch.equal(e[1::2, 0], final[1::2])  # reverse directions: after step 0
        assert not torch.equal(e[0::2, -2], final[0::2])
    h_all = as_list(every)[0]
    assert torch.equal(torch.cat([h_all[2], h_all[3]], -1), out)


def test_head_wise_lstm_all_states():
    """num_heads > 1: the heads' units come back in hidden_size order, as in h_n and output."""
    torch.manual_seed(17)
    m = flashseq.LSTM(3, 8, num_heads=2, bidirectional=True, dtype=F64, backend="reference")
    out, (h_n, c_n), (h_all, c_all) = m(torch.randn(5, 2, 3, dtype=F64), return_all_states=True)
    assert h_all.shape == c_all.shape == (2, 5, 2, 8)
    assert torch.equal(torch.cat([h_all[0], h_all[1]], -1), out)
    assert torch.equal(c_all[0, -1], c_n[0]) and torch.equal(c_all[1, 0], c_n[1])


@pytest.mark.parametrize("backend", ("reference", "cpu"))
@pytest.mark.parametrize("kind", ("lstm", "gru", "layernorm_lstm"))
def test_all_states_gradcheck(kind, backend):
    """gradcheck (float64) of every step's states with respect to the input, hx and every
    parameter; both directions, a tiny shape; two layers on the cpu back end, one on the slower
    reference (whose two-layer chain the stepped-loop test checks)."""
    if backend not in flashseq.ops.available_backends(torch.device("cpu")):
        pytest.skip(f"backend {backend!r} is not available here")
    torch.manual_seed(12)
    B, T, I, H, L = 2, 3, 2, 2, 2 if backend == "cpu" else 1
    m = make(kind, I, H, L, bidirectional=True, dtype=F64, backend=backend)
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    hx = [s.requires_grad_() for s in random_hx(kind, 2 * L, B, H)]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    S = len(hx)

    def all_states(x, *rest):
        states, weights = rest[:S], dict(zip(names, rest[S:]))
        _, _, every = functional_call(m, weights, (x, join(kind, list(states))),
                                      {"return_all_states": True})
        return tuple(as_list(every))

    assert torch.autograd.gradcheck(all_states, (x, *hx, *params))


# ------------------------------------------------------------------ PackedSequence
@pytest.mark.parametrize("batch_first", (False, True))
@pytest.mark.parametrize("kind", KINDS)
def test_packed_rows_match_their_own_runs_and_hold_final_states_past_their_length(
        kind, batch_first):
    """Unsorted PackedSequence: all_states padded to the longest length, rows in the original
    order, laid out as for padded input (batch_first or not). Within a row's length each
    position equals the row run alone; past it, every layer and direction holds the row's final
    states (h_n, c_n), fused_rnn's carried states, not zeros."""
    torch.manual_seed(13)
    lengths = torch.tensor([4, 6, 2])
    B, T, H, L = 3, 6, 4, 2
    m = make(kind, 3, H, L, bidirectional=True, batch_first=batch_first, dtype=F64,
             backend="reference")
    x = torch.randn(T, B, 3, dtype=F64)
    hx = random_hx(kind, 2 * L, B, H)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, finals, every = m(packed, join(kind, hx), return_all_states=True)
    every = [e if not batch_first else e.transpose(1, 2) for e in as_list(every)]  # [L*D, T, B, H]
    for e in every:
        assert e.shape == (2 * L, T, B, H)
    out, _ = pad_packed_sequence(out)
    last_layer_h = torch.cat([every[0][2], every[0][3]], -1)  # [T, B, 2H]
    for b in range(B):
        n = int(lengths[b])
        assert torch.equal(last_layer_h[:n, b], out[:n, b])
        _, row_finals, row_every = m(x[:n, b], join(kind, [s[:, b] for s in hx]),
                                     return_all_states=True)  # unbatched: [L*D, n, H]
        for got, want, final, mine in zip(every, as_list(row_every), as_list(row_finals),
                                          as_list(finals)):
            assert rel(got[:, :n, b], want) < 1e-12
            assert rel(mine[:, b], final) < 1e-12
            if n < T:
                assert torch.equal(got[:, n:, b], mine[:, b].unsqueeze(1).expand(-1, T - n, -1))


def test_packed_all_states_gradcheck_cpu():
    """gradcheck through all_states of a PackedSequence on the cpu back end: the carried
    states past a row's length pass their gradient to that row's last step."""
    if "cpu" not in flashseq.ops.available_backends(torch.device("cpu")):
        pytest.skip("backend 'cpu' is not available here")
    torch.manual_seed(14)
    m = flashseq.LSTM(2, 2, bidirectional=True, dtype=F64, backend="cpu")
    names = [n for n, _ in m.named_parameters()]
    lengths = torch.tensor([2, 4, 3])
    x = torch.randn(4, 3, 2, dtype=F64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def all_states(x, *params):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        _, _, (h_all, c_all) = functional_call(m, dict(zip(names, params)), (packed,),
                                               {"return_all_states": True})
        return h_all, c_all

    assert torch.autograd.gradcheck(all_states, (x, *params))


# ------------------------------------------------------------------ other back ends and options
def test_triton_back_end_serves_module_all_states():
    """backend="triton" (the interpreter on CPU): a bidirectional 2-layer LSTM's all_states and
    their gradients equal the reference back end's (float32)."""
    if "triton" not in flashseq.ops.available_backends(torch.device("cpu")):
        pytest.skip("triton is not available on this machine")
    torch.manual_seed(15)
    m = flashseq.LSTM(3, 8, 2, bidirectional=True, backend="triton")
    ref = flashseq.LSTM(3, 8, 2, bidirectional=True, backend="reference")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3)
    w = [torch.randn(4, 5, 2, 8) for _ in range(2)]
    results = []
    for module in (m, ref):
        _, _, every = module(x, return_all_states=True)
        loss = sum((wi * e).sum() for wi, e in zip(w, every))
        results.append((every, torch.autograd.grad(loss, list(module.parameters()))))
    (got, got_g), (want, want_g) = results
    for a, b in zip(got + got_g, want + want_g):
        assert rel(a, b) < 1e-5


def test_zoneout_one_keeps_every_step_at_hx():
    """Training mode with zoneout (1, 1): no state ever changes, so every step's states are
    hx's (the regularisers and return_all_states together)."""
    torch.manual_seed(16)
    m = flashseq.LSTM(3, 4, 2, dtype=F64, zoneout=(1.0, 1.0), backend="reference").train()
    hx = random_hx("lstm", 2, 2, 4)
    _, _, every = m(torch.randn(5, 2, 3, dtype=F64), tuple(hx), return_all_states=True,
                    generator=torch.Generator().manual_seed(0))
    for e, s in zip(every, hx):
        assert torch.equal(e, s.unsqueeze(1).expand(-1, 5, -1, -1))


def test_empty_batch_gives_empty_all_states():
    m = flashseq.GRU(3, 4, 2, bidirectional=True)
    out, h_n, h_all = m(torch.randn(5, 0, 3), return_all_states=True)
    assert out.shape == (5, 0, 8) and h_n.shape == (4, 0, 4) and h_all.shape == (4, 5, 0, 4)


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("build", [
    lambda: flashseq.LSTM(3, 4, proj_size=2),
    lambda: flashseq.RNN(3, 4, nonlinearity="relu"),
    lambda: flashseq.GRU(3, 4, parallel_in_time=True),
], ids=["proj_size", "relu", "parallel_in_time"])
def test_return_all_states_needs_the_fused_recurrence(build):
    with pytest.raises(ValueError, match="return_all_states"):
        build()(torch.randn(4, 2, 3), return_all_states=True)


@pytest.mark.parametrize("kind", KINDS)
def test_return_all_states_must_be_a_bool(kind):
    with pytest.raises(TypeError, match="return_all_states must be a bool"):
        make(kind, 3, 4)(torch.randn(4, 2, 3), return_all_states=1)


def test_tracing_refuses_return_all_states():
    """torch.jit.trace runs torch.nn's forward, which has no per-step states: a ValueError
    naming the argument instead of a silently different result."""
    m = flashseq.LSTM(3, 4).eval()
    x = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match="return_all_states"):
        torch.jit.trace(lambda x: m(x, return_all_states=True)[2][0], x)
