"""pLSTM on CUDA (run by ``pytest -m gpu``): plstm_2d and plstm_1d (Triton kernels) against the
float64 CPU computation, forward and gradients, at bench-like head sizes."""
import pytest
import torch

from flashseq.kernels.plstm import plstm_1d, plstm_2d
from tests.helpers import assert_close
from tests.kernels.plstm_cases import grid_problem, line_problem

NAMES = ("q", "k", "v", "source", "transition", "mark", "direct")
pytestmark = pytest.mark.gpu


def _run(fn, p, **kw):
    out = fn(*(p[n] for n in NAMES), **kw)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = torch.autograd.grad(out, [p[n] for n in NAMES], do.to(out.device, out.dtype),
                                allow_unused=True, materialize_grads=True)
    return out, grads


@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)], ids=str)
def test_plstm_2d_cuda(dtype, tol, backend):
    p64 = grid_problem(2, 19, 13, 2, 64, 64, seed=1)
    pc = {n: t.detach().to("cuda", dtype if n in ("q", "k", "v") else torch.float32)
          .requires_grad_() for n, t in p64.items()}
    ref_in = {n: t.detach().cpu().double().requires_grad_() for n, t in pc.items()}  # same rounding
    out, grads = _run(plstm_2d, pc, backend=backend)
    ref, ref_grads = _run(plstm_2d, ref_in, backend="torch")
    assert_close("o", out, ref, tol)
    for name, g, g_ref in zip(NAMES, grads, ref_grads):
        assert_close(f"d{name}", g, g_ref, tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)], ids=str)
def test_plstm_1d_triton_cuda(dtype, tol):
    p64 = line_problem(2, 301, 4, 64, 64, seed=2)
    with torch.no_grad():
        p64["transition"].copy_(torch.tanh(p64["transition"]))
    pc = {n: t.detach().to("cuda", dtype if n in ("q", "k", "v") else torch.float32)
          .requires_grad_() for n, t in p64.items()}
    ref_in = {n: t.detach().cpu().double().requires_grad_() for n, t in pc.items()}
    out, grads = _run(plstm_1d, pc, backend="auto")
    ref, ref_grads = _run(plstm_1d, ref_in, backend="torch")
    assert_close("o", out, ref, tol)
    for name, g, g_ref in zip(NAMES, grads, ref_grads):
        assert_close(f"d{name}", g, g_ref, tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)], ids=str)
def test_plstm_1d_triton_tree_merge_cuda(dtype, tol):
    """The chunk-parallel forward (log-depth merge of the chunk summaries) and the backward
    kernel, through PLSTM1DTriton(merge="tree")."""
    from flashseq.kernels.plstm.triton_1d import PLSTM1DTriton
    p64 = line_problem(2, 301, 4, 64, 64, seed=3)
    with torch.no_grad():
        p64["transition"].copy_(torch.tanh(p64["transition"]))
    pc = {n: t.detach().to("cuda", dtype if n in ("q", "k", "v") else torch.float32)
          .requires_grad_() for n, t in p64.items()}
    ref_in = {n: t.detach().cpu().double().requires_grad_() for n, t in pc.items()}
    out, grads = _run(lambda *a: PLSTM1DTriton.apply(*a, 64 ** -0.5, 64, "tree"), pc)
    ref, ref_grads = _run(plstm_1d, ref_in, backend="torch")
    assert_close("o", out, ref, tol)
    for name, g, g_ref in zip(NAMES, grads, ref_grads):
        assert_close(f"d{name}", g, g_ref, tol)
