"""Triton chunkwise (gated) delta rule forward, through the WY/UT representation.

Layout as in ``triton_chunk.py``: packed sequences cut into chunks of BT steps per sequence
(``chunk_layout``: ``CHUNKS`` [NC, 2] each chunk's first step and its sequence's end, ``CO``
each sequence's first chunk). Within a chunk, with G the chunk-local cumulative log decay
(fp32; zeros without g) and S_0 the state at the chunk's start, the BT updates
``S <- exp(g_r) S + beta_r k_r^T (v_r - k_r exp(g_r) S)`` are, all at once,

    A[r, s] = beta_r exp(G_r - G_s) k_r . k_s   (s < r),   T = (I + A)^-1,
    u = T (beta v) - T (beta exp(G) k) S_0 = u~ - w S_0                     (pseudo-values)
    S_end = exp(G_last) S_0 + (k exp(G_last - G))^T u,
    o = scale ((q exp(G)) S_0 + P u),   P[r, s] = exp(G_r - G_s) q_r . k_s  (s <= r).

Every exponential is of a difference <= 0 (g <= 0), so none overflows.

``delta_chunk_fwd_kernel_wy``  grid (NC, H): G, T (forward substitution, one row at a time, in
    fp32), ``w`` [.., K] and ``u~`` [.., V] (fp32), each chunk on its own.
``delta_chunk_fwd_kernel_h``   grid (1, V/BV, N*H): the state pass, shared by the forward and
    (recomputing it) the backward. ``u = u~ - w S_0`` needs all of K, so a program holds all
    K rows of its V block, as up to four tiles of 64 rows (K <= 256); stores each chunk's S_0
    and u.
``delta_chunk_fwd_kernel_o``   grid (V/BV, NC, H): the output.

DeltaProduct (n_h Householder steps per token) runs as a delta rule over T * n_h steps with the
decay on each token's first step and the query on its last (``triton_ops_delta``), as the
PyTorch chunkwise path does.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_chunk import chunk_launch_dims, precision
from .triton_common import chunk_bounds, chunk_state_program, chunk_steps, load_state, state_tile

# The state passes hold a program's [K, BV] block of the state as up to four [STATE_BK, BV]
# tiles (K <= 256): as one [KP, BV] block with [BT, KP] operand tiles they spilled at K = 128.
STATE_BK = 64
# every kernel but the backward's dg runs at least 8 warps (the [BT, BT] blocks and, in the
# state passes, up to four state tiles; at 4 the state pass spilled at K = V = 64 on sm_90)
MIN_WARPS = 8


def state_block_v(K, BV):
    """(BK, BV) of the state passes: K tiles of STATE_BK rows (fewer for K < 64), V the plan's."""
    return min(STATE_BK, max(16, triton.next_power_of_2(K))), BV


@triton.jit
def delta_gates(G, GC, o_t, m_t, last, i_h, H: tl.constexpr, BT: tl.constexpr,
                HAS_G: tl.constexpr, FROM_GC: tl.constexpr):
    """(G [BT] chunk-local cumsum of g, G at the chunk's last step); zeros without g. With
    FROM_GC the stored cumsum is read, else it is formed from g (padding steps: g = 0)."""
    if HAS_G:
        if FROM_GC:
            b_g = tl.load(GC + o_t * H + i_h, mask=m_t, other=0.0)
        else:
            b_g = tl.cumsum(tl.load(G + o_t * H + i_h, mask=m_t, other=0.0).to(tl.float32),
                            axis=0)
        b_glast = tl.load(GC + last * H + i_h) if FROM_GC else tl.sum(
            tl.where(o_t == last, b_g, 0.0), axis=0)
    else:
        b_g = tl.zeros([BT], dtype=tl.float32)
        b_glast = tl.sum(b_g, axis=0)
    return b_g, b_glast


@triton.jit
def rows_tile(P, row, n_left, i, D: tl.constexpr, H: tl.constexpr, BT: tl.constexpr,
              BD: tl.constexpr):
    """[BT, BD] tile at D block i of the [.., H, D] tensor P: the BT steps from packed row
    ``row`` (step * H + head) on, of which ``n_left`` exist; zeros elsewhere. int32 offsets
    from a scalar base: int64 address tensors of [BT, 64] tiles cost the state passes spills."""
    o_r = tl.arange(0, BT)
    o_d = i * BD + tl.arange(0, BD)
    return tl.load(P + row * D + o_r[:, None] * (H * D) + o_d[None, :],
                   mask=(o_r < n_left)[:, None] & (o_d < D)[None, :], other=0.0)


@triton.jit
def store_rows_tile(P, row, n_left, i, x, D: tl.constexpr, H: tl.constexpr, BT: tl.constexpr,
                    BD: tl.constexpr):
    """Store ``x`` where ``rows_tile`` reads."""
    o_r = tl.arange(0, BT)
    o_d = i * BD + tl.arange(0, BD)
    tl.store(P + row * D + o_r[:, None] * (H * D) + o_d[None, :], x.to(P.dtype.element_ty),
             mask=(o_r < n_left)[:, None] & (o_d < D)[None, :])


@triton.jit
def state_load(P, base, i, i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, HAS: tl.constexpr):
    """[BK, BV] fp32 tile (K block i, V block i_v) of the [K, V] state at P + base; zeros
    unless HAS."""
    o_k, o_v, _, _, m_h = state_tile(i, i_v, K, V, BK, BV)
    return load_state(P, base + o_k[:, None] * V + o_v[None, :], m_h, BK, BV, HAS)


@triton.jit
def state_store(P, base, i, i_v, x, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr):
    o_k, o_v, _, _, m_h = state_tile(i, i_v, K, V, BK, BV)
    tl.store(P + base + o_k[:, None] * V + o_v[None, :], x.to(P.dtype.element_ty), mask=m_h)


@triton.jit
def chunk_rows_at(t0, eos, i_h, H: tl.constexpr, BT: tl.constexpr):
    """(o_t, m_t, last, row, n_left) of the chunk from step t0 (sequence end eos), head i_h:
    ``chunk_steps``, the packed row (step * H + head) of its first step and the steps its
    sequence has from there on (``rows_tile``'s arguments)."""
    o_t, m_t, last = chunk_steps(t0, eos, BT)
    return o_t, m_t, last, t0 * H + i_h, eos - t0


@triton.jit
def chunk_rows(CHUNKS, i_c, i_h, H: tl.constexpr, BT: tl.constexpr):
    """``chunk_rows_at`` of chunk i_c of the chunk table."""
    t0, eos = chunk_bounds(CHUNKS, i_c)
    return chunk_rows_at(t0, eos, i_h, H, BT)


@triton.jit
def chunk_program(CHUNKS, G, GC, i_c, i_h, H: tl.constexpr, BT: tl.constexpr,
                  HAS_G: tl.constexpr, FROM_GC: tl.constexpr):
    """(o_t, m_t, last, row, n_left, G [BT], G_last) of a per-chunk kernel's program on chunk
    i_c, head i_h: ``chunk_rows`` and ``delta_gates``."""
    o_t, m_t, last, row, n_left = chunk_rows(CHUNKS, i_c, i_h, H, BT)
    b_g, b_glast = delta_gates(G, GC, o_t, m_t, last, i_h, H, BT, HAS_G, FROM_GC)
    return o_t, m_t, last, row, n_left, b_g, b_glast


@triton.jit
def head_steps(P, o_t, m_t, i_h, H: tl.constexpr):
    """[BT] fp32 of the [.., H] tensor P (beta, g's gradients) at steps o_t of head i_h."""
    return tl.load(P + o_t * H + i_h, mask=m_t, other=0.0).to(tl.float32)


@triton.jit
def chunk_block_offsets(i_c, i_h, H: tl.constexpr, BT: tl.constexpr):
    """[BT, BT] offsets of chunk i_c's, head i_h's block in a [NC, H, BT, BT] tensor."""
    o_c = tl.arange(0, BT)
    return (i_c.to(tl.int64) * H + i_h) * BT * BT + o_c[:, None] * BT + o_c[None, :]


@triton.jit
def causal_decay(b_x, b_g, BT: tl.constexpr, STRICT: tl.constexpr):
    """``b_x[r, s] exp(G_r - G_s)`` where s < r (STRICT) or s <= r, else 0 ([BT, BT])."""
    o_c = tl.arange(0, BT)
    if STRICT:
        m = o_c[:, None] > o_c[None, :]
    else:
        m = o_c[:, None] >= o_c[None, :]
    return tl.where(m, b_x * tl.exp(tl.where(m, b_g[:, None] - b_g[None, :], 0.0)), 0.0)


@triton.jit
def state_tiles_load(P, base, i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                     BV: tl.constexpr, HAS: tl.constexpr):
    """V block i_v of the [K, V] state at P + base as the state passes hold it: four [BK, BV]
    fp32 tiles, K blocks 0..3 (K <= 4 BK); the tiles past K are zeros no caller touches."""
    b_1 = state_load(P, base, 0, i_v, K, V, BK, BV, HAS)
    b_2 = tl.zeros([BK, BV], dtype=tl.float32)
    b_3 = tl.zeros([BK, BV], dtype=tl.float32)
    b_4 = tl.zeros([BK, BV], dtype=tl.float32)
    if K > BK:
        b_2 = state_load(P, base, 1, i_v, K, V, BK, BV, HAS)
    if K > 2 * BK:
        b_3 = state_load(P, base, 2, i_v, K, V, BK, BV, HAS)
    if K > 3 * BK:
        b_4 = state_load(P, base, 3, i_v, K, V, BK, BV, HAS)
    return b_1, b_2, b_3, b_4


@triton.jit
def state_tiles_store(P, base, i_v, b_1, b_2, b_3, b_4, K: tl.constexpr, V: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr):
    """Store the tiles of ``state_tiles_load`` (those within K) at P + base."""
    state_store(P, base, 0, i_v, b_1, K, V, BK, BV)
    if K > BK:
        state_store(P, base, 1, i_v, b_2, K, V, BK, BV)
    if K > 2 * BK:
        state_store(P, base, 2, i_v, b_3, K, V, BK, BV)
    if K > 3 * BK:
        state_store(P, base, 3, i_v, b_4, K, V, BK, BV)


@triton.jit
def state_tile_update(b_h, i, K_, row, n_left, b_dec, b_keep, b_u, H: tl.constexpr,
                      K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """K block i of ``S_end = keep S_0 + (k dec)^T u``; dot operands in k's dtype."""
    dt = K_.dtype.element_ty
    b_kd = (rows_tile(K_, row, n_left, i, K, H, BT, BK) * b_dec[:, None]).to(dt)
    return b_h * b_keep + tl.dot(tl.trans(b_kd), b_u.to(dt), input_precision=PREC)


@triton.jit
def w_times_state(W, row, n_left, i, b_h, dt: tl.constexpr, H: tl.constexpr, K: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """``w[:, K block i] S_0[K block i, :]`` [BT, BV], operands in dtype dt."""
    b_w = rows_tile(W, row, n_left, i, K, H, BT, BK).to(dt)
    return tl.dot(b_w, b_h.to(dt), input_precision=PREC)


@triton.jit
def state_tiles_update(b_1, b_2, b_3, b_4, K_, row, n_left, b_dec, b_keep, b_u,
                       H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                       PREC: tl.constexpr):
    """``state_tile_update`` of each tile within K."""
    b_1 = state_tile_update(b_1, 0, K_, row, n_left, b_dec, b_keep, b_u, H, K, BT, BK, PREC)
    if K > BK:
        b_2 = state_tile_update(b_2, 1, K_, row, n_left, b_dec, b_keep, b_u, H, K, BT, BK, PREC)
    if K > 2 * BK:
        b_3 = state_tile_update(b_3, 2, K_, row, n_left, b_dec, b_keep, b_u, H, K, BT, BK, PREC)
    if K > 3 * BK:
        b_4 = state_tile_update(b_4, 3, K_, row, n_left, b_dec, b_keep, b_u, H, K, BT, BK, PREC)
    return b_1, b_2, b_3, b_4


@triton.jit
def pseudo_values(UT, W, row, n_left, i_v, b_1, b_2, b_3, b_4, dt: tl.constexpr,
                  H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                  BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """``u = u~ - w S_0`` [BT, BV] (V block i_v), S_0 the tiles of ``state_tiles_load``."""
    b_u = rows_tile(UT, row, n_left, i_v, V, H, BT, BV) - w_times_state(
        W, row, n_left, 0, b_1, dt, H, K, BT, BK, PREC)
    if K > BK:
        b_u -= w_times_state(W, row, n_left, 1, b_2, dt, H, K, BT, BK, PREC)
    if K > 2 * BK:
        b_u -= w_times_state(W, row, n_left, 2, b_3, dt, H, K, BT, BK, PREC)
    if K > 3 * BK:
        b_u -= w_times_state(W, row, n_left, 3, b_4, dt, H, K, BT, BK, PREC)
    return b_u


@triton.jit
def delta_chunk_fwd_kernel_wy(K_, V_, BETA, G, GC, TM, W, UT, CHUNKS,
                              H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                              BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                              HAS_G: tl.constexpr, PREC: tl.constexpr):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    o_t, m_t, _, row, n_left, b_g, _ = chunk_program(CHUNKS, G, GC, i_c, i_h, H, BT, HAS_G,
                                                     False)                    # b_g [BT]
    o_c = tl.arange(0, BT)
    if HAS_G:
        tl.store(GC + o_t * H + i_h, b_g, mask=m_t)
    b_beta = head_steps(BETA, o_t, m_t, i_h, H)
    b_kk = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        b_k = rows_tile(K_, row, n_left, i_k, K, H, BT, BK)                      # [BT, BK]
        b_kk += tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
    strict = o_c[:, None] > o_c[None, :]
    b_a = tl.where(strict, b_beta[:, None] * tl.exp(tl.where(strict, b_g[:, None] - b_g[None, :],
                                                               0.0)) * b_kk, 0.0)   # [BT, BT]
    # T = (I + A)^-1, row i = e_i - A[i, :] T (rows < i already final, A strictly lower)
    b_t = tl.where(o_c[:, None] == o_c[None, :], 1.0, 0.0)
    for i in range(1, BT):
        a_i = tl.sum(tl.where((o_c == i)[:, None], b_a, 0.0), axis=0)            # [BT]
        row_i = tl.sum(a_i[:, None] * b_t, axis=0)
        b_t = tl.where((o_c == i)[:, None], b_t - row_i[None, :], b_t)
    tl.store(TM + chunk_block_offsets(i_c, i_h, H, BT), b_t)
    b_bk = b_beta * tl.exp(b_g)                                                  # [BT]
    for i_k in range(0, tl.cdiv(K, BK)):
        b_k = rows_tile(K_, row, n_left, i_k, K, H, BT, BK).to(tl.float32)
        store_rows_tile(W, row, n_left, i_k,
                        tl.dot(b_t, b_k * b_bk[:, None], input_precision=PREC), K, H, BT, BK)
    for i_v in range(0, tl.cdiv(V, BV)):
        b_v = rows_tile(V_, row, n_left, i_v, V, H, BT, BV).to(tl.float32)
        store_rows_tile(UT, row, n_left, i_v,
                        tl.dot(b_t, b_v * b_beta[:, None], input_precision=PREC), V, H, BT, BV)


@triton.jit
def delta_chunk_fwd_kernel_h(K_, W, UT, GC, H0, HS, U, HT, CU, CO,
                             H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                             BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                             HAS_G: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
                             PREC: tl.constexpr):
    # the state's V block i_v in up to four K blocks b_h1..b_h4 of BK (= 64) rows each
    _, i_v, i_nh, i_h, bos, eos, c0 = chunk_state_program(CU, CO, H)
    dt = K_.dtype.element_ty
    p_h0 = i_nh.to(tl.int64) * K * V
    b_h1, b_h2, b_h3, b_h4 = state_tiles_load(H0, p_h0, i_v, K, V, BK, BV, HAS_H0)
    for c in range(0, tl.cdiv(eos - bos, BT)):
        state_tiles_store(HS, ((c0 + c) * H + i_h) * K * V, i_v, b_h1, b_h2, b_h3, b_h4,
                          K, V, BK, BV)
        o_t, m_t, last, row, n_left = chunk_rows_at(bos + c * BT, eos, i_h, H, BT)
        b_u = pseudo_values(UT, W, row, n_left, i_v, b_h1, b_h2, b_h3, b_h4, dt, H, K, V, BT,
                            BK, BV, PREC)                                       # [BT, BV]
        store_rows_tile(U, row, n_left, i_v, b_u, V, H, BT, BV)
        b_g, b_glast = delta_gates(GC, GC, o_t, m_t, last, i_h, H, BT, HAS_G, True)
        b_dec = tl.exp(b_glast - b_g)
        b_keep = tl.exp(b_glast)
        b_h1, b_h2, b_h3, b_h4 = state_tiles_update(b_h1, b_h2, b_h3, b_h4, K_, row, n_left,
                                                    b_dec, b_keep, b_u, H, K, BT, BK, PREC)
    if STORE_HT:
        state_tiles_store(HT, p_h0, i_v, b_h1, b_h2, b_h3, b_h4, K, V, BK, BV)


@triton.jit
def delta_chunk_fwd_kernel_o(Q, K_, GC, HS, U, O, CHUNKS, scale,
                             H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                             BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                             HAS_G: tl.constexpr, PREC: tl.constexpr):
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, _, _, row, n_left, b_g, _ = chunk_program(CHUNKS, GC, GC, i_c, i_h, H, BT, HAS_G, True)
    b_qk = tl.zeros([BT, BT], dtype=tl.float32)
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    p_hs = (i_c.to(tl.int64) * H + i_h) * K * V
    for i_k in range(0, tl.cdiv(K, BK)):
        b_q = rows_tile(Q, row, n_left, i_k, K, H, BT, BK)                        # [BT, BK]
        b_k = rows_tile(K_, row, n_left, i_k, K, H, BT, BK)
        b_qk += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
        b_hs = state_load(HS, p_hs, i_k, i_v, K, V, BK, BV, True)                   # [BK, BV]
        b_o += tl.dot(b_q.to(tl.float32), b_hs, input_precision=PREC)
    b_p = causal_decay(b_qk, b_g, BT, False)
    b_u = rows_tile(U, row, n_left, i_v, V, H, BT, BV)                            # [BT, BV]
    b_o = b_o * tl.exp(b_g)[:, None] + tl.dot(b_p, b_u, input_precision=PREC)
    store_rows_tile(O, row, n_left, i_v, scale * b_o, V, H, BT, BV)


def delta_chunk_prepare(k, v, beta, g, h0, layout, tiles, output_final_state):
    """The WY pass and the state pass: (gc [B, T, H] fp32 or None, T [NC, H, BT, BT] fp32,
    w [B, T, H, K] fp32, u~ [B, T, H, V] fp32, states at every chunk start [NC, H, K, V]
    (k's dtype), u [B, T, H, V] fp32, final [N, H, K, V] fp32 or None)."""
    cu, co, chunks = layout
    _, _, H, K = k.shape
    V = v.shape[-1]
    N, NC = cu.numel() - 1, chunks.shape[0]
    BT, BK, BV, W = tiles
    prec = precision(k.dtype)
    f32 = dict(dtype=torch.float32)
    gc = torch.empty_like(g, **f32) if g is not None else None
    tm = k.new_empty(NC, H, BT, BT, **f32)
    w = torch.empty_like(k, **f32)
    ut = torch.empty_like(v, **f32)
    delta_chunk_fwd_kernel_wy[(NC, H)](k, v, beta, g, gc, tm, w, ut, chunks, H=H, K=K, V=V,
                                       BT=BT, BK=BK, BV=BV, HAS_G=g is not None, PREC=prec,
                                       num_warps=W)
    SBK, SBV = state_block_v(K, BV)
    hs = k.new_empty(NC, H, K, V)
    u = torch.empty_like(v, **f32)
    ht = k.new_empty(N, H, K, V, **f32) if output_final_state else None
    delta_chunk_fwd_kernel_h[(1, triton.cdiv(V, SBV), N * H)](
        k, w, ut, gc, h0, hs, u, ht, cu, co, H=H, K=K, V=V, BT=BT, BK=SBK, BV=SBV,
        HAS_G=g is not None, HAS_H0=h0 is not None, STORE_HT=output_final_state, PREC=prec,
        num_warps=max(W, MIN_WARPS))
    return gc, tm, w, ut, hs, u, ht


def delta_chunk_fwd(q, k, v, beta, g, h0, scale, cu_seqlens, output_final_state, tiles):
    """Launch the forward: (o [B, T, H, V], final [N, H, K, V] fp32 or None). Inputs
    [B, T, H, .] contiguous, beta and g [B, T, H]."""
    _, _, H, K, V, layout, _, NC = chunk_launch_dims(q, v, cu_seqlens, tiles)
    BT, BK, BV, W = tiles
    gc, _, _, _, hs, u, ht = delta_chunk_prepare(k, v, beta, g, h0, layout, tiles,
                                                 output_final_state)
    o = torch.empty_like(v)
    delta_chunk_fwd_kernel_o[(triton.cdiv(V, BV), NC, H)](
        q, k, gc, hs, u, o, layout[2], scale, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
        HAS_G=g is not None, PREC=precision(q.dtype), num_warps=max(W, MIN_WARPS))
    return o, ht


__all__ = ["delta_chunk_fwd", "delta_chunk_prepare", "state_block_v"]
