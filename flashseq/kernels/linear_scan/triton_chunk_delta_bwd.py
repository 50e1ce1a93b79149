"""Triton chunkwise (gated) delta rule backward (notation of ``triton_chunk_delta.py``).

The forward's chunk states are not kept: the backward runs the WY and state passes again
(``delta_chunk_prepare``), then, per chunk with dS_1 the gradient of the state after it:

``delta_chunk_bwd_kernel_du``   grid (V/BV, NC, H): the intra-chunk part of du, ``scale P^T do``;
``delta_chunk_bwd_kernel_dh``   grid (1, V/BV, N*H), the reverse state pass over the state's K
    tiles (as the forward's): stores dS_1 per chunk, completes
    ``du = scale P^T do + (k exp(G_last - G)) dS_1`` and steps back with
    ``dS_0 = exp(G_last) dS_1 + scale (q exp(G))^T do - w^T du``; the initial state's gradient.
``delta_chunk_bwd_kernel_dp``   grid (NC, H): the gradient of the [BT, BT] product ``q k^T``
    (from P: ``scale do u^T``, causal, decayed) and the G-gradient through P;
``delta_chunk_bwd_kernel_da``   grid (NC, H): the gradients through T = (I + A)^-1:
    ``d(beta v) = T^T du``, ``d(beta exp(G) k) = T^T dw`` with ``dw = -du S_0^T``, and
    ``dA = -(d(beta v) u~^T + d(beta exp(G) k) w^T)`` (strictly lower); writes dv, dbeta,
    the gradient of the product ``k k^T`` (from A), and adds the G-gradient through A and
    ``beta exp(G) k``.
``delta_chunk_bwd_kernel_dqk``  grid (K/BK, NC, H): dq and dk from those products, the state
    terms and ``beta exp(G) d(beta exp(G) k)``; the G-gradient of the state terms per K block.
``delta_chunk_bwd_kernel_dg``   grid (NC, H): ``dg`` is the reverse cumulative sum, within each
    chunk, of the G-gradient (G is the chunk-local cumsum of g).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_chunk import precision
from .triton_chunk_delta import (MIN_WARPS, causal_decay, chunk_block_offsets, chunk_launch_dims,
                                 chunk_program, chunk_rows_at, delta_chunk_prepare, delta_gates,
                                 head_steps, rows_tile, state_block_v, state_load,
                                 state_tiles_load, state_tiles_store, store_rows_tile)
from .triton_common import chunk_bounds, chunk_state_program, chunk_steps


@triton.jit
def chunk_scores(Q, K_, row, n_left, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                 BK: tl.constexpr, PREC: tl.constexpr):
    """``q k^T`` [BT, BT] fp32 of the chunk from packed row ``row`` (``rows_tile``)."""
    b_qk = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        b_q = rows_tile(Q, row, n_left, i_k, K, H, BT, BK)
        b_k = rows_tile(K_, row, n_left, i_k, K, H, BT, BK)
        b_qk += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    return b_qk


@triton.jit
def delta_chunk_bwd_kernel_du(Q, K_, GC, DO, DU, CHUNKS, scale,
                              H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                              BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                              HAS_G: tl.constexpr, PREC: tl.constexpr):
    """The intra-chunk part of du, ``scale P^T do``, each chunk on its own (grid V/BV, NC, H);
    the reverse state pass adds the state's part."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, _, _, row, n_left, b_g, _ = chunk_program(CHUNKS, GC, GC, i_c, i_h, H, BT, HAS_G, True)
    b_p = causal_decay(chunk_scores(Q, K_, row, n_left, H, K, BT, BK, PREC), b_g, BT, False)
    b_do = rows_tile(DO, row, n_left, i_v, V, H, BT, BV)                      # [BT, BV]
    b_du = scale * tl.dot(tl.trans(b_p).to(b_do.dtype), b_do, input_precision=PREC)
    store_rows_tile(DU, row, n_left, i_v, b_du, V, H, BT, BV)

# The dA kernel holds five fp32 [BT, BT] blocks; its V loop runs in blocks of 16 (at BV 32 its
# sm_90 cubin spilled 8 B at BT 64, K = V = 128, 8 warps).
DA_BV = 16


@triton.jit
def du_part(K_, row, n_left, i, b_dec, b_dh, H: tl.constexpr, K: tl.constexpr,
            BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """``(k dec)[:, K block i] dS_1[K block i, :]`` [BT, BV], operands in k's dtype."""
    dt = K_.dtype.element_ty
    b_kd = (rows_tile(K_, row, n_left, i, K, H, BT, BK) * b_dec[:, None]).to(dt)
    return tl.dot(b_kd, b_dh.to(dt), input_precision=PREC)


@triton.jit
def dstate_tile_update(b_dh, i, Q, W, row, n_left, b_qs, b_keep, b_do, b_du, H: tl.constexpr,
                       K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """K block i of ``dS_0 = keep dS_1 + (q qs)^T do - w^T du`` (qs = scale exp(G)); operands
    in q's dtype."""
    dt = Q.dtype.element_ty
    b_qg = (rows_tile(Q, row, n_left, i, K, H, BT, BK) * b_qs[:, None]).to(dt)
    b_w = rows_tile(W, row, n_left, i, K, H, BT, BK).to(dt)
    return (b_dh * b_keep + tl.dot(tl.trans(b_qg), b_do, input_precision=PREC)
            - tl.dot(tl.trans(b_w), b_du.to(dt), input_precision=PREC))


@triton.jit
def du_with_state(b_du, K_, row, n_left, b_dec, b_1, b_2, b_3, b_4, H: tl.constexpr,
                  K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """``du + (k dec) dS_1`` [BT, BV], dS_1 the tiles of ``state_tiles_load``."""
    b_du += du_part(K_, row, n_left, 0, b_dec, b_1, H, K, BT, BK, PREC)
    if K > BK:
        b_du += du_part(K_, row, n_left, 1, b_dec, b_2, H, K, BT, BK, PREC)
    if K > 2 * BK:
        b_du += du_part(K_, row, n_left, 2, b_dec, b_3, H, K, BT, BK, PREC)
    if K > 3 * BK:
        b_du += du_part(K_, row, n_left, 3, b_dec, b_4, H, K, BT, BK, PREC)
    return b_du


@triton.jit
def dstate_tiles_update(b_1, b_2, b_3, b_4, Q, W, row, n_left, b_qs, b_keep, b_do, b_du,
                        H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                        PREC: tl.constexpr):
    """``dstate_tile_update`` of each tile within K."""
    b_1 = dstate_tile_update(b_1, 0, Q, W, row, n_left, b_qs, b_keep, b_do, b_du, H, K, BT, BK,
                             PREC)
    if K > BK:
        b_2 = dstate_tile_update(b_2, 1, Q, W, row, n_left, b_qs, b_keep, b_do, b_du, H, K, BT,
                                 BK, PREC)
    if K > 2 * BK:
        b_3 = dstate_tile_update(b_3, 2, Q, W, row, n_left, b_qs, b_keep, b_do, b_du, H, K, BT,
                                 BK, PREC)
    if K > 3 * BK:
        b_4 = dstate_tile_update(b_4, 3, Q, W, row, n_left, b_qs, b_keep, b_do, b_du, H, K, BT,
                                 BK, PREC)
    return b_1, b_2, b_3, b_4


@triton.jit
def delta_chunk_bwd_kernel_dh(Q, K_, W, GC, DO, DHT, DHS, DU, DH0, CU, CO, scale,
                              H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                              BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                              HAS_G: tl.constexpr, HAS_DHT: tl.constexpr, HAS_H0: tl.constexpr,
                              PREC: tl.constexpr):
    # dS's V block i_v in up to four K blocks b_dh1..b_dh4 of BK (= 64) rows, as the forward
    _, i_v, i_nh, i_h, bos, eos, c0 = chunk_state_program(CU, CO, H)
    p_h0 = i_nh.to(tl.int64) * K * V
    b_dh1, b_dh2, b_dh3, b_dh4 = state_tiles_load(DHT, p_h0, i_v, K, V, BK, BV, HAS_DHT)
    NTn = tl.cdiv(eos - bos, BT)
    for j in range(0, NTn):
        c = NTn - 1 - j
        state_tiles_store(DHS, ((c0 + c) * H + i_h) * K * V, i_v, b_dh1, b_dh2, b_dh3, b_dh4,
                          K, V, BK, BV)
        o_t, m_t, last, row, n_left = chunk_rows_at(bos + c * BT, eos, i_h, H, BT)
        b_g, b_glast = delta_gates(GC, GC, o_t, m_t, last, i_h, H, BT, HAS_G, True)
        b_do = rows_tile(DO, row, n_left, i_v, V, H, BT, BV)                  # [BT, BV]
        b_dec = tl.exp(b_glast - b_g)
        # the intra-chunk part scale P^T do is already there (delta_chunk_bwd_kernel_du)
        b_du = du_with_state(rows_tile(DU, row, n_left, i_v, V, H, BT, BV), K_, row, n_left,
                             b_dec, b_dh1, b_dh2, b_dh3, b_dh4, H, K, BT, BK, PREC)
        store_rows_tile(DU, row, n_left, i_v, b_du, V, H, BT, BV)
        b_qs = scale * tl.exp(b_g)
        b_keep = tl.exp(b_glast)
        b_dh1, b_dh2, b_dh3, b_dh4 = dstate_tiles_update(b_dh1, b_dh2, b_dh3, b_dh4, Q, W, row,
                                                         n_left, b_qs, b_keep, b_do, b_du, H, K,
                                                         BT, BK, PREC)
    if HAS_H0:
        state_tiles_store(DH0, p_h0, i_v, b_dh1, b_dh2, b_dh3, b_dh4, K, V, BK, BV)


@triton.jit
def delta_chunk_bwd_kernel_dp(Q, K_, GC, U, DO, DG, DQK, CHUNKS, scale,
                              H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                              BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                              HAS_G: tl.constexpr, PREC: tl.constexpr):
    """The gradient of the scores ``q k^T`` (``scale do u^T``, causal, decayed), and its
    G-gradient (the first writer of DG)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    o_t, m_t, _, row, n_left, b_g, _ = chunk_program(CHUNKS, GC, GC, i_c, i_h, H, BT, HAS_G,
                                                     True)
    b_dp = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        b_do = rows_tile(DO, row, n_left, i_v, V, H, BT, BV).to(tl.float32)   # [BT, BV]
        b_u = rows_tile(U, row, n_left, i_v, V, H, BT, BV)
        b_dp += tl.dot(b_do, tl.trans(b_u), input_precision=PREC)
    b_dp = causal_decay(scale * b_dp, b_g, BT, False)
    tl.store(DQK + chunk_block_offsets(i_c, i_h, H, BT), b_dp)
    if HAS_G:
        b_dpp = b_dp * chunk_scores(Q, K_, row, n_left, H, K, BT, BK, PREC)
        tl.store(DG + o_t * H + i_h, tl.sum(b_dpp, axis=1) - tl.sum(b_dpp, axis=0), mask=m_t)


@triton.jit
def delta_chunk_bwd_kernel_da(K_, V_, BETA, GC, TM, W, UT, DU, HS, DV, DB, DG, DKK, CHUNKS,
                              H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                              BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                              HAS_G: tl.constexpr, PREC: tl.constexpr):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    o_t, m_t, _, row, n_left, b_g, _ = chunk_program(CHUNKS, GC, GC, i_c, i_h, H, BT, HAS_G,
                                                     True)
    b_beta = head_steps(BETA, o_t, m_t, i_h, H)
    o_c = tl.arange(0, BT)
    p_bb = chunk_block_offsets(i_c, i_h, H, BT)
    b_t = tl.load(TM + p_bb)                                                   # [BT, BT]
    p_hs = (i_c.to(tl.int64) * H + i_h) * K * V
    b_da = tl.zeros([BT, BT], dtype=tl.float32)
    b_db = tl.zeros([BT], dtype=tl.float32)
    b_dg = tl.zeros([BT], dtype=tl.float32)
    if HAS_G:    # the scores' part (delta_chunk_bwd_kernel_dp)
        b_dg += head_steps(DG, o_t, m_t, i_h, H)
    for i_v in range(0, tl.cdiv(V, BV)):
        b_du = rows_tile(DU, row, n_left, i_v, V, H, BT, BV)                  # [BT, BV]
        b_dbv = tl.dot(tl.trans(b_t), b_du, input_precision=PREC)              # d(beta v)
        b_v = rows_tile(V_, row, n_left, i_v, V, H, BT, BV).to(tl.float32)
        store_rows_tile(DV, row, n_left, i_v, b_dbv * b_beta[:, None], V, H, BT, BV)
        b_db += tl.sum(b_v * b_dbv, axis=1)
        b_da += tl.dot(b_dbv, tl.trans(rows_tile(UT, row, n_left, i_v, V, H, BT, BV)),
                       input_precision=PREC)
    b_kk = tl.zeros([BT, BT], dtype=tl.float32)
    b_gam = tl.exp(b_g)
    for i_k in range(0, tl.cdiv(K, BK)):
        b_k = rows_tile(K_, row, n_left, i_k, K, H, BT, BK)                    # [BT, BK]
        b_kk += tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
        b_dw = tl.zeros([BT, BK], dtype=tl.float32)
        for i_v in range(0, tl.cdiv(V, BV)):
            b_du = rows_tile(DU, row, n_left, i_v, V, H, BT, BV)              # [BT, BV]
            b_hs = state_load(HS, p_hs, i_k, i_v, K, V, BK, BV, True)          # [BK, BV]
            b_dw -= tl.dot(b_du, tl.trans(b_hs), input_precision=PREC)
        b_dbk = tl.dot(tl.trans(b_t), b_dw, input_precision=PREC)   # d(beta exp(G) k)
        b_da += tl.dot(b_dbk, tl.trans(rows_tile(W, row, n_left, i_k, K, H, BT, BK)),
                       input_precision=PREC)
        b_kdbk = tl.sum(b_k.to(tl.float32) * b_dbk, axis=1)
        b_db += b_gam * b_kdbk
        b_dg += b_beta * b_gam * b_kdbk
    strict = o_c[:, None] > o_c[None, :]
    decay = tl.exp(tl.where(strict, b_g[:, None] - b_g[None, :], 0.0))
    b_da = tl.where(strict, -b_da, 0.0)
    b_dadk = b_da * decay * b_kk                                 # dA[r, s] A[r, s] / beta_r
    b_db += tl.sum(b_dadk, axis=1)
    b_daa = b_dadk * b_beta[:, None]
    b_dg += tl.sum(b_daa, axis=1) - tl.sum(b_daa, axis=0)
    tl.store(DKK + p_bb, b_da * decay * b_beta[:, None])         # gradient of k k^T
    tl.store(DB + o_t * H + i_h, b_db, mask=m_t)
    if HAS_G:
        tl.store(DG + o_t * H + i_h, b_dg, mask=m_t)


@triton.jit
def delta_chunk_bwd_kernel_dqk(Q, K_, BETA, GC, TM, U, DU, HS, DHS, DO, DKK, DQK, DQ, DK, DGK,
                               CHUNKS, scale, NT_ALL,
                               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                               HAS_G: tl.constexpr, PREC: tl.constexpr):
    i_k, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_t, m_t, last, row, n_left, b_g, b_glast = chunk_program(CHUNKS, GC, GC, i_c, i_h, H, BT,
                                                              HAS_G, True)
    b_beta = head_steps(BETA, o_t, m_t, i_h, H)
    p_state = (i_c.to(tl.int64) * H + i_h) * K * V
    b_dqs = tl.zeros([BT, BK], dtype=tl.float32)     # do S_0^T
    b_dks = tl.zeros([BT, BK], dtype=tl.float32)     # u dS_1^T
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    b_hdh = tl.zeros([BK], dtype=tl.float32)         # <S_0, dS_1> of this K block, per row of S
    for i_v in range(0, tl.cdiv(V, BV)):
        b_do = rows_tile(DO, row, n_left, i_v, V, H, BT, BV).to(tl.float32)   # [BT, BV]
        b_u = rows_tile(U, row, n_left, i_v, V, H, BT, BV)
        b_du = rows_tile(DU, row, n_left, i_v, V, H, BT, BV)
        b_hs = state_load(HS, p_state, i_k, i_v, K, V, BK, BV, True)              # [BK, BV]
        b_dhs = state_load(DHS, p_state, i_k, i_v, K, V, BK, BV, True)
        b_dqs += tl.dot(b_do, tl.trans(b_hs), input_precision=PREC)
        b_dks += tl.dot(b_u, tl.trans(b_dhs), input_precision=PREC)
        b_dw -= tl.dot(b_du, tl.trans(b_hs), input_precision=PREC)
        b_hdh += tl.sum(b_hs * b_dhs, axis=1)
    p_bb = chunk_block_offsets(i_c, i_h, H, BT)
    b_t = tl.load(TM + p_bb)
    b_dkk = tl.load(DKK + p_bb)
    b_dqk = tl.load(DQK + p_bb)
    b_gam = tl.exp(b_g)
    b_kdec = tl.exp(b_glast - b_g)
    b_dbk = tl.dot(tl.trans(b_t), b_dw, input_precision=PREC)
    b_dqs = b_dqs * (scale * b_gam)[:, None]
    b_q = rows_tile(Q, row, n_left, i_k, K, H, BT, BK).to(tl.float32)          # [BT, BK]
    b_k = rows_tile(K_, row, n_left, i_k, K, H, BT, BK).to(tl.float32)
    b_dq = b_dqs + tl.dot(b_dqk, b_k, input_precision=PREC)
    b_dks = b_dks * b_kdec[:, None]
    b_dk = (b_dbk * (b_beta * b_gam)[:, None] + b_dks
            + tl.dot(tl.trans(b_dqk), b_q, input_precision=PREC)
            + tl.dot(b_dkk + tl.trans(b_dkk), b_k, input_precision=PREC))
    store_rows_tile(DQ, row, n_left, i_k, b_dq, K, H, BT, BK)
    store_rows_tile(DK, row, n_left, i_k, b_dk, K, H, BT, BK)
    if HAS_G:
        b_kds = tl.sum(b_k * b_dks, axis=1)                                      # [BT]
        glast_term = tl.sum(b_kds, axis=0) + tl.exp(b_glast) * tl.sum(b_hdh, axis=0)
        b_dg = tl.sum(b_q * b_dqs, axis=1) - b_kds + tl.where(o_t == last, glast_term, 0.0)
        tl.store(DGK + (i_k * NT_ALL + o_t) * H + i_h, b_dg, mask=m_t)


@triton.jit
def delta_chunk_bwd_kernel_dg(DG, DGK, DGOUT, CHUNKS, NT_ALL,
                              H: tl.constexpr, BT: tl.constexpr, NK: tl.constexpr):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0, eos = chunk_bounds(CHUNKS, i_c)
    o_t, m_t, _ = chunk_steps(t0, eos, BT)
    b_dg = head_steps(DG, o_t, m_t, i_h, H)
    for i_k in range(0, NK):
        b_dg += tl.load(DGK + (i_k * NT_ALL + o_t) * H + i_h, mask=m_t, other=0.0)
    b_rev = tl.sum(b_dg, axis=0) - tl.cumsum(b_dg, axis=0) + b_dg
    tl.store(DGOUT + o_t * H + i_h, b_rev.to(DGOUT.dtype.element_ty), mask=m_t)


def delta_chunk_bwd(q, k, v, beta, g, h0, do, dht, scale, cu_seqlens, tiles):
    """All gradients: (dq, dk, dv, dbeta fp32; dg fp32 or None; dh0 fp32 or None). Inputs as
    for ``delta_chunk_fwd``; do [B, T, H, V], dht [N, H, K, V] fp32 or None."""
    B, T, H, K, V, layout, N, NC = chunk_launch_dims(q, v, cu_seqlens, tiles)
    cu, co, chunks = layout
    BT, BK, BV, W = tiles
    prec = precision(q.dtype)
    has_g = g is not None
    f32 = dict(dtype=torch.float32)
    gc, tm, w, ut, hs, u, _ = delta_chunk_prepare(k, v, beta, g, h0, layout, tiles, False)
    SBK, SBV = state_block_v(K, BV)
    dhs = q.new_empty(NC, H, K, V)
    du = torch.empty_like(v, **f32)
    dh0 = q.new_empty(N, H, K, V, **f32) if h0 is not None else None
    delta_chunk_bwd_kernel_du[(triton.cdiv(V, BV), NC, H)](
        q, k, gc, do, du, chunks, scale, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, HAS_G=has_g,
        PREC=prec, num_warps=max(W, MIN_WARPS))
    delta_chunk_bwd_kernel_dh[(1, triton.cdiv(V, SBV), N * H)](
        q, k, w, gc, do, dht, dhs, du, dh0, cu, co, scale, H=H, K=K, V=V, BT=BT, BK=SBK,
        BV=SBV, HAS_G=has_g, HAS_DHT=dht is not None, HAS_H0=h0 is not None, PREC=prec,
        num_warps=max(W, MIN_WARPS))
    dv = torch.empty_like(v, **f32)
    dbeta = torch.empty_like(beta, **f32)
    dg_part = torch.empty_like(beta, **f32) if has_g else None
    dkk = q.new_empty(NC, H, BT, BT, **f32)
    dqk = q.new_empty(NC, H, BT, BT, **f32)
    delta_chunk_bwd_kernel_dp[(NC, H)](
        q, k, gc, u, do, dg_part, dqk, chunks, scale, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
        HAS_G=has_g, PREC=prec, num_warps=max(W, MIN_WARPS))
    delta_chunk_bwd_kernel_da[(NC, H)](
        k, v, beta, gc, tm, w, ut, du, hs, dv, dbeta, dg_part, dkk, chunks,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=DA_BV, HAS_G=has_g, PREC=prec,
        num_warps=max(W, MIN_WARPS))
    NK = triton.cdiv(K, BK)
    dq = torch.empty_like(q, **f32)
    dk = torch.empty_like(k, **f32)
    dgk = q.new_empty(NK, B, T, H, **f32) if has_g else None
    delta_chunk_bwd_kernel_dqk[(NK, NC, H)](
        q, k, beta, gc, tm, u, du, hs, dhs, do, dkk, dqk, dq, dk, dgk, chunks, scale, B * T,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, HAS_G=has_g, PREC=prec, num_warps=max(W, MIN_WARPS))
    dg = None
    if has_g:
        dg = torch.empty_like(g, **f32)
        delta_chunk_bwd_kernel_dg[(NC, H)](dg_part, dgk, dg, chunks, B * T, H=H, BT=BT, NK=NK)
    return dq, dk, dv, dbeta, dg, dh0


__all__ = ["delta_chunk_bwd"]
