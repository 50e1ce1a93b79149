"""Random pLSTM problems (line and grid) with their DAG twins, shared by the pLSTM tests."""
from __future__ import annotations

import torch

from flashseq.kernels.plstm import (grid_dag, grid_gates_to_dag, line_dag, line_gates_to_dag,
                                    plstm_1d, plstm_dag)
from tests.helpers import assert_close

NAMES = ("q", "k", "v", "source", "transition", "mark", "direct")


def line_problem(B, T, H, K, V, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=1.0):
        x = s * torch.randn(*shape, generator=g, dtype=torch.float64)
        return x.to(dtype).requires_grad_()

    return dict(q=rnd(B, T, H, K), k=rnd(B, T, H, K), v=rnd(B, T, H, V), source=rnd(B, T, H),
                transition=rnd(B, T, H, s=0.7), mark=rnd(B, T, H), direct=rnd(B, T, H))


def grid_problem(B, X, Y, H, K, V, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=1.0):
        x = s * torch.randn(*shape, generator=g, dtype=torch.float64)
        return x.to(dtype).requires_grad_()

    return dict(q=rnd(B, X, Y, H, K), k=rnd(B, X, Y, H, K), v=rnd(B, X, Y, H, V),
                source=rnd(B, X, Y, H, 2), transition=rnd(B, X, Y, H, 2, 2, s=0.5),
                mark=rnd(B, X, Y, H, 2), direct=rnd(B, X, Y, H))


def line_as_dag(p):
    """(args, kwargs) of ``plstm_dag`` on the line that ``p`` (``line_problem``) lives on."""
    T = p["q"].shape[1]
    edges, pairs = line_dag(T)
    src, tr, mrk = line_gates_to_dag(p["source"], p["transition"], p["mark"])
    args = (p["q"], p["k"], p["v"], src, tr, mrk, p["direct"])
    return args, dict(edges=edges, transition_edges=pairs)


def grid_as_dag(p):
    """(args, kwargs) of ``plstm_dag`` on the grid of ``p`` (``grid_problem``), nodes x * Y + y."""
    B, X, Y, H, K = p["q"].shape
    edges, pairs, kind = grid_dag(X, Y)
    src, tr, mrk = grid_gates_to_dag(p["source"], p["transition"], p["mark"], edges, pairs, kind, Y)

    def flat(t):
        return t.reshape(B, X * Y, *t.shape[3:])

    return ((flat(p["q"]), flat(p["k"]), flat(p["v"]), src, tr, mrk, flat(p["direct"])),
            dict(edges=edges, transition_edges=pairs))


def check_1d_float32_against_dag(p64, grad_seed, device="cpu", **kw):
    """``plstm_1d(..., **kw)`` on float32 copies of ``p64`` (``line_problem``, float64) on
    ``device`` against float64 DAG propagation: the output and every input's gradient (output
    gradient drawn from ``grad_seed``) within 1e-5."""
    p32 = {n: t.detach().float().to(device).requires_grad_() for n, t in p64.items()}
    out = plstm_1d(*(p32[n] for n in NAMES), **kw)
    args, dag_kw = line_as_dag(p64)
    ref = plstm_dag(*args, **dag_kw)
    assert_close("o", out, ref, 1e-5)

    def grads(o, inputs):
        do = torch.randn(o.shape, generator=torch.Generator().manual_seed(grad_seed),
                         dtype=torch.float64)
        return torch.autograd.grad(o, inputs, do.to(o.device, o.dtype), allow_unused=True,
                                   materialize_grads=True)

    for name, g, g_ref in zip(NAMES, grads(out, [p32[n] for n in NAMES]),
                              grads(ref, [p64[n] for n in NAMES])):
        assert_close(f"d{name}", g, g_ref, 1e-5)
