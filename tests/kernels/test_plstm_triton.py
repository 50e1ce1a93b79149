"""plstm_1d's Triton kernels (interpreter on CPU): forward and backward equal direct DAG
propagation in float64 with odd lengths, negative (D-mode) transitions and several chunks; with
exact-zero transitions (the backward then runs the PyTorch form); bfloat16 inputs; the chunk_gla
cross-check; back-end choice and its warning."""
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

import flashseq
from flashseq.kernels.plstm import plstm_1d
from tests.helpers import assert_close
from tests.kernels.plstm_cases import check_1d_float32_against_dag, line_problem

NAMES = ("q", "k", "v", "source", "transition", "mark", "direct")
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (tests/conftest.py sets it without CUDA)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _problem(T, seed, zero_at=None):
    p = line_problem(2, T, 2, 8, 12, seed=seed)
    with torch.no_grad():
        p["transition"].copy_(torch.tanh(2 * p["transition"]))       # D-mode: signs in (-1, 1)
        if zero_at is not None:
            p["transition"][:, zero_at] = 0.0
    return p


@needs_triton
@pytest.mark.parametrize("T,chunk,zero_at", [(37, 16, None), (64, 32, None), (9, 16, None),
                                             (37, 16, 5),
                                             (9, 16, 3)], ids=str)
def test_triton_forward_and_gradients_equal_dag(T, chunk, zero_at):
    p64 = _problem(T, seed=T, zero_at=zero_at)
    check_1d_float32_against_dag(p64, 9, DEVICE, chunk=chunk, backend="triton")


@needs_triton
def test_triton_several_key_and_value_blocks():
    # K = 40, V = 36: the backward walks K in 16-row steps and both kernels split V into blocks
    # of 16 (the last ones partial), whose partial dq, dk and gate gradients the host sums
    p64 = line_problem(1, 37, 2, 40, 36, seed=4)
    with torch.no_grad():
        p64["transition"].copy_(torch.tanh(2 * p64["transition"]))
    check_1d_float32_against_dag(p64, 9, DEVICE, chunk=16, backend="triton")


@needs_triton
def test_triton_bfloat16_forward():
    p64 = _problem(33, seed=2)
    pb = {n: t.detach().to(DEVICE, torch.bfloat16) for n, t in p64.items()}
    out = plstm_1d(*(pb[n] for n in NAMES), chunk=16, backend="triton")
    assert out.dtype == torch.bfloat16
    ref = plstm_1d(*(pb[n].double() for n in NAMES), chunk=16, backend="torch")
    assert_close("o", out, ref, 1e-2)


@needs_triton
def test_triton_equals_chunk_gla_with_scalar_decay():
    B, T, H, K = 1, 40, 2, 16
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(B, T, H, K, generator=gen).to(DEVICE) for _ in range(3))
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen) + 2).to(DEVICE)
    ref = flashseq.ops.chunk_gla(q, k, v, g[..., None].expand(B, T, H, K), backend="torch")[0]
    ones = torch.ones_like(g)
    out = plstm_1d(q, k, v, ones, g.exp(), g.exp(), ones, chunk=16, backend="triton")
    assert_close("o", out, ref, 1e-5)


def test_float64_with_triton_backend_warns_and_uses_pytorch():
    p = {n: t.detach() for n, t in line_problem(1, 10, 1, 4, 4).items()}
    with pytest.warns(UserWarning, match="Triton back end serves"):
        out = plstm_1d(*(p[n] for n in NAMES), backend="triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = plstm_1d(*(p[n] for n in NAMES), backend="torch")
    assert torch.equal(out, ref)


def test_unknown_backend():
    p = {n: t.detach() for n, t in line_problem(1, 4, 1, 2, 2).items()}
    with pytest.raises(ValueError, match="backend must be 'auto', 'torch' or 'triton'"):
        plstm_1d(*(p[n] for n in NAMES), backend="cuda")
