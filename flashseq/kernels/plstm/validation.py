"""Argument checks of the pLSTM entry points: TypeError/ValueError naming the argument, its
shape, dtype and device, and what is allowed."""
from __future__ import annotations

import torch

from flashseq.kernels._checks import FLOAT_DTYPES, check_device, check_scale, describe
from flashseq.kernels._checks import check_float_tensor as check_float
from flashseq.kernels._checks import check_shape as _check_shape

__all__ = ["FLOAT_DTYPES", "describe", "check_float", "check_shape", "check_qkv", "check_gate",
           "check_scale", "check_tile", "check_graph"]


def check_shape(name, t, expected, layout, device):
    """``t`` has shape ``expected`` (axes ``layout``) and lies on q's ``device``."""
    _check_shape(name, t, expected, layout)
    check_device(name, t, device, "q")


def check_qkv(q, k, v, lead: str):
    """q, k [*lead, H, K], v [*lead, H, V] with the same leading sizes; returns
    (lead sizes, H, K, V)."""
    nd = len(lead.split(", ")) + 2
    check_float("q", q, nd, f"[{lead}, H, K]")
    check_float("k", k, nd, f"[{lead}, H, K]")
    check_float("v", v, nd, f"[{lead}, H, V]")
    check_shape("k", k, q.shape, f"[{lead}, H, K]", q.device)
    check_shape("v", v, (*q.shape[:-1], v.shape[-1]), f"[{lead}, H, V]", q.device)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"k and v must have q's dtype {q.dtype}; got k {k.dtype}, v {v.dtype}")
    if min(q.shape) == 0 or v.shape[-1] == 0:
        raise ValueError(f"q, k, v must not be empty; got q {describe(q)}, v {describe(v)}")
    return tuple(q.shape[:-2]), q.shape[-2], q.shape[-1], v.shape[-1]


def check_gate(name, t, expected, layout, q):
    check_float(name, t, len(expected), layout)
    check_shape(name, t, expected, layout, q.device)


def check_tile(name, tile, ndim):
    if tile is None:
        return
    items = (tile,) if ndim == 1 else tile
    if not isinstance(items, (tuple, list)) or len(items) != ndim or \
            not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in items):
        what = "a positive int" if ndim == 1 else "a pair of positive ints (BX, BY)"
        raise ValueError(f"{name} must be {what} or None (planned); got {tile!r}")


def check_graph(edges, pairs, num_nodes):
    """edges [E, 2] (from < to, both in 0..N-1); pairs [P, 2] of edge ids that meet at a node."""
    for name, t in (("edges", edges), ("transition_edges", pairs)):
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64) or \
                t.dim() != 2 or t.shape[1] != 2:
            raise TypeError(f"{name} must be an int32/int64 tensor [*, 2]; got {describe(t)}")
    edges, pairs = edges.cpu().long(), pairs.cpu().long()
    if edges.numel() and (edges.min() < 0 or edges.max() >= num_nodes):
        raise ValueError(f"edges must hold node ids in 0..{num_nodes - 1}; got range "
                         f"{int(edges.min())}..{int(edges.max())}")
    if edges.numel() and not bool((edges[:, 0] < edges[:, 1]).all()):
        bad = int((edges[:, 0] >= edges[:, 1]).nonzero()[0, 0])
        raise ValueError(f"edges must go forward in node order (from < to: nodes topologically "
                         f"ordered); edge {bad} is {edges[bad].tolist()}")
    E = edges.shape[0]
    if pairs.numel() and (pairs.min() < 0 or pairs.max() >= E):
        raise ValueError(f"transition_edges must hold edge ids in 0..{E - 1}; got range "
                         f"{int(pairs.min())}..{int(pairs.max())}")
    if pairs.numel():
        meet = edges[pairs[:, 0], 1] == edges[pairs[:, 1], 0]
        if not bool(meet.all()):
            bad = int((~meet).nonzero()[0, 0])
            raise ValueError(f"transition_edges[{bad}] = {pairs[bad].tolist()} joins edges "
                             "that do not meet at a node (the first must end where the second "
                             "starts)")
    return edges, pairs
