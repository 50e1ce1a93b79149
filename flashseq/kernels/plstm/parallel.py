"""Parallel (chunk / tile) forms of pLSTM on a line and on a grid, in PyTorch.

Both cut the problem into blocks, build each block's propagation coefficients from cumulative
products of its transitions (``line_matrix``), and carry [K, V] states only across block
boundaries. The full N x N propagation matrix is never formed: a block of n nodes holds an
[n, n] matrix and boundary coefficients only.

1D (chunk L): inside a chunk, the state leaving node i is P[i, j] = prod_{j < l <= i} t_l times
what node j wrote, so node i reads (through its mark) m_i P[i-1, j] s_j k_j v_j^T; the state that
enters the next chunk is prod(t) C_in + sum_j P[L-1, j] s_j k_j v_j^T. These (prod(t), update)
summaries of all chunks are merged hierarchically (``chunk_states_tree``: log2(NC) rounds of an
associative combine, O(NC log NC) combines) into every chunk's entering state, so no step walks
the chunks one by one.

2D (tile BX x BY): the tile's inputs are its BX * BY sources plus BY states entering from the
left and BX from the top. Sweeping the tile column by column (x), the d-edges of one column
are a line recurrence along y (solved with ``line_matrix`` of the t_du gates), and the r-edges
then follow pointwise; the result gives, for every node's mark read and every edge leaving the
tile, its coefficients over those inputs. Tiles are then visited in order with their
[BX + BY, K, V] boundary states (no hierarchical merge across tiles in 2D: a tile's entering
states depend on two neighbours, so the tile walk stays sequential, nX * nY steps). Autograd
differentiates all of it.
"""
from __future__ import annotations

import torch


def line_matrix(t: torch.Tensor) -> torch.Tensor:
    """[..., L] transitions -> [..., L, L] with P[i, j] = prod_{j < l <= i} t[l] for i >= j,
    0 above the diagonal. Built as a column-wise cumulative product (exact with zero gates)."""
    L = t.shape[-1]
    idx = torch.arange(L, device=t.device)
    below = idx[:, None] > idx[None, :]                     # [l, j]: l > j
    factors = torch.where(below, t[..., :, None], torch.ones((), dtype=t.dtype, device=t.device))
    return torch.cumprod(factors, dim=-2) * (idx[:, None] >= idx[None, :])


def _pad_to(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    extra = size - x.shape[dim]
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def chunk_states_sequential(decay: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """decay [..., NC], update [..., NC, K, V] -> the state entering every chunk [..., NC, K, V]
    of ``C_c = decay_c C_{c-1} + update_c`` (``C_{-1} = 0``), one chunk after the other."""
    state = torch.zeros_like(update[..., 0, :, :])
    entering = []
    for c in range(update.shape[-3]):
        entering.append(state)
        state = decay[..., c, None, None] * state + update[..., c, :, :]
    return torch.stack(entering, dim=-3)


def chunk_states_tree(decay: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """``chunk_states_sequential`` as a log-depth scan over the chunks.

    Chunk summaries (a, U) (the chunk's transition product and the state it leaves when entered
    with zero) compose associatively: (a1, U1) then (a2, U2) is (a2 a1, a2 U1 + U2). Round r
    combines every chunk's running summary with the one 2^r chunks before it (an inclusive
    Hillis-Steele scan): ceil(log2 NC) rounds of independent combines, O(NC log NC) in all.
    Exact with zero or negative decays (only products and sums)."""
    NC = update.shape[-3]
    a, u = decay, update
    shift = 1
    while shift < NC:
        a_prev = torch.cat([torch.ones_like(a[..., :shift]), a[..., :-shift]], dim=-1)
        u_prev = torch.cat([torch.zeros_like(u[..., :shift, :, :]), u[..., :-shift, :, :]],
                           dim=-3)
        u = a[..., None, None] * u_prev + u
        a = a * a_prev
        shift *= 2
    # u[c] is now the state leaving chunk c; chunk c enters with the one leaving c - 1
    return torch.cat([torch.zeros_like(u[..., :1, :, :]), u[..., :-1, :, :]], dim=-3)


CHUNK_MERGES = {"tree": chunk_states_tree, "sequential": chunk_states_sequential}


def plstm_1d_chunked(q, k, v, source, transition, mark, direct, scale, chunk, merge="tree"):
    """q, k [B, T, H, K], v [B, T, H, V], gates [B, T, H] (compute dtype) -> o [B, T, H, V].
    ``merge``: how the chunk summaries are combined into every chunk's entering state,
    "tree" (``chunk_states_tree``, log depth) or "sequential"."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    L = chunk
    NC = -(-T // L)

    def blocks(x):          # [B, T, H, ...] -> [B, H, NC, L, ...]
        x = _pad_to(x, 1, NC * L)
        x = x.reshape(B, NC, L, H, *x.shape[3:])
        return x.permute(0, 3, 1, 2, *range(4, x.dim())) if x.dim() > 4 else x.permute(0, 3, 1, 2)

    qb, kb, vb = blocks(q), blocks(k), blocks(v)
    s, t, m, d = blocks(source), blocks(transition), blocks(mark), blocks(direct)
    P = line_matrix(t)                                           # [B, H, NC, L, L]
    P_prev = torch.cat([torch.zeros_like(P[..., :1, :]), P[..., :-1, :]], dim=-2)   # P[i-1, j]
    gate = m[..., :, None] * P_prev * s[..., None, :] + torch.diag_embed(d)
    scores = scale * (qb @ kb.transpose(-1, -2)) * gate          # [B, H, NC, L, L]
    o_intra = scores @ vb                                        # [B, H, NC, L, V]
    # transitions from the chunk's entry: prod_{l <= i} t_l; a node reads the one before it
    enter = torch.cumprod(t, dim=-1)                             # [B, H, NC, L]
    enter_prev = torch.cat([torch.ones_like(enter[..., :1]), enter[..., :-1]], dim=-1)
    read_in = scale * m * enter_prev                             # [B, H, NC, L]
    write_out = P[..., -1, :] * s                                # [B, H, NC, L]
    # chunk summaries: C_out = decay C_in + update, merged over the chunks
    update = (kb * write_out[..., None]).transpose(-1, -2) @ vb   # [B, H, NC, K, V]
    entering = CHUNK_MERGES[merge](enter[..., -1], update)         # [B, H, NC, K, V]
    o = o_intra + read_in[..., None] * (qb @ entering)
    return o.permute(0, 2, 3, 1, 4).reshape(B, NC * L, H, V)[:, :T]


def _tile_coefficients(s_r, s_d, t_rl, t_ru, t_dl, t_du, m_l, m_u):
    """Gates [Z..., BX, BY] -> (marks [Z..., BX*BY, n_in], leaving [Z..., BY+BX, n_in]).

    Inputs (columns): BY states entering from the left (row b), BX from the top (column a),
    then the BX*BY sources (node a*BY + b, its k v^T before the source gate). Rows of
    ``leaving``: the BY r edges leaving on the right, then the BX d edges leaving at the bottom.
    """
    BX, BY = s_r.shape[-2:]
    n_in = BY + BX + BX * BY
    eye = torch.eye(n_in, dtype=s_r.dtype, device=s_r.device)
    ones = torch.ones_like(t_du[..., :1, :1])
    left = eye[:BY]                                              # coefficients of the l edges
    marks, bottom = [], []
    for a in range(BX):
        unit_src = eye[BY + BX + a * BY: BY + BX + (a + 1) * BY]  # [BY, n_in]
        top = eye[BY + a].expand(*t_du.shape[:-2], 1, n_in)
        col = lambda g: g[..., a, :, None]                       # noqa: E731  [Z..., BY, 1]
        # d edges of column a: D_b = t_du[b] D_{b-1} + (t_dl[b] L_b + s_d[b] src_b), D_{-1} = top
        drive = torch.cat([top, col(t_dl) * left + col(s_d) * unit_src], dim=-2)
        P = line_matrix(torch.cat([ones[..., 0], t_du[..., a, :]], dim=-1))  # [Z..., BY+1, BY+1]
        d_all = P @ drive                                        # row 0: top, row b+1: D_b
        up = d_all[..., :-1, :]                                  # u edge entering (a, b)
        marks.append(col(m_l) * left + col(m_u) * up)
        bottom.append(d_all[..., -1, :])
        left = col(t_rl) * left + col(t_ru) * up + col(s_r) * unit_src
    marks = torch.cat(marks, dim=-2)                             # [Z..., BX*BY, n_in]
    leaving = torch.cat([left, torch.stack(bottom, dim=-2)], dim=-2)
    return marks, leaving


def _grid_tiles(x: torch.Tensor, tile) -> torch.Tensor:
    """[B, X, Y, H, *rest] -> [B, H, nX, nY, BX, BY, *rest], zero-padded to whole tiles."""
    B, X, Y, H = x.shape[:4]
    BX, BY = tile
    nX, nY = -(-X // BX), -(-Y // BY)
    x = _pad_to(_pad_to(x, 1, nX * BX), 2, nY * BY)
    x = x.reshape(B, nX, BX, nY, BY, H, *x.shape[4:])
    return x.permute(0, 5, 1, 3, 2, 4, *range(6, x.dim()))


def tile_coefficients_2d(source, transition, mark, tile):
    """Every tile's propagation coefficients from ``plstm_2d``'s gates (source, mark
    [B, X, Y, H, 2], transition [B, X, Y, H, 2, 2]) for a (BX, BY) tile: (marks
    [B, H, nX, nY, BX*BY, n_in], leaving [B, H, nX, nY, BX+BY, n_in]) with n_in = BY + BX +
    BX*BY (columns: BY left states, BX top states, the node sources; rows of ``leaving``: BY r
    edges out on the right, then BX d edges out at the bottom). No q, k, v: one tile's
    coefficients cost O(BX BY^2 n_in) and all tiles are built at once."""
    gates = [_grid_tiles(g, tile) for g in (
        source[..., 0], source[..., 1], transition[..., 0, 0], transition[..., 0, 1],
        transition[..., 1, 0], transition[..., 1, 1], mark[..., 0], mark[..., 1])]
    return _tile_coefficients(*gates)


def tile_chain_sequential(M: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """M [..., n, a, a], U [..., n, a, K, V] -> the state entering every link [..., n, a, K, V]
    of ``D_j = M_j D_{j-1} + U_j`` (``D_{-1} = 0``; D holds ``a`` edge states), one after the
    other."""
    state = torch.zeros_like(U[..., 0, :, :, :])
    entering = []
    for j in range(U.shape[-4]):
        entering.append(state)
        state = torch.einsum("...ab,...bkv->...akv", M[..., j, :, :], state) + U[..., j, :, :, :]
    return torch.stack(entering, dim=-4)


def tile_chain_tree(M: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """``tile_chain_sequential`` as a log-depth scan: summaries (M, U) compose associatively,
    (M1, U1) then (M2, U2) = (M2 M1, M2 U1 + U2) (``chunk_states_tree`` with matrix decays)."""
    n = U.shape[-4]
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device).expand_as(M[..., :1, :, :])
    shift = 1
    while shift < n:
        M_prev = torch.cat([eye.expand_as(M[..., :shift, :, :]), M[..., :-shift, :, :]], dim=-3)
        U_prev = torch.cat([torch.zeros_like(U[..., :shift, :, :, :]), U[..., :-shift, :, :, :]],
                           dim=-4)
        U = torch.einsum("...ab,...bkv->...akv", M, U_prev) + U
        M = M @ M_prev
        shift *= 2
    return torch.cat([torch.zeros_like(U[..., :1, :, :, :]), U[..., :-1, :, :, :]], dim=-4)


TILE_CHAINS = {"tree": tile_chain_tree, "sequential": tile_chain_sequential}


def plstm_2d_tiled(q, k, v, source, transition, mark, direct, scale, tile, merge="tree"):
    """q, k [B, X, Y, H, K], v [B, X, Y, H, V], source, mark [B, X, Y, H, 2], transition
    [B, X, Y, H, 2, 2] ([out r/d, in l/u]), direct [B, X, Y, H] -> o [B, X, Y, H, V].

    The tile rows (x) are walked in order. Within a row, the r states entering every tile are
    known from the row before, so the d states passed down the row's tiles form a chain
    ``D_j = L_dd[j] D_{j-1} + (L_dl[j] R_j + sources)`` with [BX, BX] matrix links: ``merge``
    "tree" merges it by a log-depth scan (``tile_chain_tree``), "sequential" walks it; then
    every tile of the row is computed at once. nX sequential steps of depth log2(nY)."""
    B, X, Y, H, K = q.shape
    V = v.shape[-1]
    BX, BY = tile
    nX, nY = -(-X // BX), -(-Y // BY)
    nb, n = BX + BY, BX * BY

    def tiles(x):
        return _grid_tiles(x, tile)

    marks, leaving = tile_coefficients_2d(source, transition, mark, tile)
    mark_in, mark_src = marks[..., :nb], marks[..., nb:]         # [B, H, nX, nY, n, nb | n]
    leave_in, leave_src = leaving[..., :nb], leaving[..., nb:]   # [B, H, nX, nY, nb, nb | n]
    d = tiles(direct).reshape(B, H, nX, nY, n)
    qt = tiles(q).reshape(B, H, nX, nY, n, K)
    kt = tiles(k).reshape(B, H, nX, nY, n, K)
    vt = tiles(v).reshape(B, H, nX, nY, n, V)
    scores = scale * (qt @ kt.transpose(-1, -2)) * (mark_src + torch.diag_embed(d))
    o_src = scores @ vt                                          # [B, H, nX, nY, n, V]
    written = torch.einsum("bhxyep,bhxypk,bhxypv->bhxyekv", leave_src, kt, vt)
    right = q.new_zeros(B, H, nY, BY, K, V)        # r states entering the row's tiles
    outs = []
    for i in range(nX):
        L = leave_in[:, :, i]                                    # [B, H, nY, nb, nb]
        drive = torch.einsum("bhyei,bhyikv->bhyekv", L[..., BY:, :BY], right) + \
            written[:, :, i, :, BY:]                             # [B, H, nY, BX, K, V]
        below = TILE_CHAINS[merge](L[..., BY:, BY:], drive)      # d states entering each tile
        c_in = torch.cat([right, below], dim=-3)                 # [B, H, nY, nb, K, V]
        read = torch.einsum("bhypi,bhypk,bhyikv->bhypv", mark_in[:, :, i], qt[:, :, i], c_in)
        outs.append(o_src[:, :, i] + scale * read)
        right = torch.einsum("bhyei,bhyikv->bhyekv", L[..., :BY, :], c_in) + \
            written[:, :, i, :, :BY]
    o = torch.stack(outs, dim=2).reshape(B, H, nX, nY, BX, BY, V)
    o = o.permute(0, 2, 4, 3, 5, 1, 6).reshape(B, nX * BX, nY * BY, H, V)
    return o[:, :X, :Y]
