"""Triton chunkwise GLA backward. The forward's chunk states are not kept: the backward runs the
state pass again (``triton_chunk.gla_chunk_states``), then

``gla_chunk_bwd_kernel_dh``   grid (K/BK, V/BV, N*H): the reverse state pass; stores, per chunk,
    the gradient of the state after it (dS), ``dS <- exp(b_last)[:, None] dS + scale (q exp(b))^T do``,
    and the initial state's gradient;
``gla_chunk_bwd_kernel_dv``   grid (V/BV, NC, H): ``dv = scale A^T do + (k exp(b_last - b)) dS``;
``gla_chunk_bwd_kernel_dqk``  grid (K/BK, NC, H): with ``dA = scale do v^T`` (causal),
    ``dq = scale (do S_c^T) exp(b) + sum_s dA[r, s] k_s exp(b_r - b_s)`` per row group and
    ``dk = (v dS^T) exp(b_last - b) + sum_r dA[r, s] q_r exp(b_r - b_s)`` per column group, the
    off-diagonal groups through ``tl.dot`` split at a group boundary (factors <= 1), the
    diagonal 16 x 16 blocks one row or column at a time with the exact decay.
The gate's gradient needs no kernel (see ``triton_recurrent``): ``dg`` is a reverse cumulative
sum of ``q dq - k dk`` plus the final state's term.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_chunk import (BC, MIN_WARPS_SCORES, chunk_launch_dims, gla_chunk_cumsum, gla_chunk_scores,
                           gla_chunk_states, precision)
from .triton_common import chunk_bounds, chunk_state_program, chunk_steps, state_tile

# The dq/dk kernel holds the most live blocks; its V loop runs in blocks of 16 at 8 warps (at
# BV 32 its sm_80 cubin spilled 72 B at BT 64, BK 32; at BV 16: none, 198 registers).
DQK_BV, DQK_WARPS = 16, 8


@triton.jit
def gla_chunk_bwd_kernel_dh(Q, GC, DO, DHT, DHS, DH0, CU, CO, scale,
                            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                            BK: tl.constexpr, BV: tl.constexpr, HAS_DHT: tl.constexpr,
                            HAS_H0: tl.constexpr, PREC: tl.constexpr):
    i_k, i_v, i_nh, i_h, bos, eos, c0 = chunk_state_program(CU, CO, H)
    o_k, o_v, m_k, m_v, m_h = state_tile(i_k, i_v, K, V, BK, BV)
    p_blk = o_k[:, None] * V + o_v[None, :]                                    # [BK, BV]
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)                                # [BK, BV]
    if HAS_DHT:
        b_dh += tl.load(DHT + i_nh.to(tl.int64) * K * V + p_blk, mask=m_h, other=0.0)
    NTn = tl.cdiv(eos - bos, BT)
    for j in range(0, NTn):
        c = NTn - 1 - j
        tl.store(DHS + ((c0 + c) * H + i_h) * K * V + p_blk, b_dh.to(DHS.dtype.element_ty), mask=m_h)
        o_t, m_t, last = chunk_steps(bos + c * BT, eos, BT)
        p_tk = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        b_q = tl.load(Q + p_tk, mask=m_t[:, None] & m_k[None, :], other=0.0)       # [BT, BK]
        b_g = tl.load(GC + p_tk, mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_do = tl.load(DO + (o_t[:, None] * H + i_h) * V + o_v[None, :],
                       mask=m_t[:, None] & m_v[None, :], other=0.0)                # [BT, BV]
        b_glast = tl.load(GC + (last * H + i_h) * K + o_k, mask=m_k, other=0.0)
        b_qd = (b_q * tl.exp(b_g) * scale).to(b_do.dtype)
        b_dh = b_dh * tl.exp(b_glast)[:, None] + tl.dot(tl.trans(b_qd), b_do, input_precision=PREC)
    if HAS_H0:
        tl.store(DH0 + i_nh.to(tl.int64) * K * V + p_blk, b_dh, mask=m_h)


@triton.jit
def gla_chunk_bwd_kernel_dv(Q, K_, GC, DO, DHS, DV, CHUNKS, scale,
                            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                            BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                            PREC: tl.constexpr):
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, eos = chunk_bounds(CHUNKS, i_c)
    o_t, m_t, last = chunk_steps(t0, eos, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)                                # [BT, BV]
    for i_grp in tl.static_range(0, BT // BC):
        r0 = t0 + i_grp * BC
        o_r = r0 + tl.arange(0, BC)
        b_A, _ = gla_chunk_scores(Q, K_, GC, DHS, t0, eos, r0, i_h, i_grp, i_v, H, K, V, BT, BC,
                                  BK, BV, PREC, False)                         # [BC, BT]
        b_do = tl.load(DO + (o_r[:, None] * H + i_h) * V + o_v[None, :],
                       mask=(o_r < eos)[:, None] & m_v[None, :], other=0.0)      # [BC, BV]
        b_dv += tl.dot(tl.trans(b_A).to(b_do.dtype), b_do, input_precision=PREC)
    b_dv *= scale
    p_dhs = DHS + (i_c.to(tl.int64) * H + i_h) * K * V
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        p_tk = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        b_k = tl.load(K_ + p_tk, mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_g = tl.load(GC + p_tk, mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_glast = tl.load(GC + (last * H + i_h) * K + o_k, mask=m_k, other=0.0)
        b_dhs = tl.load(p_dhs + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :],
                        other=0.0)                                              # [BK, BV]
        b_kd = (b_k * tl.exp(b_glast[None, :] - b_g)).to(b_dhs.dtype)
        b_dv += tl.dot(b_kd, b_dhs, input_precision=PREC)
    tl.store(DV + (o_t[:, None] * H + i_h) * V + o_v[None, :], b_dv.to(DV.dtype.element_ty),
             mask=m_t[:, None] & m_v[None, :])


@triton.jit
def gla_chunk_bwd_kernel_dqk(Q, K_, V_, GC, DO, HS, DHS, DQ, DK, CHUNKS, scale,
                             H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                             BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                             PREC: tl.constexpr):
    i_k, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, eos = chunk_bounds(CHUNKS, i_c)
    o_t, m_t, last = chunk_steps(t0, eos, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_c = tl.arange(0, BT)
    o_j = tl.arange(0, BC)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p_tk = (o_t[:, None] * H + i_h) * K + o_k[None, :]
    b_q = tl.load(Q + p_tk, mask=m_tk, other=0.0).to(tl.float32)              # [BT, BK]
    b_k = tl.load(K_ + p_tk, mask=m_tk, other=0.0).to(tl.float32)
    b_g = tl.load(GC + p_tk, mask=m_tk, other=0.0)
    b_glast = tl.load(GC + (last * H + i_h) * K + o_k, mask=m_k, other=0.0)   # [BK]
    p_state = (i_c.to(tl.int64) * H + i_h) * K * V
    for i_grp in tl.static_range(0, BT // BC):
        g0 = t0 + i_grp * BC
        o_r = g0 + tl.arange(0, BC)
        m_r = o_r < eos
        m_rk = m_r[:, None] & m_k[None, :]
        p_rk = (o_r[:, None] * H + i_h) * K + o_k[None, :]
        b_gr = tl.load(GC + p_rk, mask=m_rk, other=0.0)                       # [BC, BK]
        # dA rows of this group [BC, BT] and dA columns of this group [BT, BC]; inter terms
        b_dA_rows = tl.zeros([BC, BT], dtype=tl.float32)
        b_dA_cols = tl.zeros([BT, BC], dtype=tl.float32)
        b_dq = tl.zeros([BC, BK], dtype=tl.float32)
        b_dk = tl.zeros([BC, BK], dtype=tl.float32)
        for i_v in range(0, tl.cdiv(V, BV)):
            o_v = i_v * BV + tl.arange(0, BV)
            m_v = o_v < V
            b_v = tl.load(V_ + (o_t[:, None] * H + i_h) * V + o_v[None, :],
                          mask=m_t[:, None] & m_v[None, :], other=0.0)           # [BT, BV]
            b_do = tl.load(DO + (o_t[:, None] * H + i_h) * V + o_v[None, :],
                           mask=m_t[:, None] & m_v[None, :], other=0.0)
            b_vr = tl.load(V_ + (o_r[:, None] * H + i_h) * V + o_v[None, :],
                           mask=m_r[:, None] & m_v[None, :], other=0.0)          # [BC, BV]
            b_dor = tl.load(DO + (o_r[:, None] * H + i_h) * V + o_v[None, :],
                            mask=m_r[:, None] & m_v[None, :], other=0.0)
            b_dA_rows += tl.dot(b_dor, tl.trans(b_v), input_precision=PREC)
            b_dA_cols += tl.dot(b_do, tl.trans(b_vr), input_precision=PREC)
            p_blk = o_k[:, None] * V + o_v[None, :]
            m_blk = m_k[:, None] & m_v[None, :]
            b_hs = tl.load(HS + p_state + p_blk, mask=m_blk, other=0.0)           # [BK, BV]
            b_dhs = tl.load(DHS + p_state + p_blk, mask=m_blk, other=0.0)
            b_dq += tl.dot(b_dor, tl.trans(b_hs), input_precision=PREC)
            b_dk += tl.dot(b_vr, tl.trans(b_dhs).to(b_vr.dtype), input_precision=PREC)
        b_dq = b_dq * scale * tl.exp(b_gr)
        b_dk = b_dk * tl.exp(b_glast[None, :] - b_gr)
        b_dA_rows *= scale
        b_dA_cols *= scale
        # dq, columns before the group: split at the group's first row
        ref_q = tl.load(GC + (tl.minimum(g0, eos - 1) * H + i_h) * K + o_k, mask=m_k, other=0.0)
        before = (o_c < i_grp * BC)[:, None]
        b_kb = tl.where(before, b_k * tl.exp(tl.where(before, ref_q[None, :] - b_g, 0.0)), 0.0)
        b_dA_before = tl.where((o_c < i_grp * BC)[None, :], b_dA_rows, 0.0)
        b_dq += tl.exp(b_gr - ref_q[None, :]) * tl.dot(b_dA_before, b_kb, input_precision=PREC)
        # dk, rows after the group: split at the group's last row
        ref_k = tl.load(GC + (tl.minimum(g0 + BC - 1, eos - 1) * H + i_h) * K + o_k, mask=m_k,
                        other=0.0)
        after = (o_c >= (i_grp + 1) * BC)[:, None]
        b_qa = tl.where(after, b_q * tl.exp(tl.where(after, b_g - ref_k[None, :], 0.0)), 0.0)
        b_dA_after = tl.where(after, b_dA_cols, 0.0)
        b_dk += tl.exp(ref_k[None, :] - b_gr) * tl.dot(tl.trans(b_dA_after), b_qa,
                                                       input_precision=PREC)
        # the diagonal block: dq by columns s, dk by rows r of the group, exact decay
        for j in range(0, BC):
            s = tl.minimum(g0 + j, eos - 1)
            b_ks = tl.load(K_ + (s * H + i_h) * K + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_qs = tl.load(Q + (s * H + i_h) * K + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_gs = tl.load(GC + (s * H + i_h) * K + o_k, mask=m_k, other=0.0)
            # dA[r, g0 + j] for the group's rows r, and dA[g0 + j, s'] for its columns s'
            col = tl.sum(tl.where((o_c == i_grp * BC + j)[None, :], b_dA_rows, 0.0), axis=1)
            row = tl.sum(tl.where((o_c == i_grp * BC + j)[:, None], b_dA_cols, 0.0), axis=0)
            later = (o_j >= j)[:, None]
            earlier = (o_j <= j)[:, None]
            b_dq += col[:, None] * b_ks[None, :] * tl.exp(
                tl.where(later, b_gr - b_gs[None, :], float("-inf")))
            b_dk += row[:, None] * b_qs[None, :] * tl.exp(
                tl.where(earlier, b_gs[None, :] - b_gr, float("-inf")))
        tl.store(DQ + p_rk, b_dq, mask=m_rk)
        tl.store(DK + p_rk, b_dk, mask=m_rk)


def gla_chunk_bwd(q, k, v, g, h0, do, dht, scale, cu_seqlens, tiles):
    """All gradients but g's: (dq fp32, dk fp32, dv, dh0 fp32 or None)."""
    B, T, H, K, V, layout, N, NC = chunk_launch_dims(q, v, cu_seqlens, tiles)
    BT, BK, BV, W = tiles
    cu, co, chunks = layout
    prec = precision(q.dtype)
    gc = gla_chunk_cumsum(g, layout, BT, BK)
    hs, _ = gla_chunk_states(k, v, gc, h0, layout, tiles, False, q.dtype)
    dhs = q.new_empty(NC, H, K, V, dtype=q.dtype)
    dh0 = q.new_empty(N, H, K, V, dtype=torch.float32) if h0 is not None else None
    gla_chunk_bwd_kernel_dh[(triton.cdiv(K, BK), triton.cdiv(V, BV), N * H)](
        q, gc, do, dht, dhs, dh0, cu, co, scale, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
        HAS_DHT=dht is not None, HAS_H0=h0 is not None, PREC=prec, num_warps=W)
    dv = torch.empty_like(v)
    gla_chunk_bwd_kernel_dv[(triton.cdiv(V, BV), NC, H)](
        q, k, gc, do, dhs, dv, chunks, scale, H=H, K=K, V=V, BT=BT, BC=BC, BK=BK, BV=BV,
        PREC=prec, num_warps=max(W, MIN_WARPS_SCORES))
    dq = torch.empty_like(q, dtype=torch.float32)
    dk = torch.empty_like(k, dtype=torch.float32)
    gla_chunk_bwd_kernel_dqk[(triton.cdiv(K, BK), NC, H)](
        q, k, v, gc, do, hs, dhs, dq, dk, chunks, scale, H=H, K=K, V=V, BT=BT, BC=BC, BK=BK,
        BV=DQK_BV, PREC=prec, num_warps=DQK_WARPS)
    return dq, dk, dv, dh0


__all__ = ["gla_chunk_bwd"]
