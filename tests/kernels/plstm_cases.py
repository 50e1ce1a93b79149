"""Random pLSTM problems (line and grid) with their DAG twins, shared by the pLSTM tests."""
from __future__ import annotations

import torch

from flashseq.kernels.plstm import grid_dag, grid_gates_to_dag, line_dag, line_gates_to_dag


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
