"""The float64 reference of fused_rnn against torch's own cells, and its dtype/gradient grid."""
import zlib

import pytest
import torch

from flashseq.cells import CELLS
from flashseq.kernels.fused_rnn.reference import fused_rnn_reference
from flashseq.ops import fused_rnn
from tests.helpers import TOLERANCE, assert_close, make_rnn_inputs, random_lengths

TORCH_CELLS = {
    "lstm": torch.nn.LSTMCell,
    "gru": torch.nn.GRUCell,
    "elman": torch.nn.RNNCell,
}


@pytest.mark.parametrize("cell_name", sorted(TORCH_CELLS))
def test_reference_equals_torch_cell_stepped_by_hand(cell_name):
    """With one head, fused_rnn's reference is torch's cell: wx = x W_ih^T + b_ih, r = W_hh^T."""
    torch.manual_seed(0)
    B, T, I, H = 3, 6, 5, 7
    cell = CELLS[cell_name]
    G = cell.num_gates
    tcell = TORCH_CELLS[cell_name](I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(B, H, dtype=torch.float64)
    c0 = torch.randn(B, H, dtype=torch.float64)

    hx = (h0, c0) if cell_name == "lstm" else h0
    outs = []
    for t in range(T):
        hx = tcell(x[t], hx)
        outs.append(hx[0] if cell_name == "lstm" else hx)
    expected = torch.stack(outs, dim=1)  # [B, T, H]

    wx = (x @ tcell.weight_ih.T + tcell.bias_ih).transpose(0, 1).reshape(B, T, G, 1, H)
    r = tcell.weight_hh.view(G, H, H).transpose(1, 2).unsqueeze(1)  # [G, 1, H, H]
    b = tcell.bias_hh.view(G, 1, H)
    states = torch.stack([h0, c0]) if cell_name == "lstm" else h0[None]
    h, last = fused_rnn_reference(wx, r, b, states[:, :, None], cell=cell)
    assert_close("h", h[:, :, 0], expected, 1e-12)
    if cell_name == "lstm":
        assert_close("c_T", last[1, :, 0], hx[1], 1e-12)


def _run_with_grads(wx, r, b, states, cell, lengths, backend, seed):
    leaves = [t.detach().requires_grad_() for t in (wx, r, b, states) if t is not None]
    if states is None:
        leaves.append(None)
    h, last = fused_rnn(*leaves, cell=cell, lengths=lengths, backend=backend)
    g = torch.Generator().manual_seed(seed)
    dh = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h.dtype)
    dlast = torch.randn(last.shape, generator=g, dtype=torch.float64).to(last.dtype)
    torch.autograd.backward([h, last], [dh, dlast])
    grads = [t.grad if t is not None else None for t in leaves]
    return h.detach(), last.detach(), grads


@pytest.mark.parametrize("with_states", [True, False], ids=["states", "zero-states"])
@pytest.mark.parametrize("with_lengths", [True, False], ids=["lengths", "full"])
@pytest.mark.parametrize("heads", [1, 3], ids=lambda n: f"NH{n}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("cell_name", sorted(CELLS))
def test_reference_backend_grid(cell_name, dtype, heads, with_lengths, with_states):
    """backend="reference" in dtype vs the float64 reference: outputs and every gradient."""
    cell = CELLS[cell_name]
    B, T, DH = 4, 7, 5
    seed = zlib.crc32(f"{cell_name}-{dtype}-{heads}-{with_lengths}-{with_states}".encode())
    wx, r, b, states = make_rnn_inputs(cell, B, T, heads, DH, with_states=with_states, seed=seed)
    lengths = random_lengths(B, T, seed=seed) if with_lengths else None
    ref = _run_with_grads(wx, r, b, states, cell_name, lengths, "reference", seed)
    cast = [t.to(dtype) if t is not None else None for t in (wx, r, b, states)]
    out = _run_with_grads(*cast, cell_name, lengths, "reference", seed)
    tol = TOLERANCE[dtype]
    assert_close("h", out[0], ref[0], tol)
    assert_close("last_states", out[1], ref[1], tol)
    for name, g_out, g_ref in zip(("d_wx", "d_r", "d_b", "d_states"), out[2], ref[2]):
        if g_ref is not None:
            assert_close(name, g_out, g_ref, tol)


@pytest.mark.parametrize("cell_name", sorted(CELLS))
def test_reference_gradcheck(cell_name):
    cell = CELLS[cell_name]
    wx, r, b, states = make_rnn_inputs(cell, 2, 3, 2, 3, seed=1)
    lengths = torch.tensor([3, 1])
    args = [t.requires_grad_() for t in (wx, r, b, states)]
    fn = lambda *a: fused_rnn(*a, cell=cell_name, lengths=lengths, backend="reference")  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("cell_name", sorted(CELLS))
def test_lengths_semantics(cell_name):
    """Past its length a row outputs zeros and keeps its states; length 0 returns the initial states."""
    cell = CELLS[cell_name]
    B, T = 3, 6
    wx, r, b, states = make_rnn_inputs(cell, B, T, 2, 4, seed=2)
    lengths = torch.tensor([6, 0, 3])
    h, last = fused_rnn(wx, r, b, states, cell=cell_name, lengths=lengths, backend="reference")
    assert torch.equal(h[1], torch.zeros_like(h[1]))
    assert torch.equal(h[2, 3:], torch.zeros_like(h[2, 3:]))
    assert torch.equal(last[:, 1], states[:, 1])
    h3, last3 = fused_rnn(wx[2:, :3], r, b, states[:, 2:], cell=cell_name, backend="reference")
    assert torch.equal(h[2, :3], h3[0])
    assert torch.equal(last[:, 2], last3[:, 0])


def test_slstm_stays_finite_over_long_saturated_sequence():
    """Gate inputs of +-50 over T=4096 steps: the stabiliser keeps every exp finite."""
    cell = CELLS["slstm"]
    g = torch.Generator().manual_seed(3)
    B, T, NH, DH = 2, 4096, 1, 4
    wx = (torch.randint(0, 2, (B, T, 4, NH, DH), generator=g) * 100 - 50).float()
    r = torch.randn(4, NH, DH, DH, generator=g)
    b = torch.zeros(4, NH, DH)
    h, last = fused_rnn(wx, r, b, cell="slstm", backend="reference")
    assert torch.isfinite(h).all() and torch.isfinite(last).all()
    assert last[3].abs().max() > 40  # the stabiliser did track the large gates
    assert cell.num_states == 4
