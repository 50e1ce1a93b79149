"""Head-wise flashseq.LSTM (block-diagonal recurrence) and flashseq.sLSTM against stepped
float64 references written here, forward and every gradient."""
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import flashseq
from tests.helpers import TOLERANCE, assert_close
from tests.nn.twins import FALLBACK_WARNING

pytestmark = pytest.mark.filterwarnings(FALLBACK_WARNING)


def seed_of(case_id: str) -> int:
    return zlib.crc32(case_id.encode())


def block_diagonal(w_heads):
    """[4, NH, DH, DH] head-wise weights -> torch's [4*H, H] weight_hh with the same effect."""
    G, NH, DH, _ = w_heads.shape
    H = NH * DH
    full = w_heads.new_zeros(G, H, H)
    for n in range(NH):
        full[:, n * DH:(n + 1) * DH, n * DH:(n + 1) * DH] = w_heads[:, n].transpose(1, 2)
    return full.reshape(G * H, H)


@pytest.mark.parametrize("num_heads", [2, 3])
@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_headwise_lstm_equals_torch_lstm_with_block_diagonal_weights(num_heads, bidir, packed, dtype, request):
    seed = seed_of(request.node.callspec.id)
    torch.manual_seed(seed)
    I, H, T, B = 4, 6, 5, 3
    ours = flashseq.LSTM(I, H, num_layers=2, bidirectional=bidir, num_heads=num_heads, dtype=dtype)
    assert ours.weight_hh_l0.shape == (4, num_heads, H // num_heads, H // num_heads)
    assert f"num_heads={num_heads}" in repr(ours)
    ref = torch.nn.LSTM(I, H, num_layers=2, bidirectional=bidir, dtype=torch.float64)
    ref.load_state_dict({k: (block_diagonal(v) if "weight_hh" in k else v).double()
                         for k, v in ours.state_dict().items()}, strict=True)
    with pytest.raises(RuntimeError):  # documented: not loadable into torch.nn.LSTM as it is
        torch.nn.LSTM(I, H, num_layers=2, bidirectional=bidir).load_state_dict(ours.state_dict())

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    D = 2 if bidir else 1
    h0 = torch.randn(2 * D, B, H, generator=g, dtype=torch.float64)
    c0 = torch.randn(2 * D, B, H, generator=g, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    results = {}
    for name, module, dt in (("ref", ref, torch.float64), ("ours", ours, dtype)):
        xs, hs, cs = (t.detach().to(dt).requires_grad_(True) for t in (x, h0, c0))
        inp = pack_padded_sequence(xs, lengths, enforce_sorted=False) if packed else xs
        out, (h_n, c_n) = module(inp, (hs, cs))
        out = out.data if packed else out
        g2 = torch.Generator().manual_seed(seed + 1)
        loss = sum((t * torch.randn(t.shape, generator=g2, dtype=torch.float64).to(dt)).sum()
                   for t in (out, h_n, c_n))
        loss.backward()
        results[name] = (out, h_n, c_n, xs.grad, hs.grad, cs.grad)
    tol = TOLERANCE[dtype]
    for label, a, b in zip(("output", "h_n", "c_n", "grad x", "grad h0", "grad c0"),
                           results["ours"], results["ref"]):
        assert_close(label, a, b, tol)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        expected = ref_params[name].grad
        if "weight_hh" in name:  # the gradient of the blocks, in the head-wise layout
            NH, DH = num_heads, H // num_heads
            blocks = expected.view(4, H, H)
            expected = torch.stack([blocks[:, n * DH:(n + 1) * DH, n * DH:(n + 1) * DH].transpose(1, 2)
                                    for n in range(NH)], dim=1)
        assert_close(f"grad {name}", p.grad, expected, tol)


def slstm_reference(x, params, states, num_layers, num_heads):
    """xLSTM's sLSTM stepped in float64. x [B, T, I]; params {name: tensor}; states
    [L, 4, B, H] or None. Returns h of the last layer [B, T, H] and states [L, 4, B, H]."""
    B, T = x.shape[:2]
    finals = []
    for k in range(num_layers):
        w, r = params[f"weight_ih_l{k}"], params[f"weight_hh_l{k}"]
        b = params.get(f"bias_l{k}")
        H = w.shape[0] // 4
        DH = H // num_heads
        if states is None:
            h, c, n, m = (x.new_zeros(B, H) for _ in range(4))
        else:
            h, c, n, m = states[k].unbind(0)
        hs = []
        for t in range(T):
            pre = x[:, t] @ w.T + (0 if b is None else b)
            rec = torch.einsum("bnd,gnde->bgne", h.view(B, num_heads, DH), r).reshape(B, 4 * H)
            ig, fg, zg, og = (pre + rec).view(B, 4, H).unbind(1)
            lf_m = F.logsigmoid(fg) + m
            m = torch.maximum(lf_m, ig)
            i, f = torch.exp(ig - m), torch.exp(lf_m - m)
            c = f * c + i * torch.tanh(zg)
            n = f * n + i
            h = torch.sigmoid(og) * c / n
            hs.append(h)
        x = torch.stack(hs, dim=1)
        finals.append(torch.stack([h, c, n, m]))
    return x, torch.stack(finals)


@pytest.mark.parametrize("num_heads,num_layers,bias", [(1, 1, True), (2, 2, True), (3, 2, False)],
                         ids=["NH1-L1", "NH2-L2", "NH3-L2-nobias"])
@pytest.mark.parametrize("with_states", [False, True], ids=["zeros", "states"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tf", "bf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_slstm_matches_stepped_reference(num_heads, num_layers, bias, with_states, batch_first, dtype,
                                         request):
    seed = seed_of(request.node.callspec.id)
    torch.manual_seed(seed)
    I, H, T, B = 4, 6, 5, 3
    m = flashseq.sLSTM(I, H, num_heads=num_heads, num_layers=num_layers, bias=bias,
                       batch_first=batch_first, dtype=dtype)
    with torch.no_grad():  # move the forget bias off its init so the test is not init-specific
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, I, generator=g, dtype=torch.float64)
    states = None
    if with_states:
        states = torch.randn(num_layers, 4, B, H, generator=g, dtype=torch.float64)
        states[:, 2] = states[:, 2].abs() + 0.5  # n > 0
    x_ref = x.clone().requires_grad_(True)
    s_ref = None if states is None else states.clone().requires_grad_(True)
    params = {k: v.detach().double().requires_grad_(True) for k, v in m.named_parameters()}
    out_ref, fin_ref = slstm_reference(x_ref, params, s_ref, num_layers, num_heads)

    x_ours = x.to(dtype).requires_grad_(True)
    s_ours = None if states is None else states.to(dtype).requires_grad_(True)
    out, fin = m(x_ours if batch_first else x_ours.transpose(0, 1), s_ours)
    out = out if batch_first else out.transpose(0, 1)
    assert fin.shape == (num_layers, 4, B, H) and fin.dtype == dtype

    g2 = torch.Generator().manual_seed(seed + 1)
    d_out = torch.randn(out_ref.shape, generator=g2, dtype=torch.float64)
    d_fin = torch.randn(fin_ref.shape, generator=g2, dtype=torch.float64)
    ((out_ref * d_out).sum() + (fin_ref * d_fin).sum()).backward()
    ((out * d_out.to(dtype)).sum() + (fin * d_fin.to(dtype)).sum()).backward()
    tol = TOLERANCE[dtype]
    assert_close("output", out, out_ref, tol)
    assert_close("states", fin, fin_ref, tol)
    assert_close("grad input", x_ours.grad, x_ref.grad, tol)
    if with_states:
        assert_close("grad states", s_ours.grad, s_ref.grad, tol)
    for name, p in m.named_parameters():
        assert_close(f"grad {name}", p.grad, params[name].grad, tol)


def test_slstm_unbatched_parameters_and_init():
    torch.manual_seed(0)
    m = flashseq.sLSTM(4, 6, num_heads=2, num_layers=2, dtype=torch.float64)
    assert [(n, tuple(p.shape)) for n, p in m.named_parameters()] == [
        ("weight_ih_l0", (24, 4)), ("weight_hh_l0", (4, 2, 3, 3)), ("bias_l0", (24,)),
        ("weight_ih_l1", (24, 6)), ("weight_hh_l1", (4, 2, 3, 3)), ("bias_l1", (24,))]
    forget = m.bias_l0.view(4, 2, 3)[1]
    assert torch.equal(forget, torch.tensor([[3.0, 4.5, 6.0]] * 2, dtype=torch.float64))
    assert m.bias_l0.view(4, 2, 3)[[0, 2, 3]].abs().sum() == 0
    x = torch.randn(5, 4, dtype=torch.float64)
    out, states = m(x)
    assert out.shape == (5, 6) and states.shape == (2, 4, 6)
    batched_out, batched_states = m(x.unsqueeze(1))
    assert torch.allclose(out, batched_out[:, 0], rtol=0, atol=1e-13)
    assert torch.allclose(states, batched_states[:, :, 0], rtol=0, atol=1e-13)
    out2, _ = m(x, states)  # continuing from returned states is accepted
    assert torch.isfinite(out2).all()


def test_slstm_rejects_bad_arguments():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        flashseq.sLSTM(4, 6, num_heads=4)
    m = flashseq.sLSTM(4, 6)
    with pytest.raises(ValueError, match="input must be"):
        m(torch.randn(5, 3, 3))
    with pytest.raises(ValueError, match="states must have shape"):
        m(torch.randn(5, 3, 4), torch.zeros(1, 2, 3, 6))
    with pytest.raises(ValueError, match="dtype"):
        m(torch.randn(5, 3, 4, dtype=torch.float64))
