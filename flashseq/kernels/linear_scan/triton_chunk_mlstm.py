"""Triton chunkwise mLSTM forward: gate pass, state pass, output pass.

Chunks and packed sequences are laid out as for GLA (``triton_chunk.chunk_layout``). Within a
chunk, with F the chunk-local cumsum of ``lf = logsigmoid(f)`` (fp32) and m_0 the stabiliser at
the chunk's start, the stabiliser of row r is ``m_r = F_r + max(m_0, max_{s<=r} (i_s - F_s))``
(the recurrence ``m_t = max(lf_t + m_{t-1}, i_t)`` unrolled), so every weight
``D[r, s] = exp(F_r - F_s + i_s - m_r)`` (s <= r) and the carry ``exp(F_r + m_0 - m_r)`` is <= 1.

``mlstm_chunk_fwd_kernel_gates`` grid (NC, H): F and ``max_{s<=r}(i_s - F_s)`` per step, fp32.
``mlstm_chunk_fwd_kernel_h``     grid (K/BK, V/BV, N*H): the state pass (shared with the
    backward, which reruns it): stores (C, n, m) at every chunk's start;
    ``m' = F_last + max(m, best_last)``, ``C <- exp(F_last + m - m') C + (k w)^T v`` with
    ``w_s = exp(F_last - F_s + i_s - m')``, n likewise.
``mlstm_chunk_fwd_kernel_o``     grid (V/BV, NC, H):
    ``num = carry scale q C_0 + (D * scale q k^T) v``, ``qn`` likewise with n_0 and the row sums, ``o = num / (max(|qn|, exp(-m_r)) + eps)``;
    block 0 also writes m_r and qn per step for the backward.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_chunk import MIN_WARPS_SCORES, chunk_launch_dims, precision
from .triton_common import chunk_bounds, chunk_state_program, chunk_steps, state_tile
from .triton_recurrent_mlstm import EPS, _logsigmoid


@triton.jit
def _max2(a, b):
    return tl.maximum(a, b)


@triton.jit
def mlstm_chunk_fwd_kernel_gates(I, F_, FC, BEST, CHUNKS, H: tl.constexpr, BT: tl.constexpr):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0, eos = chunk_bounds(CHUNKS, i_c)
    o_t, m_t, _ = chunk_steps(t0, eos, BT)
    p = o_t * H + i_h
    b_lf = tl.where(m_t, _logsigmoid(tl.load(F_ + p, mask=m_t, other=0.0).to(tl.float32)), 0.0)
    b_F = tl.cumsum(b_lf, axis=0)
    b_a = tl.where(m_t, tl.load(I + p, mask=m_t, other=0.0).to(tl.float32) - b_F, float("-inf"))
    tl.store(FC + p, b_F, mask=m_t)
    tl.store(BEST + p, tl.associative_scan(b_a, 0, _max2), mask=m_t)


@triton.jit
def mlstm_chunk_fwd_kernel_h(K_, V_, I, FC, BEST, C0, N0, M0, CS, NS, MS, CT, NT, MT, CU, CO,
                             H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                             BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                             HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, PREC: tl.constexpr):
    i_k, i_v, i_nh, i_h, bos, eos, c0 = chunk_state_program(CU, CO, H)
    o_k, o_v, m_k, m_v, m_h = state_tile(i_k, i_v, K, V, BK, BV)
    p_blk = o_k[:, None] * V + o_v[None, :]                                    # [BK, BV]
    o_1 = tl.arange(0, 1)
    first_v = i_v == 0                                  # block column 0 writes n
    first_kv = o_1 < ((i_k == 0) & (i_v == 0)).to(tl.int32)   # block (0, 0) writes m
    b_C = tl.zeros([BK, BV], dtype=tl.float32)
    b_n = tl.zeros([BK], dtype=tl.float32)
    b_m = tl.zeros([1], dtype=tl.float32)
    if HAS_H0:
        b_C += tl.load(C0 + i_nh.to(tl.int64) * K * V + p_blk, mask=m_h, other=0.0)
        b_n += tl.load(N0 + i_nh.to(tl.int64) * K + o_k, mask=m_k, other=0.0)
        b_m += tl.load(M0 + i_nh + o_1)
    for c in range(0, tl.cdiv(eos - bos, BT)):
        p_c = (c0 + c) * H + i_h
        tl.store(CS + p_c * K * V + p_blk, b_C, mask=m_h)
        tl.store(NS + p_c * K + o_k, b_n, mask=m_k & first_v)
        tl.store(MS + p_c + o_1, b_m, mask=first_kv)
        o_t, m_t, last = chunk_steps(bos + c * BT, eos, BT)
        b_F = tl.load(FC + o_t * H + i_h, mask=m_t, other=0.0)
        b_i = tl.load(I + o_t * H + i_h, mask=m_t, other=0.0).to(tl.float32)
        b_Fl = tl.load(FC + last * H + i_h + o_1)
        m_end = b_Fl + tl.maximum(b_m, tl.load(BEST + last * H + i_h + o_1))
        b_w = tl.exp(tl.where(m_t, b_Fl - b_F + b_i - m_end, float("-inf")))   # [BT]
        b_k = tl.load(K_ + (o_t[:, None] * H + i_h) * K + o_k[None, :],
                      mask=m_t[:, None] & m_k[None, :], other=0.0)           # [BT, BK]
        b_v = tl.load(V_ + (o_t[:, None] * H + i_h) * V + o_v[None, :],
                      mask=m_t[:, None] & m_v[None, :], other=0.0)           # [BT, BV]
        b_kw = b_k.to(tl.float32) * b_w[:, None]
        b_keep = tl.exp(b_Fl + b_m - m_end)
        b_C = b_C * b_keep[:, None] + tl.dot(tl.trans(b_kw.to(b_v.dtype)), b_v,
                                             input_precision=PREC)
        b_n = b_n * b_keep + tl.sum(b_kw, axis=0)
        b_m = m_end
    if STORE_HT:
        tl.store(CT + i_nh.to(tl.int64) * K * V + p_blk, b_C, mask=m_h)
        tl.store(NT + i_nh.to(tl.int64) * K + o_k, b_n, mask=m_k & first_v)
        tl.store(MT + i_nh + o_1, b_m, mask=first_kv)


@triton.jit
def mlstm_chunk_weights(I, FC, BEST, MS, i_c, i_h, o_t, m_t, H: tl.constexpr, BT: tl.constexpr):
    """(F [BT], m_r [BT], carry [BT], D [BT, BT]) of the chunk: D[r, s] = exp(F_r - F_s + i_s -
    m_r) for s <= r within the sequence, 0 elsewhere."""
    b_m0 = tl.load(MS + i_c * H + i_h)
    b_F = tl.load(FC + o_t * H + i_h, mask=m_t, other=0.0)
    b_i = tl.load(I + o_t * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    b_best = tl.load(BEST + o_t * H + i_h, mask=m_t, other=0.0)
    b_mr = b_F + tl.maximum(b_m0, b_best)
    b_carry = tl.exp(tl.where(m_t, b_F + b_m0 - b_mr, float("-inf")))
    o = tl.arange(0, BT)
    keep = (o[:, None] >= o[None, :]) & m_t[:, None] & m_t[None, :]
    b_D = tl.exp(tl.where(keep, b_F[:, None] - b_F[None, :] + b_i[None, :] - b_mr[:, None],
                          float("-inf")))
    return b_F, b_mr, b_carry, b_D


@triton.jit
def mlstm_chunk_fwd_kernel_o(Q, K_, V_, I, FC, BEST, CS, NS, MS, O, MSTEP, QN, CHUNKS, scale,
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
    b_qc = tl.zeros([BT, BV], dtype=tl.float32)
    b_qn = tl.zeros([BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        p_tk = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        b_q = tl.load(Q + p_tk, mask=m_t[:, None] & m_k[None, :], other=0.0)         # [BT, BK]
        b_k = tl.load(K_ + p_tk, mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_hs = tl.load(CS + p_c * K * V + o_k[:, None] * V + o_v[None, :],
                       mask=m_k[:, None] & m_v[None, :], other=0.0)                   # [BK, BV]
        b_ns = tl.load(NS + p_c * K + o_k, mask=m_k, other=0.0)
        b_s += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
        b_qc += tl.dot(b_q, b_hs.to(b_q.dtype), input_precision=PREC)
        b_qn += tl.sum(b_q.to(tl.float32) * b_ns[None, :], axis=1)
    _, b_mr, b_carry, b_D = mlstm_chunk_weights(I, FC, BEST, MS, i_c, i_h, o_t, m_t, H, BT)
    b_Ds = b_D * b_s * scale
    b_v = tl.load(V_ + (o_t[:, None] * H + i_h) * V + o_v[None, :],
                  mask=m_t[:, None] & m_v[None, :], other=0.0)                       # [BT, BV]
    b_num = (b_carry * scale)[:, None] * b_qc + tl.dot(b_Ds.to(b_v.dtype), b_v,
                                                       input_precision=PREC)
    b_qn = b_carry * scale * b_qn + tl.sum(b_Ds, axis=1)
    b_den = tl.maximum(tl.abs(b_qn), tl.exp(-b_mr)) + EPS
    tl.store(O + (o_t[:, None] * H + i_h) * V + o_v[None, :],
             (b_num / b_den[:, None]).to(O.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])
    first = m_t & (i_v == 0)
    tl.store(MSTEP + o_t * H + i_h, b_mr, mask=first)
    tl.store(QN + o_t * H + i_h, b_qn, mask=first)


def mlstm_chunk_states(k, v, i, fc, best, C0, n0, m0, layout, tiles, output_final_state):
    """Launch the state pass: (C, n, m at every chunk start [NC, H, K, V], [NC, H, K], [NC, H];
    final (C, n, m) or Nones). All fp32."""
    cu, co, chunks = layout
    _, _, H, K = k.shape
    V = v.shape[-1]
    N = cu.numel() - 1
    NC = chunks.shape[0]
    BT, BK, BV, W = tiles
    f32 = dict(dtype=torch.float32)
    hs, ns, ms = (k.new_empty(s, **f32) for s in ((NC, H, K, V), (NC, H, K), (NC, H)))
    final = (tuple(k.new_empty(s, **f32) for s in ((N, H, K, V), (N, H, K), (N, H)))
             if output_final_state else (None,) * 3)
    grid = (triton.cdiv(K, BK), triton.cdiv(V, BV), N * H)
    mlstm_chunk_fwd_kernel_h[grid](k, v, i, fc, best, C0, n0, m0, hs, ns, ms, *final, cu, co,
                                   H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, HAS_H0=C0 is not None,
                                   STORE_HT=output_final_state, PREC=precision(k.dtype),
                                   num_warps=W)
    return hs, ns, ms, final


def mlstm_chunk_gates(i, f, layout, BT):
    """(F, best) [B, T, H] fp32: chunk-local cumsum of logsigmoid(f), cummax of i - F."""
    _, _, H = f.shape
    chunks = layout[2]
    fc = torch.empty_like(f, dtype=torch.float32)
    best = torch.empty_like(f, dtype=torch.float32)
    mlstm_chunk_fwd_kernel_gates[(chunks.shape[0], H)](i, f, fc, best, chunks, H=H, BT=BT)
    return fc, best


def mlstm_chunk_fwd(q, k, v, i, f, C0, n0, m0, scale, cu_seqlens, output_final_state, tiles):
    """Launch the forward: (o, m_t [B, T, H] fp32, qn_t [B, T, H] fp32, final (C, n, m) or
    Nones)."""
    B, T, H, K, V, layout, _, _ = chunk_launch_dims(q, v, cu_seqlens, tiles)
    BT, BK, BV, W = tiles
    fc, best = mlstm_chunk_gates(i, f, layout, BT)
    hs, ns, ms, final = mlstm_chunk_states(k, v, i, fc, best, C0, n0, m0, layout, tiles,
                                           output_final_state)
    o = torch.empty_like(v)
    mstep = q.new_empty(B, T, H, dtype=torch.float32)
    qn = q.new_empty(B, T, H, dtype=torch.float32)
    mlstm_chunk_fwd_kernel_o[(triton.cdiv(V, BV), layout[2].shape[0], H)](
        q, k, v, i, fc, best, hs, ns, ms, o, mstep, qn, layout[2], scale, H=H, K=K, V=V, BT=BT,
        BK=BK, BV=BV, PREC=precision(q.dtype), num_warps=max(W, MIN_WARPS_SCORES))
    return o, mstep, qn, final


__all__ = ["mlstm_chunk_fwd", "mlstm_chunk_gates", "mlstm_chunk_states"]
