"""Triton chunkwise mLSTM backward: the forward's gate and state passes rerun, a reverse pass
for the state gradients at every chunk's end, then dq/dk and dv per chunk.

With ``dh_r = do_r / den_r`` and ``dqn_r`` (the denominator's share, from the host), D, the
carry and m_r as in the forward (``triton_chunk_mlstm.py``), ``w_s = exp(F_last - F_s + i_s -
m_end)`` and (dC, dn) the gradients of the state at the chunk's end (in the frame of m_end):

``mlstm_chunk_bwd_kernel_dh``  grid (K/BK, V/BV, N*H), chunks in reverse: stores (dC, dn), then
    ``dC <- exp(F_last + m_0 - m_end) dC + (carry scale q)^T dh``, n likewise with dqn; what is
    left is the initial state's gradient.
``mlstm_chunk_bwd_kernel_dqk`` grid (K/BK, NC, H), launched for dq and for dk:
    ``P = scale D * (dh v^T + dqn)``, ``dq = carry scale (dh C_0^T + dqn n_0) + P k``,
    ``dk = P^T q + w (v dC^T + dn)``.
``mlstm_chunk_bwd_kernel_dv``  grid (V/BV, NC, H): ``dv = (scale D * q k^T)^T dh + w k dC``.
The gates' gradients follow from dq and dk on the host (``triton_ops_mlstm.mlstm_gate_grads``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_chunk import MIN_WARPS_SCORES, chunk_launch_dims, precision
from .triton_chunk_mlstm import mlstm_chunk_gates, mlstm_chunk_states, mlstm_chunk_weights
from .triton_common import chunk_bounds, chunk_state_program, chunk_steps, state_tile


@triton.jit
def mlstm_chunk_bwd_kernel_dh(Q, FC, MSTEP, MS, RDEN, DQN, DO, DCT, DNT, DCS, DNS, DC0, DN0, CU,
                              CO, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                              BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                              HAS_DHT: tl.constexpr, HAS_H0: tl.constexpr, PREC: tl.constexpr):
    i_k, i_v, i_nh, i_h, bos, eos, c0 = chunk_state_program(CU, CO, H)
    o_k, o_v, m_k, m_v, m_h = state_tile(i_k, i_v, K, V, BK, BV)
    p_blk = o_k[:, None] * V + o_v[None, :]                                    # [BK, BV]
    first_v = i_v == 0
    b_dC = tl.zeros([BK, BV], dtype=tl.float32)
    b_dn = tl.zeros([BK], dtype=tl.float32)
    if HAS_DHT:
        b_dC += tl.load(DCT + i_nh.to(tl.int64) * K * V + p_blk, mask=m_h, other=0.0)
        b_dn += tl.load(DNT + i_nh.to(tl.int64) * K + o_k, mask=m_k, other=0.0)
    NCS = tl.cdiv(eos - bos, BT)
    for cc in range(0, NCS):
        c = NCS - 1 - cc
        p_c = (c0 + c) * H + i_h
        tl.store(DCS + p_c * K * V + p_blk, b_dC, mask=m_h)
        tl.store(DNS + p_c * K + o_k, b_dn, mask=m_k & first_v)
        o_t, m_t, last = chunk_steps(bos + c * BT, eos, BT)
        b_m0 = tl.load(MS + p_c)
        b_mend = tl.load(MSTEP + last * H + i_h)
        b_Fl = tl.load(FC + last * H + i_h)
        b_F = tl.load(FC + o_t * H + i_h, mask=m_t, other=0.0)
        b_mr = tl.load(MSTEP + o_t * H + i_h, mask=m_t, other=0.0)
        b_carry = tl.exp(tl.where(m_t, b_F + b_m0 - b_mr, float("-inf"))) * scale  # [BT]
        b_q = tl.load(Q + (o_t[:, None] * H + i_h) * K + o_k[None, :],
                      mask=m_t[:, None] & m_k[None, :], other=0.0).to(tl.float32)
        b_qc = b_q * b_carry[:, None]                                             # [BT, BK]
        b_dh = tl.load(DO + (o_t[:, None] * H + i_h) * V + o_v[None, :],
                       mask=m_t[:, None] & m_v[None, :], other=0.0).to(tl.float32)
        b_dh = b_dh * tl.load(RDEN + o_t * H + i_h, mask=m_t, other=0.0)[:, None]
        b_dqn = tl.load(DQN + o_t * H + i_h, mask=m_t, other=0.0)
        b_keep = tl.exp(b_Fl + b_m0 - b_mend)
        b_dC = b_dC * b_keep + tl.dot(tl.trans(b_qc), b_dh, input_precision=PREC)
        b_dn = b_dn * b_keep + tl.sum(b_qc * b_dqn[:, None], axis=0)
    if HAS_H0:
        tl.store(DC0 + i_nh.to(tl.int64) * K * V + p_blk, b_dC, mask=m_h)
        tl.store(DN0 + i_nh.to(tl.int64) * K + o_k, b_dn, mask=m_k & first_v)


@triton.jit
def _end_weights(I, FC, MSTEP, o_t, m_t, eos, t0, i_h, H: tl.constexpr, BT: tl.constexpr):
    """w_s = exp(F_last - F_s + i_s - m_end) [BT] of the chunk starting at t0."""
    last = tl.minimum(t0 + BT, eos) - 1
    b_F = tl.load(FC + o_t * H + i_h, mask=m_t, other=0.0)
    b_i = tl.load(I + o_t * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    b_arg = tl.load(FC + last * H + i_h) - b_F + b_i - tl.load(MSTEP + last * H + i_h)
    return tl.exp(tl.where(m_t, b_arg, float("-inf")))


@triton.jit
def mlstm_chunk_bwd_kernel_dqk(Q, K_, V_, I, FC, BEST, MSTEP, MS, CS, NS, DCS, DNS, RDEN, DQN, DO,
                               DX, CHUNKS, scale, H: tl.constexpr, K: tl.constexpr,
                               V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                               BV: tl.constexpr, WANT_DQ: tl.constexpr, PREC: tl.constexpr):
    # dq (WANT_DQ) or dk into DX: one launch each, as one holding both sums spilled on sm_80
    i_k, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, eos = chunk_bounds(CHUNKS, i_c)
    o_t, m_t, _ = chunk_steps(t0, eos, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    p_c = i_c.to(tl.int64) * H + i_h
    b_rden = tl.load(RDEN + o_t * H + i_h, mask=m_t, other=0.0)
    b_ds = tl.zeros([BT, BT], dtype=tl.float32)
    b_acc = tl.zeros([BT, BK], dtype=tl.float32)     # dh C_0^T for dq, v dC^T for dk
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        p_tv = (o_t[:, None] * H + i_h) * V + o_v[None, :]
        b_dh = tl.load(DO + p_tv, mask=m_t[:, None] & m_v[None, :], other=0.0).to(tl.float32)
        b_v = tl.load(V_ + p_tv, mask=m_t[:, None] & m_v[None, :], other=0.0)
        dt = b_v.dtype                     # tl.dot operands in the inputs' dtype, fp32 sums
        b_dh = (b_dh * b_rden[:, None]).to(dt)                                    # [BT, BV]
        p_kv = p_c * K * V + o_k[:, None] * V + o_v[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        b_ds += tl.dot(b_dh, tl.trans(b_v), input_precision=PREC)
        if WANT_DQ:
            b_hs = tl.load(CS + p_kv, mask=m_kv, other=0.0).to(dt)                 # [BK, BV]
            b_acc += tl.dot(b_dh, tl.trans(b_hs), input_precision=PREC)
        else:
            b_dhs = tl.load(DCS + p_kv, mask=m_kv, other=0.0).to(dt)
            b_acc += tl.dot(b_v, tl.trans(b_dhs), input_precision=PREC)
    _, _, b_carry, b_D = mlstm_chunk_weights(I, FC, BEST, MS, i_c, i_h, o_t, m_t, H, BT)
    b_dqn = tl.load(DQN + o_t * H + i_h, mask=m_t, other=0.0)
    b_P = b_D * (b_ds + b_dqn[:, None]) * scale                                  # [BT, BT]
    p_tk = (o_t[:, None] * H + i_h) * K + o_k[None, :]
    m_tk = m_t[:, None] & m_k[None, :]
    if WANT_DQ:
        b_k = tl.load(K_ + p_tk, mask=m_tk, other=0.0)
        b_ns = tl.load(NS + p_c * K + o_k, mask=m_k, other=0.0)
        b_dx = ((b_carry * scale)[:, None] * (b_acc + b_dqn[:, None] * b_ns[None, :])
                + tl.dot(b_P.to(b_k.dtype), b_k, input_precision=PREC))
    else:
        b_q = tl.load(Q + p_tk, mask=m_tk, other=0.0)
        b_dns = tl.load(DNS + p_c * K + o_k, mask=m_k, other=0.0)
        b_w = _end_weights(I, FC, MSTEP, o_t, m_t, eos, t0, i_h, H, BT)
        b_dx = (tl.dot(tl.trans(b_P.to(b_q.dtype)), b_q, input_precision=PREC)
                + b_w[:, None] * (b_acc + b_dns[None, :]))
    tl.store(DX + p_tk, b_dx, mask=m_tk)


@triton.jit
def mlstm_chunk_bwd_kernel_dv(Q, K_, I, FC, BEST, MSTEP, MS, DCS, RDEN, DO, DV, CHUNKS, scale,
                              H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                              BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                              PREC: tl.constexpr):
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, eos = chunk_bounds(CHUNKS, i_c)
    o_t, m_t, _ = chunk_steps(t0, eos, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    p_c = i_c.to(tl.int64) * H + i_h
    b_s = tl.zeros([BT, BT], dtype=tl.float32)
    b_dve = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        p_tk = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        b_q = tl.load(Q + p_tk, mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_k = tl.load(K_ + p_tk, mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_dhs = tl.load(DCS + p_c * K * V + o_k[:, None] * V + o_v[None, :],
                        mask=m_k[:, None] & m_v[None, :], other=0.0)             # [BK, BV]
        b_s += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
        b_dve += tl.dot(b_k, b_dhs.to(b_k.dtype), input_precision=PREC)
    _, _, _, b_D = mlstm_chunk_weights(I, FC, BEST, MS, i_c, i_h, o_t, m_t, H, BT)
    p_tv = (o_t[:, None] * H + i_h) * V + o_v[None, :]
    b_dh = tl.load(DO + p_tv, mask=m_t[:, None] & m_v[None, :], other=0.0).to(tl.float32)
    b_dh = b_dh * tl.load(RDEN + o_t * H + i_h, mask=m_t, other=0.0)[:, None]
    b_w = _end_weights(I, FC, MSTEP, o_t, m_t, eos, t0, i_h, H, BT)
    dt = DV.dtype.element_ty
    b_dv = (tl.dot(tl.trans((b_D * b_s * scale).to(dt)), b_dh.to(dt), input_precision=PREC)
            + b_w[:, None] * b_dve)
    tl.store(DV + p_tv, b_dv.to(DV.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


def mlstm_chunk_bwd(q, k, v, i, f, C0, n0, m0, mstep, rden, dqn, do, dCT, dnT, scale,
                    cu_seqlens, tiles):
    """Launch the backward: (dq, dk fp32 [B, T, H, K], dv, dC0, dn0 fp32 or None). ``mstep`` is
    the forward's m_t; ``rden`` = 1 / den_t and ``dqn`` [B, T, H] fp32 as in the step kernels'
    backward; dCT and dnT both given or both None."""
    B, T, H, K, V, layout, N, NC = chunk_launch_dims(q, v, cu_seqlens, tiles)
    BT, BK, BV, W = tiles
    cu, co, chunks = layout
    fc, best = mlstm_chunk_gates(i, f, layout, BT)
    hs, ns, ms, _ = mlstm_chunk_states(k, v, i, fc, best, C0, n0, m0, layout, tiles, False)
    dhs, dns = torch.empty_like(hs), torch.empty_like(ns)
    has_h0 = C0 is not None
    dC0 = torch.empty_like(C0, dtype=torch.float32) if has_h0 else None
    dn0 = torch.empty_like(n0, dtype=torch.float32) if has_h0 else None
    prec = precision(q.dtype)
    mlstm_chunk_bwd_kernel_dh[(triton.cdiv(K, BK), triton.cdiv(V, BV), N * H)](
        q, fc, mstep, ms, rden, dqn, do, dCT, dnT, dhs, dns, dC0, dn0, cu, co, scale, H=H, K=K,
        V=V, BT=BT, BK=BK, BV=BV, HAS_DHT=dCT is not None, HAS_H0=has_h0, PREC=prec,
        num_warps=W)
    dq = torch.empty_like(q, dtype=torch.float32)
    dk = torch.empty_like(k, dtype=torch.float32)
    dv = torch.empty_like(v)
    for want_dq, dx in ((True, dq), (False, dk)):
        mlstm_chunk_bwd_kernel_dqk[(triton.cdiv(K, BK), NC, H)](
            q, k, v, i, fc, best, mstep, ms, hs, ns, dhs, dns, rden, dqn, do, dx, chunks, scale,
            H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, WANT_DQ=want_dq, PREC=prec,
            num_warps=max(W, MIN_WARPS_SCORES))
    mlstm_chunk_bwd_kernel_dv[(triton.cdiv(V, BV), NC, H)](
        q, k, i, fc, best, mstep, ms, dhs, rden, do, dv, chunks, scale, H=H, K=K, V=V, BT=BT,
        BK=BK, BV=BV, PREC=prec, num_warps=max(W, MIN_WARPS_SCORES))
    return dq, dk, dv, dC0, dn0


__all__ = ["mlstm_chunk_bwd"]
