"""Triton chunkwise (gated) delta rule backward (notation of ``triton_chunk_delta.py``).

The forward's chunk states are not kept: the backward runs the WY and state passes again
(``delta_chunk_prepare``), then, per chunk with dS_1 the gradient of the state after it:

``delta_chunk_bwd_kernel_dh``   grid (1, V/BV, N*H), the reverse state pass over [KP, BV]
    blocks: stores dS_1 per chunk, ``du = scale P^T do + (k exp(G_last - G)) dS_1`` and
    ``dS_0 = exp(G_last) dS_1 + scale (q exp(G))^T do - w^T du``; the initial state's gradient.
``delta_chunk_bwd_kernel_da``   grid (NC, H): the gradients through T = (I + A)^-1:
    ``d(beta v) = T^T du``, ``d(beta exp(G) k) = T^T dw`` with ``dw = -du S_0^T``, and
    ``dA = -(d(beta v) u~^T + d(beta exp(G) k) w^T)`` (strictly lower); writes dv, dbeta,
    the gradients of the [BT, BT] products ``k k^T`` (from A) and ``q k^T`` (from P), and the
    G-gradient of the terms it sees.
``delta_chunk_bwd_kernel_dqk``  grid (K/BK, NC, H): dq and dk from those products, the state
    terms and ``beta exp(G) d(beta exp(G) k)``; the G-gradient of the state terms per K block.
``delta_chunk_bwd_kernel_dg``   grid (NC, H): ``dg`` is the reverse cumulative sum, within each
    chunk, of the G-gradient (G is the chunk-local cumsum of g).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_chunk import chunk_layout, precision
from .triton_chunk_delta import MIN_WARPS, delta_chunk_prepare, delta_gates, state_block_v
from .triton_common import chunk_bounds, chunk_state_program, chunk_steps, load_state, state_tile


@triton.jit
def delta_chunk_bwd_kernel_dh(Q, K_, W, GC, DO, DHT, DHS, DU, DH0, CU, CO, scale,
                              H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                              BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                              HAS_G: tl.constexpr, HAS_DHT: tl.constexpr, HAS_H0: tl.constexpr,
                              PREC: tl.constexpr):
    i_k, i_v, i_nh, i_h, bos, eos, c0 = chunk_state_program(CU, CO, H)
    o_k, o_v, m_k, m_v, m_h = state_tile(i_k, i_v, K, V, BK, BV)
    o_c = tl.arange(0, BT)
    p_blk = o_k[:, None] * V + o_v[None, :]                                    # [BK, BV]
    b_dh = load_state(DHT, i_nh.to(tl.int64) * K * V + p_blk, m_h, BK, BV, HAS_DHT)
    NTn = tl.cdiv(eos - bos, BT)
    for j in range(0, NTn):
        c = NTn - 1 - j
        tl.store(DHS + ((c0 + c) * H + i_h) * K * V + p_blk, b_dh.to(DHS.dtype.element_ty),
                 mask=m_h)
        o_t, m_t, last = chunk_steps(bos + c * BT, eos, BT)
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        p_tk = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        p_tv = (o_t[:, None] * H + i_h) * V + o_v[None, :]
        b_q = tl.load(Q + p_tk, mask=m_tk, other=0.0).to(tl.float32)            # [BT, BK]
        b_k = tl.load(K_ + p_tk, mask=m_tk, other=0.0).to(tl.float32)
        b_do = tl.load(DO + p_tv, mask=m_tv, other=0.0).to(tl.float32)          # [BT, BV]
        b_g, b_glast = delta_gates(GC, GC, o_t, m_t, last, i_h, H, BT, HAS_G, True)
        incl = o_c[:, None] >= o_c[None, :]
        b_p = tl.where(incl, tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
                       * tl.exp(tl.where(incl, b_g[:, None] - b_g[None, :], 0.0)), 0.0)
        b_kd = b_k * tl.exp(b_glast - b_g)[:, None]
        b_du = (scale * tl.dot(tl.trans(b_p), b_do, input_precision=PREC)
                + tl.dot(b_kd, b_dh, input_precision=PREC))                    # [BT, BV]
        tl.store(DU + p_tv, b_du, mask=m_tv)
        b_w = tl.load(W + p_tk, mask=m_tk, other=0.0)
        b_qg = b_q * (scale * tl.exp(b_g))[:, None]
        b_dh = (b_dh * tl.exp(b_glast) + tl.dot(tl.trans(b_qg), b_do, input_precision=PREC)
                - tl.dot(tl.trans(b_w), b_du, input_precision=PREC))
    if HAS_H0:
        tl.store(DH0 + i_nh.to(tl.int64) * K * V + p_blk, b_dh, mask=m_h)


@triton.jit
def delta_chunk_bwd_kernel_da(Q, K_, V_, BETA, GC, TM, W, UT, U, DU, HS, DO, DV, DB, DG,
                              DKK, DQK, CHUNKS, scale,
                              H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                              BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                              HAS_G: tl.constexpr, PREC: tl.constexpr):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0, eos = chunk_bounds(CHUNKS, i_c)
    o_t, m_t, last = chunk_steps(t0, eos, BT)
    o_c = tl.arange(0, BT)
    b_g, _ = delta_gates(GC, GC, o_t, m_t, last, i_h, H, BT, HAS_G, True)
    b_beta = tl.load(BETA + o_t * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    p_bb = (i_c.to(tl.int64) * H + i_h) * BT * BT + o_c[:, None] * BT + o_c[None, :]
    b_t = tl.load(TM + p_bb)                                                   # [BT, BT]
    p_hs = HS + (i_c.to(tl.int64) * H + i_h) * K * V
    b_dp = tl.zeros([BT, BT], dtype=tl.float32)
    b_da = tl.zeros([BT, BT], dtype=tl.float32)
    b_db = tl.zeros([BT], dtype=tl.float32)
    b_dg = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        p_tv = (o_t[:, None] * H + i_h) * V + o_v[None, :]
        b_do = tl.load(DO + p_tv, mask=m_tv, other=0.0).to(tl.float32)          # [BT, BV]
        b_u = tl.load(U + p_tv, mask=m_tv, other=0.0)
        b_du = tl.load(DU + p_tv, mask=m_tv, other=0.0)
        b_dp += tl.dot(b_do, tl.trans(b_u), input_precision=PREC)
        b_dbv = tl.dot(tl.trans(b_t), b_du, input_precision=PREC)              # d(beta v)
        b_v = tl.load(V_ + p_tv, mask=m_tv, other=0.0).to(tl.float32)
        tl.store(DV + p_tv, b_dbv * b_beta[:, None], mask=m_tv)
        b_db += tl.sum(b_v * b_dbv, axis=1)
        b_da += tl.dot(b_dbv, tl.trans(tl.load(UT + p_tv, mask=m_tv, other=0.0)),
                       input_precision=PREC)
    b_kk = tl.zeros([BT, BT], dtype=tl.float32)
    b_qk = tl.zeros([BT, BT], dtype=tl.float32)
    b_gam = tl.exp(b_g)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        p_tk = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        b_q = tl.load(Q + p_tk, mask=m_tk, other=0.0)                           # [BT, BK]
        b_k = tl.load(K_ + p_tk, mask=m_tk, other=0.0)
        b_kk += tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
        b_qk += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
        b_dw = tl.zeros([BT, BK], dtype=tl.float32)
        for i_v in range(0, tl.cdiv(V, BV)):
            o_v = i_v * BV + tl.arange(0, BV)
            m_v = o_v < V
            b_du = tl.load(DU + (o_t[:, None] * H + i_h) * V + o_v[None, :],
                           mask=m_t[:, None] & m_v[None, :], other=0.0)          # [BT, BV]
            b_hs = tl.load(p_hs + o_k[:, None] * V + o_v[None, :],
                           mask=m_k[:, None] & m_v[None, :], other=0.0).to(tl.float32)
            b_dw -= tl.dot(b_du, tl.trans(b_hs), input_precision=PREC)
        b_dbk = tl.dot(tl.trans(b_t), b_dw, input_precision=PREC)   # d(beta exp(G) k)
        b_da += tl.dot(b_dbk, tl.trans(tl.load(W + p_tk, mask=m_tk, other=0.0)),
                       input_precision=PREC)
        b_kdbk = tl.sum(b_k.to(tl.float32) * b_dbk, axis=1)
        b_db += b_gam * b_kdbk
        b_dg += b_beta * b_gam * b_kdbk
    strict = o_c[:, None] > o_c[None, :]
    incl = o_c[:, None] >= o_c[None, :]
    decay = tl.exp(tl.where(incl, b_g[:, None] - b_g[None, :], 0.0))
    b_da = tl.where(strict, -b_da, 0.0)
    b_dadk = b_da * decay * b_kk                                 # dA[r, s] A[r, s] / beta_r
    b_db += tl.sum(b_dadk, axis=1)
    b_daa = b_dadk * b_beta[:, None]
    b_dp = tl.where(incl, scale * b_dp * decay, 0.0)             # gradient of q k^T
    b_dpp = b_dp * b_qk
    b_dg += tl.sum(b_daa + b_dpp, axis=1) - tl.sum(b_daa + b_dpp, axis=0)
    tl.store(DKK + p_bb, b_da * decay * b_beta[:, None])         # gradient of k k^T
    tl.store(DQK + p_bb, b_dp)
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
    t0, eos = chunk_bounds(CHUNKS, i_c)
    o_t, m_t, last = chunk_steps(t0, eos, BT)
    o_c = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p_tk = (o_t[:, None] * H + i_h) * K + o_k[None, :]
    b_q = tl.load(Q + p_tk, mask=m_tk, other=0.0).to(tl.float32)              # [BT, BK]
    b_k = tl.load(K_ + p_tk, mask=m_tk, other=0.0).to(tl.float32)
    b_g, b_glast = delta_gates(GC, GC, o_t, m_t, last, i_h, H, BT, HAS_G, True)
    b_beta = tl.load(BETA + o_t * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    p_state = (i_c.to(tl.int64) * H + i_h) * K * V
    b_dqs = tl.zeros([BT, BK], dtype=tl.float32)     # do S_0^T
    b_dks = tl.zeros([BT, BK], dtype=tl.float32)     # u dS_1^T
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    b_hdh = tl.zeros([BK], dtype=tl.float32)         # <S_0, dS_1> of this K block, per row of S
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        p_tv = (o_t[:, None] * H + i_h) * V + o_v[None, :]
        b_do = tl.load(DO + p_tv, mask=m_tv, other=0.0).to(tl.float32)          # [BT, BV]
        b_u = tl.load(U + p_tv, mask=m_tv, other=0.0)
        b_du = tl.load(DU + p_tv, mask=m_tv, other=0.0)
        p_blk = o_k[:, None] * V + o_v[None, :]
        m_blk = m_k[:, None] & m_v[None, :]
        b_hs = tl.load(HS + p_state + p_blk, mask=m_blk, other=0.0).to(tl.float32)    # [BK, BV]
        b_dhs = tl.load(DHS + p_state + p_blk, mask=m_blk, other=0.0).to(tl.float32)
        b_dqs += tl.dot(b_do, tl.trans(b_hs), input_precision=PREC)
        b_dks += tl.dot(b_u, tl.trans(b_dhs), input_precision=PREC)
        b_dw -= tl.dot(b_du, tl.trans(b_hs), input_precision=PREC)
        b_hdh += tl.sum(b_hs * b_dhs, axis=1)
    p_bb = (i_c.to(tl.int64) * H + i_h) * BT * BT + o_c[:, None] * BT + o_c[None, :]
    b_t = tl.load(TM + p_bb)
    b_dkk = tl.load(DKK + p_bb)
    b_dqk = tl.load(DQK + p_bb)
    b_gam = tl.exp(b_g)
    b_kdec = tl.exp(b_glast - b_g)
    b_dbk = tl.dot(tl.trans(b_t), b_dw, input_precision=PREC)
    b_dqs = b_dqs * (scale * b_gam)[:, None]
    b_dq = b_dqs + tl.dot(b_dqk, b_k, input_precision=PREC)
    b_dks = b_dks * b_kdec[:, None]
    b_dk = (b_dbk * (b_beta * b_gam)[:, None] + b_dks
            + tl.dot(tl.trans(b_dqk), b_q, input_precision=PREC)
            + tl.dot(b_dkk + tl.trans(b_dkk), b_k, input_precision=PREC))
    tl.store(DQ + p_tk, b_dq, mask=m_tk)
    tl.store(DK + p_tk, b_dk, mask=m_tk)
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
    b_dg = tl.load(DG + o_t * H + i_h, mask=m_t, other=0.0)
    for i_k in range(0, NK):
        b_dg += tl.load(DGK + (i_k * NT_ALL + o_t) * H + i_h, mask=m_t, other=0.0)
    b_rev = tl.sum(b_dg, axis=0) - tl.cumsum(b_dg, axis=0) + b_dg
    tl.store(DGOUT + o_t * H + i_h, b_rev.to(DGOUT.dtype.element_ty), mask=m_t)


def delta_chunk_bwd(q, k, v, beta, g, h0, do, dht, scale, cu_seqlens, tiles):
    """All gradients: (dq, dk, dv, dbeta fp32; dg fp32 or None; dh0 fp32 or None). Inputs as
    for ``delta_chunk_fwd``; do [B, T, H, V], dht [N, H, K, V] fp32 or None."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BT, BK, BV, W = tiles
    layout = chunk_layout(B, T, cu_seqlens, BT, q.device)
    cu, co, chunks = layout
    N, NC = cu.numel() - 1, chunks.shape[0]
    prec = precision(q.dtype)
    has_g = g is not None
    f32 = dict(dtype=torch.float32)
    gc, tm, w, ut, hs, u, _ = delta_chunk_prepare(k, v, beta, g, h0, layout, tiles, False)
    KP, SBV = state_block_v(K, BV)
    dhs = q.new_empty(NC, H, K, V)
    du = torch.empty_like(v, **f32)
    dh0 = q.new_empty(N, H, K, V, **f32) if h0 is not None else None
    delta_chunk_bwd_kernel_dh[(1, triton.cdiv(V, SBV), N * H)](
        q, k, w, gc, do, dht, dhs, du, dh0, cu, co, scale, H=H, K=K, V=V, BT=BT, BK=KP,
        BV=SBV, HAS_G=has_g, HAS_DHT=dht is not None, HAS_H0=h0 is not None, PREC=prec,
        num_warps=max(W, MIN_WARPS))
    dv = torch.empty_like(v, **f32)
    dbeta = torch.empty_like(beta, **f32)
    dg_part = torch.empty_like(beta, **f32) if has_g else None
    dkk = q.new_empty(NC, H, BT, BT, **f32)
    dqk = q.new_empty(NC, H, BT, BT, **f32)
    delta_chunk_bwd_kernel_da[(NC, H)](
        q, k, v, beta, gc, tm, w, ut, u, du, hs, do, dv, dbeta, dg_part, dkk, dqk, chunks, scale,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, HAS_G=has_g, PREC=prec, num_warps=max(W, MIN_WARPS))
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
