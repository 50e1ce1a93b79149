"""plstm_1d's chunk-parallel Triton forward (chunks merged by a log-depth scan, interpreter on
CPU) against the sequential kernel and against direct DAG propagation in float64: odd lengths,
one to five chunks, D-mode (negative) and exact-zero transitions, NaN-poisoned buffers; its
entering states drive the backward kernel to every gradient."""
import os

import pytest
import torch

from flashseq.kernels.plstm import plstm_dag
from tests.helpers import assert_close
from tests.kernels.plstm_cases import line_as_dag, line_problem

NAMES = ("q", "k", "v", "source", "transition", "mark", "direct")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (tests/conftest.py sets it without CUDA)")


def _problem(T, seed, zero_at=None, K=4, V=6):
    p = line_problem(1, T, 2, K, V, seed=seed)
    with torch.no_grad():
        p["transition"].copy_(torch.tanh(2 * p["transition"]))       # D-mode: signs in (-1, 1)
        if zero_at is not None:
            p["transition"][:, zero_at] = 0.0
    return p


@pytest.mark.parametrize("T,zero_at", [(5, None), (37, None), (77, None), (70, 40)], ids=str)
def test_tree_forward_equals_sequential_kernel_and_dag(T, zero_at, nan_poison_empty):
    from flashseq.kernels.plstm.triton_1d import plstm_1d_triton_bwd, plstm_1d_triton_fwd
    from flashseq.kernels.plstm.triton_1d_tree import plstm_1d_triton_fwd_tree
    p64 = _problem(T, seed=T, zero_at=zero_at)
    args = [p64[n].detach().float().to(DEVICE).contiguous() for n in NAMES]
    scale = 0.5
    o_tree, st_tree = plstm_1d_triton_fwd_tree(*args, scale, 16)
    o_seq, st_seq = plstm_1d_triton_fwd(*args, scale, 16, keep_states=True)
    assert st_tree.shape == st_seq.shape == (2, -(-T // 16), 4, 6)
    assert_close("states", st_tree, st_seq, 1e-5)
    assert_close("o vs sequential kernel", o_tree, o_seq, 1e-5)
    dag_args, kw = line_as_dag(p64)
    ref = plstm_dag(*dag_args, **kw, scale=scale)
    assert_close("o", o_tree, ref, 1e-5)
    if zero_at is None:   # the kernel's t dt / t needs nonzero transitions (see triton_1d)
        do = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3),
                         dtype=torch.float64)
        grads = plstm_1d_triton_bwd(*args, do.float().to(DEVICE), st_tree, scale, 16)
        ref_grads = torch.autograd.grad(ref, [p64[n] for n in NAMES], do)
        for name, g, g_ref in zip(NAMES, grads, ref_grads):
            assert_close(f"d{name}", g, g_ref, 1e-5)


def test_autograd_function_with_tree_merge():
    """PLSTM1DTriton(merge="tree"): the tree forward and the backward kernel through autograd."""
    from flashseq.kernels.plstm.triton_1d import PLSTM1DTriton
    p64 = _problem(41, seed=4)
    p32 = {n: p64[n].detach().float().to(DEVICE).requires_grad_() for n in NAMES}
    out = PLSTM1DTriton.apply(*(p32[n] for n in NAMES), 0.5, 16, "tree")
    dag_args, kw = line_as_dag(p64)
    ref = plstm_dag(*dag_args, **kw, scale=0.5)
    assert_close("o", out, ref, 1e-5)
    do = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grads = torch.autograd.grad(out, [p32[n] for n in NAMES], do.float().to(DEVICE))
    for name, g, g_ref in zip(NAMES, grads, torch.autograd.grad(ref, [p64[n] for n in NAMES], do)):
        assert_close(f"d{name}", g, g_ref, 1e-5)


def test_tree_forward_with_several_value_blocks():
    """V = 36: three V blocks of 16 per chunk (the last partial) in every tree kernel."""
    from flashseq.kernels.plstm.triton_1d import plstm_1d_triton_fwd
    from flashseq.kernels.plstm.triton_1d_tree import plstm_1d_triton_fwd_tree
    p64 = _problem(37, seed=8, K=20, V=36)
    args = [p64[n].detach().float().to(DEVICE).contiguous() for n in NAMES]
    o_tree, st_tree = plstm_1d_triton_fwd_tree(*args, 0.5, 16)
    o_seq, st_seq = plstm_1d_triton_fwd(*args, 0.5, 16, keep_states=True)
    assert_close("states", st_tree, st_seq, 1e-5)
    dag_args, kw = line_as_dag(p64)
    assert_close("o", o_tree, plstm_dag(*dag_args, **kw, scale=0.5), 1e-5)
