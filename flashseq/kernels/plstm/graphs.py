"""The line and the X x Y grid as explicit DAGs, with their gates laid out per edge.

``plstm_1d`` and ``plstm_2d`` equal ``plstm_dag`` on the graphs built here; the tests use these
builders to check exactly that, and users can start from them to build their own graphs.

Line of T nodes: edge t joins node t to t + 1 (T - 1 edges); pair t - 1 joins edge t - 1 to edge
t at node t (T - 2 pairs). Grid of X x Y nodes, node (x, y) numbered x * Y + y (a topological
order): "r" edges go +x, "d" edges go +y; node (x, y) has incoming edges "l" (the r edge from
(x - 1, y)) and "u" (the d edge from (x, y - 1)). Edges leaving the grid are left out: nothing
reads them.
"""
from __future__ import annotations

import torch


def line_dag(T: int):
    """(edges [T-1, 2], pairs [T-2, 2]) int64 of the line of ``T`` nodes."""
    t = torch.arange(max(T - 1, 0))
    edges = torch.stack([t, t + 1], dim=1)
    p = torch.arange(1, max(T - 1, 1))
    pairs = torch.stack([p - 1, p], dim=1)
    return edges, pairs.reshape(-1, 2)


def line_gates_to_dag(source, transition, mark):
    """Per-node line gates [B, T, H] -> per-edge / per-pair gates of ``line_dag(T)``:
    (source [B, T-1, H], transition [B, T-2, H], mark [B, T-1, H])."""
    return source[:, :-1], transition[:, 1:-1], mark[:, 1:]


def grid_dag(X: int, Y: int):
    """(edges [E, 2], pairs [P, 2], edge_kind) of the X x Y grid; ``edge_kind`` [E] is 0 for
    an r edge (+x), 1 for a d edge (+y). Edges are numbered: first every r edge in node order of
    their start (x * Y + y for x < X - 1), then every d edge (y < Y - 1)."""
    node = torch.arange(X * Y).reshape(X, Y)
    r_from, r_to = node[:-1, :].reshape(-1), node[1:, :].reshape(-1)
    d_from, d_to = node[:, :-1].reshape(-1), node[:, 1:].reshape(-1)
    edges = torch.cat([torch.stack([r_from, r_to], 1), torch.stack([d_from, d_to], 1)])
    n_r = r_from.numel()
    r_id = torch.full((X, Y), -1, dtype=torch.long)
    d_id = torch.full((X, Y), -1, dtype=torch.long)
    r_id[:-1, :] = torch.arange(n_r).reshape(X - 1, Y)
    d_id[:, :-1] = n_r + torch.arange(d_from.numel()).reshape(X, Y - 1)
    pairs = []
    # at node (x, y): in "l" = r edge of (x-1, y), in "u" = d edge of (x, y-1)
    for x in range(X):
        for y in range(Y):
            ins = [r_id[x - 1, y] if x > 0 else -1, d_id[x, y - 1] if y > 0 else -1]
            outs = [r_id[x, y], d_id[x, y]]
            for o in range(2):
                for i in range(2):
                    if ins[i] >= 0 and outs[o] >= 0:
                        pairs.append((int(ins[i]), int(outs[o])))
    kind = torch.cat([torch.zeros(n_r, dtype=torch.long),
                     torch.ones(d_from.numel(), dtype=torch.long)])
    return edges, torch.tensor(pairs, dtype=torch.long).reshape(-1, 2), kind


def grid_gates_to_dag(source, transition, mark, edges, pairs, kind, Y: int):
    """Grid gates (``plstm_2d``'s layout: source [B, X, Y, H, 2], transition [B, X, Y, H, 2, 2]
    as [out (r, d), in (l, u)], mark [B, X, Y, H, 2] as (l, u)) -> the per-edge and per-pair gates
    of ``grid_dag``: (source [B, E, H], transition [B, P, H], mark [B, E, H])."""
    B, X, _, H = source.shape[:4]
    flat_src = source.reshape(B, X * Y, H, 2)
    flat_mark = mark.reshape(B, X * Y, H, 2)
    flat_tr = transition.reshape(B, X * Y, H, 2, 2)
    e_from, e_to = edges[:, 0], edges[:, 1]
    # an r edge is written by its start's "r" source and read by its end's "l" mark; d: "d", "u"
    src = flat_src[:, e_from, :, :].gather(-1, kind.view(1, -1, 1, 1).expand(B, -1, H, 1))[..., 0]
    mrk = flat_mark[:, e_to, :, :].gather(-1, kind.view(1, -1, 1, 1).expand(B, -1, H, 1))[..., 0]
    f, e = pairs[:, 0], pairs[:, 1]
    at = e_to[f]                                  # the node where the pair meets
    tr = flat_tr.permute(0, 2, 1, 3, 4)[:, :, at, kind[e], kind[f]]    # [B, H, P]
    return src, tr.transpose(1, 2), mrk
