"""Direct pLSTM propagation over an explicit DAG: the ground truth, readable before fast.

Semantics (Pöppel et al. 2025, "pLSTM: parallelizable Linear Source Transition Mark networks"):
cell states live on the EDGES of a DAG. Every edge ``e = (a -> b)`` carries a [K, V] state per
batch row and head,

    C_e = source_e * k_a v_a^T + sum over transition pairs (f -> e) of transition_p * C_f,

where the pairs ``p = (f, e)`` join an edge ``f`` entering node ``a`` to ``e`` leaving it. Node
``n`` reads the states of its incoming edges through its mark gates and adds a direct term:

    o_n = scale * q_n^T (sum over edges e entering n of mark_e * C_e  +  direct_n * k_n v_n^T).

All gates here are scalars per (batch row, head); P-mode and D-mode are constraints on their
values (``flashseq.kernels.plstm.gates``), not different propagation rules.
"""
from __future__ import annotations

import torch


def _node_tables(num_nodes: int, edges: torch.Tensor, pairs: torch.Tensor):
    """Per node: incoming edge ids, outgoing edge ids and, per outgoing edge, its transition
    pairs (pair id, incoming edge id), as Python lists (the loop below walks them)."""
    src, dst = edges[:, 0].tolist(), edges[:, 1].tolist()
    incoming = [[] for _ in range(num_nodes)]
    outgoing = [[] for _ in range(num_nodes)]
    for e, (a, b) in enumerate(zip(src, dst)):
        outgoing[a].append(e)
        incoming[b].append(e)
    feeds = [[] for _ in range(len(src))]
    for p, (f, e) in enumerate(pairs.tolist()):
        feeds[e].append((p, f))
    return incoming, outgoing, feeds


def plstm_dag_reference(q, k, v, source, transition, mark, direct, edges, pairs, scale):
    """Walk the nodes in their (topological) order; see the module docstring for the maths.

    Shapes: q, k [B, N, H, K]; v [B, N, H, V]; source, mark [B, E, H]; transition [B, P, H];
    direct [B, N, H]; edges [E, 2] (from node, to node) with from < to; pairs [P, 2]
    (incoming edge, outgoing edge) meeting at one node. Returns o [B, N, H, V] in the dtype
    the inputs are promoted to (float64 inputs give float64).

    Time O((N + E + P) * B * H * K * V), memory O(E * B * H * K * V) for the edge states (kept
    for autograd), and N sequential Python steps: for tests and small graphs.
    """
    B, N, H, K = q.shape
    incoming, outgoing, feeds = _node_tables(N, edges, pairs)
    states = [None] * edges.shape[0]
    outputs = []
    for n in range(N):
        qn, kn, vn = q[:, n], k[:, n], v[:, n]                       # [B, H, K], [B, H, V]
        read = direct[:, n, :, None, None] * (kn[..., :, None] * vn[..., None, :])
        for e in incoming[n]:
            read = read + mark[:, e, :, None, None] * states[e]
        outputs.append(scale * torch.einsum("bhk,bhkv->bhv", qn, read))
        written = kn[..., :, None] * vn[..., None, :]                # [B, H, K, V]
        for e in outgoing[n]:
            state = source[:, e, :, None, None] * written
            for p, f in feeds[e]:
                state = state + transition[:, p, :, None, None] * states[f]
            states[e] = state
    return torch.stack(outputs, dim=1)
