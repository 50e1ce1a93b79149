"""flashseq.LayerNormLSTM / LayerNormGRU against a stepped float64 reference written here (the
placement documented in flashseq/cells/layernorm_lstm.py and layernorm_gru.py), plus the
module contract: shapes, train/eval masks, argument checks, state_dict, the fallback warning."""
import io
import warnings

import pytest
import torch

import flashseq
from flashseq.kernels.fused_rnn import backends

EPS = 1e-5


def ln(x):
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).square().mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + EPS)


def ref_step(kind, wx_t, rh_t, b, h, c):
    """wx_t = x W_ih^T + b_ih, rh_t = h W_hh^T (both [B, G*H]); returns (h, c)."""
    H = h.shape[-1]
    if kind == "lstm":
        pre = ln(wx_t) + ln(rh_t) + b
        i, f, g, o = pre.split(H, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(ln(c)), c
    a = ln(wx_t)
    u = ln(rh_t) + b
    r = torch.sigmoid(a[:, :H] + u[:, :H])
    z = torch.sigmoid(a[:, H:2 * H] + u[:, H:2 * H])
    n = torch.tanh(a[:, 2 * H:] + r * u[:, 2 * H:])
    return (1 - z) * n + z * h, None


def reference(module, kind, x, hx):
    """x [B, T, F] batch-major, hx list of S tensors [L*D, B, H]; returns out, finals."""
    L, D, H = module.num_layers, module.num_directions, module.hidden_size
    B, T = x.shape[:2]
    finals = [[], []]
    for layer in range(L):
        outs = []
        for d in range(D):
            sfx = "_reverse" if d else ""
            p = {n: getattr(module, f"{n}_l{layer}{sfx}") for n in
                 ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            k = layer * D + d
            h = hx[0][k]
            c = hx[1][k] if kind == "lstm" else None
            steps = range(T - 1, -1, -1) if d else range(T)
            out = [None] * T
            for t in steps:
                wx_t = x[:, t] @ p["weight_ih"].T + p["bias_ih"]
                h, c = ref_step(kind, wx_t, h @ p["weight_hh"].T, p["bias_hh"], h, c)
                out[t] = h
            outs.append(torch.stack(out, 1))
            finals[0].append(h)
            if kind == "lstm":
                finals[1].append(c)
        x = torch.cat(outs, -1)
    return x, [torch.stack(f) for f in finals if f]


def make(kind, *args, **kw):
    cls = flashseq.LayerNormLSTM if kind == "lstm" else flashseq.LayerNormGRU
    kw.setdefault("backend", "reference")
    return cls(*args, **kw)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("layers,bidir,batch_first,batched,given_hx", [
    (1, False, False, True, False),
    (2, True, True, True, True),
    (2, False, False, False, True),
    (1, True, False, True, True),
])
def test_matches_stepped_float64_reference(kind, layers, bidir, batch_first, batched, given_hx):
    torch.manual_seed(0)
    I, H, B, T = 5, 6, 3, 4
    m = make(kind, I, H, layers, batch_first=batch_first, bidirectional=bidir,
             dtype=torch.float64)
    m.eval()
    LD = layers * (2 if bidir else 1)
    S = 2 if kind == "lstm" else 1
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape if batched else (T, I), dtype=torch.float64, requires_grad=True)
    hx = [torch.randn((LD, B, H) if batched else (LD, H), dtype=torch.float64,
                      requires_grad=True) for _ in range(S)] if given_hx else None
    out, fin = m(x, None if hx is None else (tuple(hx) if kind == "lstm" else hx[0]))
    fin = list(fin) if kind == "lstm" else [fin]
    D = 2 if bidir else 1
    assert out.shape == ((B, T, D * H) if batch_first else (T, B, D * H)) if batched \
        else out.shape == (T, D * H)
    assert all(f.shape == ((LD, B, H) if batched else (LD, H)) for f in fin)

    xb = x if batched else x.unsqueeze(0 if batch_first else 1)
    xb = xb if batch_first else xb.transpose(0, 1)
    hb = hx if hx is not None else [torch.zeros(LD, B if batched else 1, H, dtype=torch.float64)] * S
    hb = hb if batched else [h.unsqueeze(1) if h.dim() == 2 else h for h in hb]
    ref_out, ref_fin = reference(m, kind, xb, hb)
    ref_out = ref_out if batch_first else ref_out.transpose(0, 1)
    if not batched:
        ref_out = ref_out.squeeze(0 if batch_first else 1)
        ref_fin = [f.squeeze(1) for f in ref_fin]
    assert rel(out, ref_out) <= 1e-12
    for f, rf in zip(fin, ref_fin):
        assert rel(f, rf) <= 1e-12

    weights = [torch.randn_like(out)] + [torch.randn_like(f) for f in fin]
    inputs = [x] + list(m.parameters()) + (hx or [])
    loss = sum((w * o).sum() for w, o in zip(weights, [out] + fin))
    ref_loss = sum((w * o).sum() for w, o in zip(weights, [ref_out] + ref_fin))
    grads = torch.autograd.grad(loss, inputs)
    ref_grads = torch.autograd.grad(ref_loss, inputs)
    for g, rg in zip(grads, ref_grads):
        assert torch.isfinite(g).all()
        assert rel(g, rg) <= 1e-10


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_eval_ignores_regularisers_and_train_dropconnect_is_seeded(kind):
    torch.manual_seed(1)
    zone = (0.3, 0.2) if kind == "lstm" else (0.3, 0.0)
    m = make(kind, 4, 8, 2, dropout=0.5, dropconnect=0.5, variational_dropout=0.4, zoneout=zone)
    plain = make(kind, 4, 8, 2)
    plain.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 4)
    m.eval()
    plain.eval()
    e1, _ = m(x)
    e2, _ = m(x)
    assert torch.equal(e1, e2)
    assert torch.equal(e1, plain(x)[0])

    dc = make(kind, 4, 8, dropconnect=0.5)
    dc.load_state_dict({k: v for k, v in m.state_dict().items() if k.endswith("l0")})
    dc.train()
    torch.manual_seed(7)
    t1, _ = dc(x)
    torch.manual_seed(7)
    t2, _ = dc(x)
    torch.manual_seed(8)
    t3, _ = dc(x)
    dc.eval()
    ev, _ = dc(x)
    assert torch.equal(t1, t2)
    assert not torch.allclose(t1, ev)
    assert not torch.allclose(t1, t3)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="proj_size"):
        flashseq.LayerNormLSTM(4, 8, proj_size=2)
    with pytest.raises(ValueError, match="proj_size"):
        flashseq.LayerNormGRU(4, 8, proj_size=2)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="dropout"):
            flashseq.LayerNormLSTM(4, 8, 2, dropout=bad)
    with pytest.raises(ValueError, match="dropconnect"):
        flashseq.LayerNormLSTM(4, 8, dropconnect=1.0)
    with pytest.raises(ValueError, match="variational_dropout"):
        flashseq.LayerNormGRU(4, 8, variational_dropout=-0.5)
    with pytest.raises(ValueError, match="zoneout"):
        flashseq.LayerNormGRU(4, 8, zoneout=(0.1, 0.1))
    with pytest.raises(ValueError, match="backend"):
        flashseq.LayerNormGRU(4, 8, backend="nope")
    m = flashseq.LayerNormLSTM(4, 8, backend="reference")
    with pytest.raises(ValueError, match="input_size"):
        m(torch.randn(3, 2, 5))
    with pytest.raises(ValueError, match="h0"):
        m(torch.randn(3, 2, 4), (torch.zeros(1, 3, 8), torch.zeros(1, 2, 8)))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_state_dict_and_whole_module_round_trip(kind):
    torch.manual_seed(2)
    m = make(kind, 3, 4, 2, bidirectional=True).eval()
    names = {n for n, _ in m.named_parameters()}
    assert {"weight_ih_l0", "weight_hh_l1_reverse", "bias_ih_l1", "bias_hh_l0_reverse"} <= names
    ref = torch.nn.LSTM(3, 4, 2, bidirectional=True) if kind == "lstm" else \
        torch.nn.GRU(3, 4, 2, bidirectional=True)
    assert {n: p.shape for n, p in m.named_parameters()} == \
        {n: p.shape for n, p in ref.named_parameters()}
    other = make(kind, 3, 4, 2, bidirectional=True).eval()
    other.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(4, 2, 3)
    assert torch.equal(m(x)[0], other(x)[0])
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert type(loaded) is type(m)
    assert torch.equal(m(x)[0], loaded(x)[0])


def test_auto_fallback_warns_at_most_once(monkeypatch):
    monkeypatch.setattr(backends, "_warned", set())
    m = flashseq.LayerNormLSTM(3, 4).eval()  # backend="auto"
    x = torch.randn(3, 2, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            m(x)
    falls = [w for w in caught if "falling back" in str(w.message)]
    assert len(falls) <= 1
    if "cpu" in backends.available_backends("cpu"):  # the cpu back end serves the cell: no fallback
        assert not falls
