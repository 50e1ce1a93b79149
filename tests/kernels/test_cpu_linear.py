"""The modules' input projection on CPU (flashseq/kernels/fused_rnn/cpu_linear.py): oneDNN
GEMMs for float32, equal to F.linear in value and in every gradient, double backward included."""
import pytest
import torch
import torch.nn.functional as F

from flashseq.kernels.fused_rnn import cpu_linear
from tests.helpers import assert_close

needs_onednn = pytest.mark.skipif(cpu_linear._LINEAR_POINTWISE is None,
                                  reason="this torch build has no oneDNN linear op")


def _inputs(seed, bias=True, shape=(3, 7, 20), out=24):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    w = torch.randn(out, shape[-1], generator=g, dtype=torch.float64)
    b = torch.randn(out, generator=g, dtype=torch.float64) if bias else None
    return x, w, b


@needs_onednn
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("shape", [(3, 7, 20), (11, 5)], ids=["3d", "2d"])
def test_float32_matches_float64_linear(shape, bias):
    x64, w64, b64 = _inputs(0, bias, shape)
    x, w = x64.float().requires_grad_(), torch.nn.Parameter(w64.float())
    b = torch.nn.Parameter(b64.float()) if bias else None
    assert cpu_linear._fast_path_ok(x, w, b)  # the oneDNN path is what is tested here
    y = cpu_linear.linear(x, w, b)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    leaves = [x, w] + ([b] if bias else [])
    grads = torch.autograd.grad(y, leaves, dy.float())
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    y_ref = F.linear(ref_leaves[0], ref_leaves[1], ref_leaves[2] if bias else None)
    grads_ref = torch.autograd.grad(y_ref, ref_leaves, dy)
    assert y.shape == y_ref.shape and y.dtype == torch.float32
    assert_close("y", y.detach(), y_ref.detach(), 1e-5)
    for name, g_, r_ in zip(("dx", "dw", "db"), grads, grads_ref):
        assert_close(name, g_, r_, 1e-5)


@needs_onednn
def test_double_backward_follows_the_formulas():
    x64, w64, b64 = _inputs(2)
    x, w, b = (t.float().requires_grad_() for t in (x64, w64, b64))
    y = cpu_linear.linear(x, w, b)
    (gx,) = torch.autograd.grad((y ** 2).sum(), [x], create_graph=True)
    (gw,) = torch.autograd.grad(gx.square().sum(), [w])
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    yr = F.linear(xr, wr, br)
    (gxr,) = torch.autograd.grad((yr ** 2).sum(), [xr], create_graph=True)
    (gwr,) = torch.autograd.grad(gxr.square().sum(), [wr])
    assert_close("d2w", gw, gwr, 1e-5)


def test_other_inputs_take_f_linear():
    x64, w64, b64 = _inputs(3)
    assert not cpu_linear._fast_path_ok(x64, w64, b64)  # float64
    y = cpu_linear.linear(x64, w64, b64)
    assert torch.equal(y, F.linear(x64, w64, b64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cpu_linear._fast_path_ok(x64.float(), w64.float(), b64.float())


def _has_blocked_weight_grad() -> bool:
    return cpu_linear._blocked_weight_grad() is not None


@needs_onednn
@pytest.mark.skipif(not _has_blocked_weight_grad(),
                    reason="no compiled AVX-512 weight-gradient kernel on this CPU or build")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_blocked_weight_gradient_matches_float64(bias):
    # x [6, 100, 37] -> 600 rows: dw = dy.T @ x runs the blocked kernel in two k-blocks of at most
    # 512 rows over 148 output columns (3 panels of 48 and a tail of 4); db comes from its sums
    x64, w64, b64 = _inputs(3, bias, (6, 100, 37), out=148)
    x, w = x64.float().requires_grad_(), torch.nn.Parameter(w64.float())
    b = torch.nn.Parameter(b64.float()) if bias else None
    y = cpu_linear.linear(x, w, b)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    leaves = [x, w] + ([b] if bias else [])
    grads = torch.autograd.grad(y, leaves, dy.float())
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    y_ref = F.linear(ref_leaves[0], ref_leaves[1], ref_leaves[2] if bias else None)
    grads_ref = torch.autograd.grad(y_ref, ref_leaves, dy)
    for name, g_, r_ in zip(("dx", "dw", "db"), grads, grads_ref):
        assert_close(name, g_, r_, 1e-5)


@needs_onednn
@pytest.mark.skipif(not _has_blocked_weight_grad(),
                    reason="no compiled AVX-512 weight-gradient kernel on this CPU or build")
def test_blocked_weight_gradient_past_256_features():
    # 300 input features (> 256) over 640 rows: served by the blocked kernel when the L2 gives
    # k-blocks of half a MB (the extension's _grad_gemm_max_rows() == 512), else by oneDNN; the
    # gradients must match float64 either way
    ext = cpu_linear._jit.extension()
    x64, w64, b64 = _inputs(5, True, (640, 300), out=100)
    assert cpu_linear._blocked_pays(640, 300) == (ext._grad_gemm_max_rows() >= 300)
    x, w = x64.float().requires_grad_(), torch.nn.Parameter(w64.float())
    b = torch.nn.Parameter(b64.float())
    y = cpu_linear.linear(x, w, b)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    grads = torch.autograd.grad(y, [x, w, b], dy.float())
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    grads_ref = torch.autograd.grad(F.linear(*ref_leaves), ref_leaves, dy)
    for name, g_, r_ in zip(("dx", "dw", "db"), grads, grads_ref):
        assert_close(name, g_, r_, 1e-5)


@needs_onednn
@pytest.mark.skipif(not _has_blocked_weight_grad(),
                    reason="no compiled AVX-512 weight-gradient kernel on this CPU or build")
def test_blocked_weight_gradient_with_as_many_rows_as_features():
    # x [40, 40]: the blocked kernel serves rows >= features (one k-block, one panel and a tail)
    x64, w64, b64 = _inputs(7, True, (40, 40), out=60)
    assert cpu_linear._blocked_pays(40, 40) and not cpu_linear._blocked_pays(39, 40)
    x, w = x64.float().requires_grad_(), torch.nn.Parameter(w64.float())
    b = torch.nn.Parameter(b64.float())
    y = cpu_linear.linear(x, w, b)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    grads = torch.autograd.grad(y, [x, w, b], dy.float())
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    grads_ref = torch.autograd.grad(F.linear(*ref_leaves), ref_leaves, dy)
    for name, g_, r_ in zip(("dx", "dw", "db"), grads, grads_ref):
        assert_close(name, g_, r_, 1e-5)
