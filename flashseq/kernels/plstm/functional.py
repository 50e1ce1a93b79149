"""Public pLSTM ops: ``plstm_1d`` (sequence), ``plstm_2d`` (X x Y grid) and ``plstm_dag``.

Gates are scalars per node (or edge) and head; see ``reference.py`` for the propagation they
define and ``gates.py`` for the P-mode and D-mode parametrisations. Inputs of float16/bfloat16
are computed in float32, float64 in float64; the output has q's dtype.
"""
from __future__ import annotations

import os
import warnings

import torch

from . import validation as val
from .parallel import plstm_1d_chunked, plstm_2d_tiled
from .plan import plan_plstm_1d, plan_plstm_1d_triton, plan_plstm_2d, plan_plstm_2d_triton
from .reference import plstm_dag_reference


def _compute(q, *tensors):
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return [t.to(dtype) for t in (q, *tensors)]


# The plstm_2d kernels (forward and backward) have not run on a GPU yet (only the interpreter
# and cubin compile checks, no spills at the planned tile), so "auto" keeps the PyTorch form for
# it; backend="triton" asks for them.
AUTO_TRITON_OPS = ("plstm_1d",)


def _use_triton(backend, q, op="plstm_1d") -> bool:
    """Whether ``op`` (plstm_1d, plstm_2d) runs the Triton forward: "auto" on a CUDA
    float16/bfloat16/float32 call of an op in AUTO_TRITON_OPS; "triton" wherever it can run
    (CUDA, or CPU under TRITON_INTERPRET=1), else one warning and the PyTorch form."""
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton'; got {backend!r}")
    if backend == "torch":
        return False
    servable = q.dtype in (torch.float16, torch.bfloat16, torch.float32) and (
        q.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
    if backend == "auto":
        return servable and q.device.type == "cuda" and op in AUTO_TRITON_OPS
    if not servable:
        warnings.warn(f"{op}: the Triton back end serves float16/bfloat16/float32 on CUDA (or "
                      f"under TRITON_INTERPRET=1); got {q.dtype} on {q.device}: using the PyTorch "
                      "form",
                      stacklevel=3)
    return servable


def plstm_1d(q, k, v, source, transition, mark, direct, *, scale=None, chunk=None, backend="auto"):
    """pLSTM on a sequence: ``C_t = transition_t C_{t-1} + source_t k_t v_t^T`` and
    ``o_t = scale * q_t^T (mark_t C_{t-1} + direct_t k_t v_t^T)`` (node t reads the edge from
    t - 1; ``C_{-1} = 0``).

    Args:
        q, k: [B, T, H, K] float16/bfloat16/float32/float64.
        v: [B, T, H, V], q's dtype and device.
        source, transition, mark, direct: [B, T, H] float, q's device. Scalar gates per step and
            head (``transition_0`` and ``source_{T-1}`` are unused).
        scale: float. Default None: ``K ** -0.5``.
        chunk: int or None (planned). Steps per chunk of the parallel form (the Triton back
            end plans at most 16 on CUDA: longer chunks spill its kernels' registers).
        backend: "auto" (Triton forward on CUDA for float16/bfloat16/float32, else PyTorch),
            "torch" (the chunked PyTorch form) or "triton" (also on CPU under TRITON_INTERPRET=1).
            The Triton back end has a forward and a backward kernel (chunk sizes from the plan).

    Returns:
        o: [B, T, H, V], q's dtype. Differentiable in every tensor argument.

    With ``source = direct = 1`` and ``mark = transition = exp(g)`` this is gated linear
    attention with a per-head scalar decay (``chunk_gla`` with g broadcast over K).

    Examples:
        >>> import torch, flashseq
        >>> q, k, v = torch.randn(3, 2, 10, 4, 16).unbind(0)      # B=2, T=10, H=4, K=V=16
        >>> gates = torch.sigmoid(torch.randn(4, 2, 10, 4)).unbind(0)
        >>> flashseq.ops.plstm_1d(q, k, v, *gates).shape
        torch.Size([2, 10, 4, 16])
    """
    (B, T), H, K, V = val.check_qkv(q, k, v, "B, T")
    named = (("source", source), ("transition", transition), ("mark", mark), ("direct", direct))
    for name, g in named:
        val.check_gate(name, g, (B, T, H), "[B, T, H]", q)
    val.check_scale(scale)
    val.check_tile("chunk", chunk, 1)
    scale = K ** -0.5 if scale is None else float(scale)
    if _use_triton(backend, q):
        from .triton_1d import PLSTM1DTriton
        chunk = chunk or plan_plstm_1d_triton(T, K, V, B * H, q.device.type,
                                              str(q.dtype).replace("torch.", "")).chunk
        gates = [g.float() for g in (source, transition, mark, direct)]
        return PLSTM1DTriton.apply(q, k, v, *gates, scale, chunk)
    chunk = chunk or plan_plstm_1d(T, K, V, B * H, q.device.type).chunk
    args = _compute(q, k, v, source, transition, mark, direct)
    return plstm_1d_chunked(*args, scale=scale, chunk=chunk).to(q.dtype)


def plstm_2d(q, k, v, source, transition, mark, direct, *, scale=None, tile=None,
             backend="auto"):
    """pLSTM on an X x Y grid, one orientation: edges go +x ("r") and +y ("d"); node (x, y)
    reads the r edge from (x-1, y) ("l") and the d edge from (x, y-1) ("u"):

        C_r(x, y) = T[r,l] C_r(x-1, y) + T[r,u] C_d(x, y-1) + source[r] k v^T
        C_d(x, y) = T[d,l] C_r(x-1, y) + T[d,u] C_d(x, y-1) + source[d] k v^T
        o(x, y)   = scale * q^T (mark[l] C_r(x-1, y) + mark[u] C_d(x, y-1) + direct k v^T)

    For images, run it on the four flips of the grid and combine (``flashseq.pLSTM2d`` does).

    Args:
        q, k: [B, X, Y, H, K] float16/bfloat16/float32/float64.
        v: [B, X, Y, H, V], q's dtype and device.
        source: [B, X, Y, H, 2]: (r, d).
        transition: [B, X, Y, H, 2, 2]: [out (r, d), in (l, u)]. P-mode keeps every column's
            absolute sum <= 1; D-mode zeroes one of T[r,u], T[d,l] (``gates.py``).
        mark: [B, X, Y, H, 2]: (l, u).
        direct: [B, X, Y, H].
        scale: float. Default None: ``K ** -0.5``.
        tile: (BX, BY) or None (planned). X and Y need not be multiples of it. The Triton back
            end rounds each side up to a power of two.
        backend: "auto" (the PyTorch form for now: the Triton kernel has not run on a GPU
            yet), "torch" (the tiled PyTorch form) or "triton" (CUDA, or
            CPU under TRITON_INTERPRET=1; float64 warns once and uses PyTorch). The Triton back
            end runs the forward as one kernel (``plan_plstm_2d_triton`` tiles) and the
            backward as one kernel walking the tiles in reverse with the boundary adjoints; it
            keeps every tile's BX + BY entering [K, V] states (fp32) from the forward for it,
            and the gate gradients come from differentiating the tiles' coefficients in
            PyTorch (no q, k, v involved).

    Returns:
        o: [B, X, Y, H, V], q's dtype. Equals ``plstm_dag`` on ``graphs.grid_dag(X, Y)``.
        Differentiable in every tensor argument.

    Examples:
        >>> import torch, flashseq
        >>> from flashseq.kernels.plstm import p_mode_2d
        >>> B, X, Y, H, D = 2, 5, 7, 2, 8
        >>> q, k, v = torch.randn(3, B, X, Y, H, D).unbind(0)
        >>> orient = torch.rand(B, X, Y, H)           # share passed on to the r edge
        >>> source = torch.stack([orient, 1 - orient], -1)
        >>> o = flashseq.ops.plstm_2d(q, k, v, source, p_mode_2d(orient), torch.ones(B, X, Y, H, 2),
        ...                           torch.ones(B, X, Y, H))
        >>> o.shape
        torch.Size([2, 5, 7, 2, 8])
    """
    (B, X, Y), H, K, V = val.check_qkv(q, k, v, "B, X, Y")
    val.check_gate("source", source, (B, X, Y, H, 2), "[B, X, Y, H, 2]", q)
    val.check_gate("transition", transition, (B, X, Y, H, 2, 2), "[B, X, Y, H, 2, 2]", q)
    val.check_gate("mark", mark, (B, X, Y, H, 2), "[B, X, Y, H, 2]", q)
    val.check_gate("direct", direct, (B, X, Y, H), "[B, X, Y, H]", q)
    val.check_scale(scale)
    val.check_tile("tile", tile, 2)
    scale = K ** -0.5 if scale is None else float(scale)
    if _use_triton(backend, q, "plstm_2d"):
        from .triton_2d import PLSTM2DTriton
        fast = plan_plstm_2d_triton(X, Y, K, V, B * H, q.device.type,
                                    str(q.dtype).replace("torch.", ""))
        launch = dict(BV=fast.BV, num_warps=fast.num_warps)
        tile = tuple(tile) if tile is not None else (fast.BX, fast.BY)
        return PLSTM2DTriton.apply(q, k, v, source, transition, mark, direct, scale, tile, launch)
    if tile is None:
        plan = plan_plstm_2d(X, Y, K, V, B * H, q.device.type)
        tile = (plan.BX, plan.BY)
    args = _compute(q, k, v, source, transition, mark, direct)
    return plstm_2d_tiled(*args, scale=scale, tile=tuple(tile)).to(q.dtype)


def plstm_dag(q, k, v, source, transition, mark, direct, *, edges, transition_edges, scale=None):
    """pLSTM on a general DAG, by direct propagation in node order (the reference algorithm).

    Args:
        q, k: [B, N, H, K] float16/bfloat16/float32/float64; N nodes numbered in a topological
            order.
        v: [B, N, H, V], q's dtype and device.
        source, mark: [B, E, H]: per edge, the gate writing its start node's k v^T into it and the
            gate its end node reads it with.
        transition: [B, P, H]: per transition pair.
        direct: [B, N, H].
        edges: [E, 2] int tensor (any device): edge e goes from node edges[e, 0] to edges[e, 1],
            with edges[e, 0] < edges[e, 1].
        transition_edges: [P, 2] int tensor: pair p carries edge [p, 0] (entering a node) into edge
            [p, 1] (leaving the same node) with gate transition[:, p].
        scale: float. Default None: ``K ** -0.5``.

    Returns:
        o: [B, N, H, V], q's dtype:
        ``o_n = scale * q_n^T (sum_{e -> n} mark_e C_e + direct_n k_n v_n^T)``,
        ``C_e = source_e k_a v_a^T + sum_{(f, e)} transition_p C_f`` for e leaving node a.

    Complexity: time O((N + E + P) * B * H * K * V), memory O(E * B * H * K * V) (every edge
    state is kept, for autograd), and N sequential steps of Python: use it for small graphs and
    tests; ``plstm_1d``/``plstm_2d`` are the parallel forms for lines and grids.
    """
    (B, N), H, K, V = val.check_qkv(q, k, v, "B, N")
    edges, pairs = val.check_graph(edges, transition_edges, N)
    E, P = edges.shape[0], pairs.shape[0]
    val.check_gate("source", source, (B, E, H), "[B, E, H]", q)
    val.check_gate("mark", mark, (B, E, H), "[B, E, H]", q)
    val.check_gate("transition", transition, (B, P, H), "[B, P, H]", q)
    val.check_gate("direct", direct, (B, N, H), "[B, N, H]", q)
    val.check_scale(scale)
    scale = K ** -0.5 if scale is None else float(scale)
    args = _compute(q, k, v, source, transition, mark, direct)
    return plstm_dag_reference(*args, edges=edges, pairs=pairs, scale=scale).to(q.dtype)
