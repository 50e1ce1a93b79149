"""Triton forward of ``plstm_1d`` with the chunks merged hierarchically (log depth).

``triton_1d.plstm1d_fwd_kernel`` walks the chunks one after the other in one program per
(V block, batch row x head). Here every chunk is a program of its own, in three steps:

1. ``plstm1d_fwd_kernel_summary``: each chunk's summary, the product ``a`` of its transitions
   and the state ``U`` [K, V] it leaves when entered with zero.
2. ``plstm1d_fwd_kernel_scan``: one round of an inclusive Hillis-Steele scan of the associative
   combine (a1, U1) then (a2, U2) = (a2 a1, a2 U1 + U2), chunk c with chunk c - shift; the host
   launches ceil(log2 NC) rounds (shift 1, 2, 4, ...), ping-ponging two buffers:
   O(NC log NC) combines, log2(NC) dependent launches instead of NC dependent steps.
3. ``plstm1d_fwd_kernel_output``: every chunk's output from its entering state (the scan's
   result for the chunk before), which it also stores for the backward kernel.

The result, outputs and entering states, equals the sequential kernel's (same chunk algebra,
fp32 accumulation); ``triton_1d.plstm1d_bwd_kernel`` consumes the states unchanged
(``PLSTM1DTriton(..., merge="tree")``). Not chosen by ``plstm_1d``'s dispatch yet: it has not
been timed on a GPU against the sequential walk (it should win where B * H * V blocks programs
leave the GPU idle and T is long). Imported only on request.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_1d import _products, kernel_meta_1d


@triton.jit
def _chunk_rows(T, c, i_b, i_h, H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                BT: tl.constexpr, BK: tl.constexpr, o_v):
    """Row offsets and masks of chunk c: (p_qk [BT, BK], p_v [BT, BV], p_g [BT], m_t [BT],
    m_k [BK])."""
    o_i, o_k = tl.arange(0, BT), tl.arange(0, BK)
    o_t = c * BT + o_i
    row = (i_b * T + o_t).to(tl.int64)
    p_qk = row[:, None] * (H * DK) + i_h * DK + o_k[None, :]
    p_v = row[:, None] * (H * DV) + i_h * DV + o_v[None, :]
    return p_qk, p_v, row * H + i_h, o_t < T, o_k < DK


@triton.jit
def plstm1d_fwd_kernel_summary(K_, V_, S, TR, UPD, DEC, T, NC,
                               H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                               PREC: tl.constexpr):
    """Grid (V blocks, B*H, NC). UPD [B*H, NC, DK, DV], DEC [B*H, NC] fp32: chunk c's U and a."""
    i_v, i_bh, c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < DV
    p_qk, p_v, p_g, m_t, m_k = _chunk_rows(T, c, i_b, i_h, H, DK, DV, BT, BK, o_v)
    b_k = tl.load(K_ + p_qk, mask=m_t[:, None] & m_k[None, :], other=0.0).to(tl.float32)
    b_v = tl.load(V_ + p_v, mask=m_t[:, None] & m_v[None, :], other=0.0).to(tl.float32)
    b_s = tl.load(S + p_g, mask=m_t, other=0.0).to(tl.float32)
    b_t = tl.load(TR + p_g, mask=m_t, other=1.0).to(tl.float32)
    prop, enter, carry, total = _products(b_t, tl.arange(0, BT), BT)
    upd = tl.dot(tl.trans(b_k * (carry * b_s)[:, None]), b_v, input_precision=PREC)  # [BK, BV]
    o_k = tl.arange(0, BK)
    slot = (i_bh.to(tl.int64) * NC + c)
    tl.store(UPD + slot * (DK * DV) + o_k[:, None] * DV + o_v[None, :], upd,
             mask=m_k[:, None] & m_v[None, :])
    if i_v == 0:
        tl.store(DEC + slot, total)


@triton.jit
def plstm1d_fwd_kernel_scan(UPD_IN, DEC_IN, UPD_OUT, DEC_OUT, NC, shift,
                            DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr,
                            BV: tl.constexpr):
    """Grid (V blocks, B*H, NC): one scan round, (a, U)[c] <- (a[c] a[c-shift],
    a[c] U[c-shift] + U[c]) for c >= shift, copied otherwise."""
    i_v, i_bh, c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_k, o_v = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_kv = (o_k < DK)[:, None] & (o_v < DV)[None, :]
    has_prev = c >= shift
    slot = i_bh.to(tl.int64) * NC + c
    prev = i_bh.to(tl.int64) * NC + tl.maximum(c - shift, 0)
    p_kv = o_k[:, None] * DV + o_v[None, :]
    u = tl.load(UPD_IN + slot * (DK * DV) + p_kv, mask=m_kv, other=0.0)
    u_prev = tl.load(UPD_IN + prev * (DK * DV) + p_kv, mask=m_kv & has_prev, other=0.0)
    a = tl.load(DEC_IN + slot)
    a_prev = tl.where(has_prev, tl.load(DEC_IN + prev), 1.0)
    tl.store(UPD_OUT + slot * (DK * DV) + p_kv, a * u_prev + u, mask=m_kv)
    if i_v == 0:
        tl.store(DEC_OUT + slot, a * a_prev)


@triton.jit
def plstm1d_fwd_kernel_output(Q, K_, V_, S, TR, M, D, O, UPD, STATES, T, NC, scale,
                              H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                              BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                              PREC: tl.constexpr):
    """Grid (V blocks, B*H, NC). UPD: the scanned (inclusive) states [B*H, NC, DK, DV]; chunk c
    enters with UPD[c - 1] (zero for c = 0), stores it to STATES [B*H, NC, DK, DV] and writes
    its outputs O [B, T, H, DV]."""
    i_v, i_bh, c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_i, o_k = tl.arange(0, BT), tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < DV
    p_qk, p_v, p_g, m_t, m_k = _chunk_rows(T, c, i_b, i_h, H, DK, DV, BT, BK, o_v)
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = o_k[:, None] * DV + o_v[None, :]
    prev = i_bh.to(tl.int64) * NC + tl.maximum(c - 1, 0)
    state = tl.load(UPD + prev * (DK * DV) + p_kv, mask=m_kv & (c > 0), other=0.0)   # [BK, BV]
    tl.store(STATES + (i_bh.to(tl.int64) * NC + c) * (DK * DV) + p_kv, state, mask=m_kv)
    m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
    b_q = tl.load(Q + p_qk, mask=m_tk, other=0.0).to(tl.float32)       # [BT, BK]
    b_k = tl.load(K_ + p_qk, mask=m_tk, other=0.0).to(tl.float32)
    b_v = tl.load(V_ + p_v, mask=m_tv, other=0.0).to(tl.float32)       # [BT, BV]
    b_s = tl.load(S + p_g, mask=m_t, other=0.0).to(tl.float32)         # [BT]
    b_t = tl.load(TR + p_g, mask=m_t, other=1.0).to(tl.float32)
    b_m = tl.load(M + p_g, mask=m_t, other=0.0).to(tl.float32)
    b_d = tl.load(D + p_g, mask=m_t, other=0.0).to(tl.float32)
    prop, enter, carry, total = _products(b_t, o_i, BT)
    gate = b_m[:, None] * prop * b_s[None, :] + tl.where(o_i[:, None] == o_i[None, :],
                                                         b_d[:, None], 0.0)
    # 16-bit q, k are exact in tf32: q k^T's products are exact either way
    scores = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * scale * gate
    b_o = tl.dot(scores, b_v, input_precision=PREC)
    b_o += (scale * b_m * enter)[:, None] * tl.dot(b_q, state,
                                                   input_precision=PREC)
    tl.store(O + p_v, b_o.to(O.dtype.element_ty), mask=m_tv)


def plstm_1d_triton_fwd_tree(q, k, v, source, transition, mark, direct, scale, chunk):
    """As ``triton_1d.plstm_1d_triton_fwd(..., keep_states=True)`` (gates float32, tensors
    contiguous): (o [B, T, H, V] q's dtype, states [B*H, NC, K, V] fp32), with the chunks
    merged by the log-depth scan (module docstring)."""
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    meta = kernel_meta_1d(chunk, DK, DV, q.dtype)
    BT, BK, BV, warps = meta["BT"], meta["BK"], meta["BV"], meta["num_warps"]
    NC = triton.cdiv(T, BT)
    dev, f32 = q.device, torch.float32
    grid = (triton.cdiv(DV, BV), B * H, NC)
    upd = [torch.empty(B * H, NC, DK, DV, device=dev, dtype=f32) for _ in range(2)]
    dec = [torch.empty(B * H, NC, device=dev, dtype=f32) for _ in range(2)]
    sizes = dict(DK=DK, DV=DV, BK=BK, BV=BV, num_warps=warps)
    dots = dict(H=H, BT=BT, PREC=meta["PREC"])
    plstm1d_fwd_kernel_summary[grid](k, v, source, transition, upd[0], dec[0], T, NC,
                                     **dots, **sizes)
    cur, shift = 0, 1
    while shift < NC:
        plstm1d_fwd_kernel_scan[grid](upd[cur], dec[cur], upd[1 - cur], dec[1 - cur], NC, shift,
                                      **sizes)
        cur, shift = 1 - cur, 2 * shift
    o = torch.empty(B, T, H, DV, device=dev, dtype=q.dtype)
    states = torch.empty(B * H, NC, DK, DV, device=dev, dtype=f32)
    plstm1d_fwd_kernel_output[grid](q, k, v, source, transition, mark, direct, o, upd[cur],
                                    states, T, NC, scale, **dots, **sizes)
    return o, states
