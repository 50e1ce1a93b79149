"""backend="cpu" with a time-major wx: a [B, T, G, NH, DH] view of a dense [T, B, G, NH, DH]
buffer (the projection of torch.nn's default [T, B, I] input) is read in place, h comes back as a
view of a time-major buffer and, without lengths, d(wx) too; values and every gradient match the
float64 reference."""
import pytest
import torch

import flashseq
from flashseq.cells import CELLS
from flashseq.kernels.fused_rnn import cpu as cpu_backend
from flashseq.kernels.fused_rnn.reference import fused_rnn_reference
from tests.helpers import TOLERANCE, assert_close, make_rnn_inputs, random_lengths


def time_major_strides(x):
    """Strides of a [B, T, ...] view of a dense [T, B, ...] tensor of x's shape."""
    return x.new_empty(x.shape[1], x.shape[0], *x.shape[2:]).transpose(0, 1).stride()


@pytest.fixture(params=["own_gemm", "aten_gemm"])
def step_gemm_path(request):
    """The loops' built-in per-step GEMM, or ATen's (which reads d(rh) through strided views)."""
    ext = cpu_backend._jit.extension()
    old = ext._set_step_gemm_max_batch(1 << 30 if request.param == "own_gemm" else 0)
    yield request.param
    ext._set_step_gemm_max_batch(old)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("NH", [1, 2], ids=lambda n: f"NH{n}")
@pytest.mark.parametrize("cell_name", sorted(CELLS))
def test_time_major_wx_matches_reference(cell_name, NH, with_lengths, dtype, step_gemm_path):
    cell = CELLS[cell_name]
    B, T, DH, seed = 5, 7, 19, 31
    wx, r, b, states = make_rnn_inputs(cell, B, T, NH, DH, dtype=torch.float64, seed=seed)
    lengths = random_lengths(B, T, seed=seed) if with_lengths else None
    gen = torch.Generator().manual_seed(seed + 1)
    grad_h = torch.randn(B, T, NH, DH, generator=gen, dtype=torch.float64)
    grad_last = torch.randn(cell.num_states, B, NH, DH, generator=gen, dtype=torch.float64)

    def run(fn, wx_leaf, rest, to_bt):
        """loss of fn on wx = to_bt(wx_leaf); returns h, last, d(wx) as [B, T, ...] and the
        other gradients, and the strides d(wx) reached the kernel's caller with."""
        seen = {}
        wx_in = to_bt(wx_leaf)

        def record(g):
            seen["d_wx_strides"] = g.stride()

        wx_in.register_hook(record)
        h, last = fn(wx_in, *rest)
        loss = (h * grad_h.to(h.dtype)).sum() + (last * grad_last.to(h.dtype)).sum()
        grads = torch.autograd.grad(loss, [wx_leaf, *rest])
        return h, last, [to_bt(grads[0]), *grads[1:]], seen.get("d_wx_strides")

    leaves = [t.clone().requires_grad_() for t in (wx, r, b, states)]
    h_ref, last_ref, grads_ref, _ = run(
        lambda *ts: fused_rnn_reference(*ts, cell=cell, lengths=lengths),
        leaves[0], leaves[1:], lambda t: t)

    # the leaf is the time-major buffer; the kernel gets its [B, T, ...] view
    wx_tm = wx.to(dtype).transpose(0, 1).contiguous().requires_grad_()
    rest = [t.to(dtype).requires_grad_() for t in (r, b, states)]
    h, last, grads, d_wx_strides = run(
        lambda *ts: flashseq.ops.fused_rnn(*ts, cell=cell.name, lengths=lengths, backend="cpu"),
        wx_tm, rest, lambda t: t.transpose(0, 1))
    tol = TOLERANCE[dtype] if dtype != torch.float64 else 1e-12
    assert h.stride() == time_major_strides(h), f"h strides {h.stride()}: not time-major"
    if lengths is None:
        assert d_wx_strides == time_major_strides(wx_tm.transpose(0, 1)), \
            f"d(wx) strides {d_wx_strides}: not time-major"
    assert_close("h", h, h_ref, tol)
    assert_close("last_states", last, last_ref, tol)
    for name, g, g_ref in zip(("d_wx", "d_r", "d_b", "d_states"), grads, grads_ref):
        assert_close(name, g, g_ref, tol)


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_time_major_weight_gradient_over_many_rows(cell_name):
    # B*T = 600 rows against DH=37: float32 d(r) takes the blocked AVX-512 product where the CPU
    # has it, over h transposed in the time-major row order.
    cell = CELLS[cell_name]
    B, T, NH, DH = 6, 100, 1, 37
    wx, r, b, states = make_rnn_inputs(cell, B, T, NH, DH, dtype=torch.float64, seed=37)
    grad_h = torch.randn(B, T, NH, DH, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    leaves = [t.clone().requires_grad_() for t in (wx, r, b, states)]
    h_ref, _ = fused_rnn_reference(*leaves, cell=cell, lengths=None)
    grads_ref = torch.autograd.grad((h_ref * grad_h).sum(), leaves)
    wx_tm = wx.float().transpose(0, 1).contiguous().requires_grad_()
    rest = [t.float().requires_grad_() for t in (r, b, states)]
    h, _ = flashseq.ops.fused_rnn(wx_tm.transpose(0, 1), *rest, cell=cell.name, lengths=None,
                                  backend="cpu")
    grads = torch.autograd.grad((h * grad_h.float()).sum(), [wx_tm, *rest])
    assert_close("h", h, h_ref, TOLERANCE[torch.float32])
    assert_close("d_wx", grads[0].transpose(0, 1), grads_ref[0], TOLERANCE[torch.float32])
    for name, g, g_ref in zip(("d_r", "d_b", "d_states"), grads[1:], grads_ref[1:]):
        assert_close(name, g, g_ref, TOLERANCE[torch.float32])


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_module_time_major_input_matches_torch(kind):
    # torch.nn's default layout [T, B, I], 2 layers: both layers' projections and loops run
    # time-major; output, final states and every gradient match torch.nn.
    torch.manual_seed(3)
    ref = getattr(torch.nn, kind)(6, 9, num_layers=2)
    mod = getattr(flashseq, kind)(6, 9, num_layers=2)
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(11, 4, 6)
    outs = []
    for m in (ref, mod):
        xi = x.clone().requires_grad_()
        y, hn = m(xi)
        hn = hn if isinstance(hn, tuple) else (hn,)
        loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + sum(s.sum() for s in hn)
        grads = torch.autograd.grad(loss, [xi, *m.parameters()])
        outs.append((y, hn, grads))
    (y_ref, hn_ref, g_ref), (y, hn, g) = outs
    assert y.is_contiguous()
    assert_close("output", y, y_ref, TOLERANCE[torch.float32])
    for s, s_ref in zip(hn, hn_ref):
        assert_close("final state", s, s_ref, TOLERANCE[torch.float32])
    for i, (a, a_ref) in enumerate(zip(g, g_ref)):
        assert_close(f"gradient {i}", a, a_ref, TOLERANCE[torch.float32])
