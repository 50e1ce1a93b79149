"""The float32 LSTM training forward with its input projection folded into the recurrence
(csrc/cpu/lstm_projected_forward.cpp's lstm_projected_forward_train, run by
flashseq/kernels/fused_rnn/cpu_projected.py) and its backward (the compiled fused_rnn_backward
plus the projection's GEMMs), against torch.nn.LSTM in float64: the output and every gradient
(x, both weights, both biases, h0 and c0) over hidden sizes that do and do not fill the 16-unit
blocks, batch sizes that split into uneven row tiles, I=1 and T=1; the module's fast path with its
path counter (bidirectional, batch_first, hx, no bias, 2 layers) next to the calls that must not
take it; and a double backward (create_graph) against torch's in float32."""
import pytest
import torch

from flashseq.kernels.fused_rnn import cpu as cpu_backend
from flashseq.kernels.fused_rnn import cpu_projected
from tests.helpers import TOLERANCE, assert_close, cpu_has_avx512_tile, lstm_module_pair

pytestmark = pytest.mark.skipif(
    not cpu_has_avx512_tile(), reason="the projected LSTM step needs the AVX-512 tile (CPU, build)")

TOL = TOLERANCE[torch.float32]
NAMES = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")


def _ext():
    return cpu_backend._jit.extension()


def _inputs(T, B, I, H, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=1.0):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * s

    w_ih = rnd(4 * H, I, s=1 / I ** 0.5)
    w_hh = rnd(4 * H, H, s=1 / H ** 0.5)
    b_ih, b_hh = (rnd(4 * H, s=0.5), rnd(4 * H, s=0.5)) if bias else (None, None)
    upstream = (rnd(T, B, H), rnd(B, H), rnd(B, H))  # dy, dh_T, dc_T
    return (rnd(T, B, I), w_ih, w_hh, b_ih, b_hh, rnd(B, H), rnd(B, H)), upstream


def _reference_grads(args, upstream):
    """torch.nn.LSTM in float64 with these tensors: ((y, h_T, c_T), grads in NAMES' order)."""
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = (None if t is None else t.clone().requires_grad_(True)
                                         for t in args)
    out = torch._VF.lstm(x, (h0[None], c0[None]),
                         [w_ih, w_hh] + ([b_ih, b_hh] if b_ih is not None else []),
                         b_ih is not None, 1, 0.0, False, False, False)
    y, h, c = out[0], out[1][0], out[2][0]
    leaves = [t for t in (x, w_ih, w_hh, b_ih, b_hh, h0, c0) if t is not None]
    grads = iter(torch.autograd.grad((y, h, c), leaves, upstream))
    return (y, h, c), [None if t is None else next(grads) for t in (x, w_ih, w_hh, b_ih, b_hh,
                                                                     h0, c0)]


def _ours(args, upstream):
    leaves = [None if t is None else t.float().requires_grad_(True) for t in args]
    ext = _ext()
    ext._lstm_projected_train_calls(True)
    y, h, c = cpu_projected.projected_lstm(*leaves)
    assert ext._lstm_projected_train_calls(True) == 1
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad((y, h, c), present, [u.float() for u in upstream]))
    return (y, h, c), [None if t is None else next(grads) for t in leaves]


# H: one block, partial blocks, several with a masked tail; B: 4-7 and 13 (uneven row tiles of at
# most 6), 20; I: 1 and larger than H; T: 1 (one step: no recurrence) and more.
@pytest.mark.parametrize("T,B,I,H", [(5, 4, 7, 16), (4, 5, 1, 40), (3, 6, 30, 7), (6, 7, 24, 33),
                                     (3, 13, 100, 48), (2, 20, 17, 100), (1, 9, 64, 31)])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_function_output_and_every_gradient_match_float64_lstm(T, B, I, H, bias):
    args, upstream = _inputs(T, B, I, H, bias=bias, seed=T * 1000 + B * 10 + H)
    outs_ref, grads_ref = _reference_grads(args, upstream)
    outs, grads = _ours(args, upstream)
    for name, out, ref in zip(("y", "h_T", "c_T"), outs, outs_ref):
        assert out.dtype == torch.float32
        assert_close(name, out.double(), ref, TOL)
    for name, grad, ref in zip(NAMES, grads, grads_ref):
        if ref is None:
            assert grad is None, name
            continue
        assert_close("d" + name, grad.double(), ref, TOL)


def test_function_without_some_upstream_gradients():
    # only y's gradient (dh_T, dc_T None), then only c_T's (dy None)
    args, (dy, _, dc) = _inputs(4, 7, 12, 20, seed=4)
    leaves = [t.float().requires_grad_(True) for t in args]
    y, h, c = cpu_projected.projected_lstm(*leaves)
    ref = [t.clone().requires_grad_(True) for t in args]
    out = torch._VF.lstm(ref[0], (ref[5][None], ref[6][None]), ref[1:5], True, 1, 0.0, False,
                         False, False)
    for ours_out, ref_out, up in ((y, out[0], dy), (c, out[2][0], dc)):
        grads = torch.autograd.grad(ours_out, leaves, up.float(), retain_graph=True)
        grads_ref = torch.autograd.grad(ref_out, ref, up, retain_graph=True)
        for name, grad, g_ref in zip(NAMES, grads, grads_ref):
            assert_close("d" + name, grad.double(), g_ref, TOL)


def test_double_backward_matches_torch_in_float32():
    # create_graph: the gradient of (dL/dx)^2 summed, which needs second derivatives of the
    # recurrence and the projection; torch.nn's LSTM in float64 is the reference
    args, (dy, _, _) = _inputs(3, 5, 6, 9, seed=7)
    results = []
    for dtype, run in ((torch.float32, lambda t: cpu_projected.projected_lstm(*t)[0]),
                       (torch.float64, lambda t: torch._VF.lstm(
                           t[0], (t[5][None], t[6][None]), t[1:5], True, 1, 0.0, False, False,
                           False)[0])):
        leaves = [t.to(dtype).requires_grad_(True) for t in args]
        y = run(leaves)
        dx, dw_hh = torch.autograd.grad(y, (leaves[0], leaves[2]), dy.to(dtype),
                                        create_graph=True)
        penalty = dx.pow(2).sum() + dw_hh.pow(2).sum()
        results.append(torch.autograd.grad(penalty, leaves))
    for name, grad, ref in zip(NAMES, *results):
        assert_close("dd" + name, grad.double(), ref, TOL)


@pytest.mark.parametrize("options", [dict(), dict(batch_first=True), dict(bidirectional=True),
                                     dict(bias=False)],
                         ids=["time_major", "batch_first", "bidirectional", "no_bias"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["zero_states", "hx"])
def test_module_training_takes_it_and_every_gradient_matches_torch(options, with_hx):
    I, H, L, B, T = 24, 40, 2, 9, 6
    ref, ours = lstm_module_pair(I, H, L, **options)
    D = 2 if options.get("bidirectional") else 1
    g = torch.Generator().manual_seed(11)
    shape = (B, T, I) if options.get("batch_first") else (T, B, I)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    hx = tuple(torch.randn(L * D, B, H, generator=g, dtype=torch.float64) for _ in range(2))
    dy = torch.randn(shape[:2] + (D * H,), generator=g, dtype=torch.float64)
    dh, dc = (torch.randn(L * D, B, H, generator=g, dtype=torch.float64) for _ in range(2))
    results = []
    ext = _ext()
    ext._lstm_projected_train_calls(True)
    for module, dtype in ((ours, torch.float32), (ref, torch.float64)):
        xs = x.to(dtype).requires_grad_(True)
        states = tuple(t.to(dtype).requires_grad_(True) for t in hx) if with_hx else None
        y, (h, c) = module(xs, states)
        leaves = [xs, *(states or ()), *module.parameters()]
        grads = torch.autograd.grad((y, h, c), leaves, (dy.to(dtype), dh.to(dtype),
                                                        dc.to(dtype)))
        results.append(((y, h, c), grads))
        if module is ours:  # every layer and direction took it
            assert ext._lstm_projected_train_calls(True) == L * D
    (outs, grads), (outs_ref, grads_ref) = results
    for name, out, out_ref in zip(("y", "h_n", "c_n"), outs, outs_ref):
        assert_close(name, out.double(), out_ref, TOL)
    names = ["x"] + (["h0", "c0"] if with_hx else []) + [n for n, _ in ref.named_parameters()]
    for name, grad, grad_ref in zip(names, grads, grads_ref):
        assert_close("d" + name, grad.double(), grad_ref, TOL)


def test_module_dropout_between_layers_trains_through_it():
    # dropout=0.5 in training: the layers still take the folded forward, dropout runs between
    ref, ours = lstm_module_pair(24, 40, 2, dropout=0.5)
    x = torch.randn(6, 9, 24, requires_grad=True)
    ext = _ext()
    ext._lstm_projected_train_calls(True)
    ours.train()
    y, _ = ours(x)
    y.sum().backward()
    assert ext._lstm_projected_train_calls(True) == 2
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_module_calls_that_must_not_take_it():
    ref, ours = lstm_module_pair(24, 40, 1)
    ext = _ext()
    ext._lstm_projected_train_calls(True)
    y, _ = ours(torch.randn(6, 1, 24, requires_grad=True))        # B=1: the size rule says no
    y.sum().backward()
    ours.double()
    y, _ = ours(torch.randn(6, 9, 24, dtype=torch.float64, requires_grad=True))  # float64
    y.sum().backward()
    with torch.no_grad():
        ours.float()(torch.randn(6, 9, 24))                        # no gradient: the no_grad op
    assert ext._lstm_projected_train_calls(True) == 0
    x = torch.randn(6, 9, 24, dtype=torch.float64)
    old = ext._set_projected_lstm_train(False)
    try:
        xs = x.float().requires_grad_(True)
        y, _ = ours(xs)
        y.sum().backward()
    finally:
        ext._set_projected_lstm_train(old)
    assert ext._lstm_projected_train_calls(True) == 0
    xr = x.clone().requires_grad_(True)
    ref(xr)[0].sum().backward()
    assert_close("y (switched off)", y.double(), ref(x)[0], TOL)
    assert_close("dx (switched off)", xs.grad.double(), xr.grad, TOL)


def test_train_pays_follows_its_switch():
    ext = _ext()
    assert ext.lstm_projected_train_pays(20, 200, 200)
    assert not ext.lstm_projected_train_pays(1, 256, 256)
    old = ext._set_projected_lstm_train(False)
    try:
        assert not ext.lstm_projected_train_pays(20, 200, 200)
    finally:
        ext._set_projected_lstm_train(old)
