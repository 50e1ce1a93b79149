"""Triton chunkwise GLA forward: chunk-local gate cumsum, inter-chunk state pass, output pass.

Every call is laid out as packed sequences (B rows of length T are B sequences of ``cu_seqlens``
``0, T, 2T, ...``), cut into chunks of BT steps per sequence; ``CHUNKS`` [NC, 2] holds each
chunk's first step and its sequence's end, ``CO`` [N+1] each sequence's first chunk.

``gla_chunk_fwd_kernel_cumsum``  grid (K/BK, NC, H): ``b = cumsum(g)`` within each chunk, fp32.
``gla_chunk_fwd_kernel_h``       grid (K/BK, V/BV, N*H): the state pass, shared by the forward
    and (recomputing it) the backward; writes the state at every chunk's start,
    ``S <- exp(b_last)[:, None] * S + (k * exp(b_last - b))^T v``.
``gla_chunk_fwd_kernel_o``       grid (V/BV, NC, H): per chunk, in row groups of BC = 16 steps,
    ``o = scale * ((q * exp(b)) S_c + A v)`` with the causal scores
    ``A[r, s] = sum_k q_rk k_sk exp(b_rk - b_sk)``. Columns before the row group go through
    ``tl.dot`` with the gates split at the group's first row ``b_0``: ``q exp(b_r - b_0)`` and
    ``k exp(b_0 - b_s)`` are both <= 1 because b never increases (g <= 0); the BC x BC diagonal
    block is summed column by column with the exact ``exp(b_r - b_s)``, so no factor overflows.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import chunk_bounds, chunk_state_program, chunk_steps, state_tile

BC = 16   # row group of the intra-chunk scores; tl.dot's smallest tile
# Kernels that rebuild the scores (output, dv) run at least 8 warps: at 4 the output kernel
# needed 250 registers (sm_90, BT 64, BK 32, BV 32, K = V = 128), at 8 it needs 174.
MIN_WARPS_SCORES = 8


@triton.jit
def gla_chunk_fwd_kernel_cumsum(G, GC, CHUNKS, H: tl.constexpr, K: tl.constexpr,
                                BT: tl.constexpr, BK: tl.constexpr):
    i_k, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, eos = chunk_bounds(CHUNKS, i_c)
    o_t = t0 + tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m = (o_t < eos)[:, None] & (o_k < K)[None, :]
    p = (o_t[:, None] * H + i_h) * K + o_k[None, :]
    b_g = tl.load(G + p, mask=m, other=0.0).to(tl.float32)                    # [BT, BK]
    tl.store(GC + p, tl.cumsum(b_g, axis=0), mask=m)


@triton.jit
def gla_chunk_fwd_kernel_h(K_, V_, GC, H0, HS, HT, CU, CO,
                           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                           BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr,
                           STORE_HT: tl.constexpr, PREC: tl.constexpr):
    i_k, i_v, i_nh, i_h, bos, eos, c0 = chunk_state_program(CU, CO, H)
    o_k, o_v, m_k, m_v, m_h = state_tile(i_k, i_v, K, V, BK, BV)
    p_blk = o_k[:, None] * V + o_v[None, :]                                    # [BK, BV]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)                                 # [BK, BV]
    if HAS_H0:
        b_h += tl.load(H0 + i_nh.to(tl.int64) * K * V + p_blk, mask=m_h, other=0.0)
    for c in range(0, tl.cdiv(eos - bos, BT)):
        tl.store(HS + ((c0 + c) * H + i_h) * K * V + p_blk, b_h.to(HS.dtype.element_ty), mask=m_h)
        o_t, m_t, last = chunk_steps(bos + c * BT, eos, BT)
        p_tk = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        b_k = tl.load(K_ + p_tk, mask=m_t[:, None] & m_k[None, :], other=0.0)       # [BT, BK]
        b_g = tl.load(GC + p_tk, mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_v = tl.load(V_ + (o_t[:, None] * H + i_h) * V + o_v[None, :],
                      mask=m_t[:, None] & m_v[None, :], other=0.0)                  # [BT, BV]
        b_glast = tl.load(GC + (last * H + i_h) * K + o_k, mask=m_k, other=0.0)     # [BK]
        b_kd = (b_k * tl.exp(b_glast[None, :] - b_g)).to(b_v.dtype)
        b_h = b_h * tl.exp(b_glast)[:, None] + tl.dot(tl.trans(b_kd), b_v, input_precision=PREC)
    if STORE_HT:
        tl.store(HT + i_nh.to(tl.int64) * K * V + p_blk, b_h, mask=m_h)


@triton.jit
def gla_chunk_scores(Q, K_, GC, HS_ptr, t0, eos, r0, i_h, i_grp, i_v, H: tl.constexpr,
                     K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                     BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
                     WITH_STATE: tl.constexpr):
    """Rows r0 .. r0+BC-1 (group i_grp) of the chunk starting at t0: (A [BC, BT], the causal
    scores, and with WITH_STATE ``q exp(b) S_c`` [BC, BV] for V block i_v, S_c at HS_ptr)."""
    o_r = r0 + tl.arange(0, BC)
    o_t = t0 + tl.arange(0, BT)
    m_r, m_t = o_r < eos, o_t < eos
    o_c = tl.arange(0, BT)
    o_j = tl.arange(0, BC)
    o_v = i_v * BV + tl.arange(0, BV)
    ref_row = tl.minimum(r0, eos - 1)
    b_A = tl.zeros([BC, BT], dtype=tl.float32)
    b_o = tl.zeros([BC, BV], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        p_rk = (o_r[:, None] * H + i_h) * K + o_k[None, :]
        p_tk = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        b_q = tl.load(Q + p_rk, mask=m_r[:, None] & m_k[None, :], other=0.0).to(tl.float32)
        b_gr = tl.load(GC + p_rk, mask=m_r[:, None] & m_k[None, :], other=0.0)       # [BC, BK]
        b_k = tl.load(K_ + p_tk, mask=m_t[:, None] & m_k[None, :], other=0.0).to(tl.float32)
        b_g = tl.load(GC + p_tk, mask=m_t[:, None] & m_k[None, :], other=0.0)        # [BT, BK]
        b_ref = tl.load(GC + (ref_row * H + i_h) * K + o_k, mask=m_k, other=0.0)     # [BK]
        if WITH_STATE:
            b_hs = tl.load(HS_ptr + o_k[:, None] * V + o_v[None, :],
                           mask=m_k[:, None] & (o_v < V)[None, :], other=0.0)        # [BK, BV]
            b_o += tl.dot((b_q * tl.exp(b_gr)).to(b_hs.dtype), b_hs, input_precision=PREC)
        # columns before the row group: split at b_ref, both factors <= 1
        before = (o_c < i_grp * BC)[:, None]
        b_kr = tl.where(before, b_k * tl.exp(tl.where(before, b_ref[None, :] - b_g, 0.0)), 0.0)
        b_qr = b_q * tl.exp(b_gr - b_ref[None, :])
        b_A += tl.dot(b_qr, tl.trans(b_kr), input_precision=PREC)
        # the diagonal block, one column at a time with the exact decay
        for j in range(0, BC):
            s = tl.minimum(r0 + j, eos - 1)
            b_ks = tl.load(K_ + (s * H + i_h) * K + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_gs = tl.load(GC + (s * H + i_h) * K + o_k, mask=m_k, other=0.0)
            causal = (o_j >= j)[:, None]
            decay = tl.exp(tl.where(causal, b_gr - b_gs[None, :], float("-inf")))
            col = tl.sum(b_q * b_ks[None, :] * decay, axis=1)                             # [BC]
            b_A += tl.where((o_c == i_grp * BC + j)[None, :], col[:, None], 0.0)
    return b_A, b_o


@triton.jit
def gla_chunk_fwd_kernel_o(Q, K_, V_, GC, HS, O, CHUNKS, scale,
                           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                           BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                           PREC: tl.constexpr):
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, eos = chunk_bounds(CHUNKS, i_c)
    o_t, m_t, _ = chunk_steps(t0, eos, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    b_v = tl.load(V_ + (o_t[:, None] * H + i_h) * V + o_v[None, :],
                  mask=m_t[:, None] & m_v[None, :], other=0.0)                       # [BT, BV]
    p_hs = HS + (i_c.to(tl.int64) * H + i_h) * K * V
    for i_grp in tl.static_range(0, BT // BC):
        r0 = t0 + i_grp * BC
        b_A, b_o = gla_chunk_scores(Q, K_, GC, p_hs, t0, eos, r0, i_h, i_grp, i_v, H, K, V, BT,
                                    BC, BK, BV, PREC, True)
        b_o += tl.dot(b_A.to(b_v.dtype), b_v, input_precision=PREC)
        o_r = r0 + tl.arange(0, BC)
        tl.store(O + (o_r[:, None] * H + i_h) * V + o_v[None, :], (scale * b_o).to(O.dtype.element_ty),
                 mask=(o_r < eos)[:, None] & m_v[None, :])


def chunk_layout(B, T, cu_seqlens, BT, device):
    """(cu [N+1] int64, chunk offsets CO [N+1] int64, CHUNKS [NC, 2] int64) on ``device``.

    With ``cu_seqlens`` the number of chunks NC sizes the chunk kernels' grids, so the bounds
    are read on the host (``tolist``): the launchers pass the device copy, so on a GPU this is
    a device-to-host read that waits for the stream, once in the forward and once in the
    backward (plus the entry point's validation). Building the table on the device over an
    upper bound of NC (cdiv(T, BT) + N - 1, empty chunks at the end) would remove it."""
    if cu_seqlens is None:
        bounds = [n * T for n in range(B + 1)]
    else:
        bounds = [int(x) for x in cu_seqlens.tolist()]
    starts, offsets = [], [0]
    for lo, hi in zip(bounds, bounds[1:]):
        for t0 in range(lo, hi, BT):
            starts.append((t0, hi))
        offsets.append(len(starts))
    as_tensor = lambda x: torch.tensor(x, dtype=torch.int64, device=device)  # noqa: E731
    return as_tensor(bounds), as_tensor(offsets), as_tensor(starts)


def chunk_launch_dims(q, v, cu_seqlens, tiles):
    """(B, T, H, K, V, layout, N, NC) of a chunk launcher's inputs q [B, T, H, K] and
    v [B, T, H, V]: ``chunk_layout`` (cu, CO, CHUNKS) with N sequences and NC chunks."""
    B, T, H, K = q.shape
    layout = chunk_layout(B, T, cu_seqlens, tiles[0], q.device)
    return B, T, H, K, v.shape[-1], layout, layout[0].numel() - 1, layout[2].shape[0]


def precision(dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def gla_chunk_states(k, v, gc, h0, layout, tiles, output_final_state, state_dtype):
    """Launch the state pass: (states at every chunk start [NC, H, K, V], final [N, H, K, V])."""
    cu, co, chunks = layout
    _, _, H, K = k.shape
    V = v.shape[-1]
    N = cu.numel() - 1
    BT, BK, BV, W = tiles
    hs = k.new_empty(chunks.shape[0], H, K, V, dtype=state_dtype)
    ht = k.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    grid = (triton.cdiv(K, BK), triton.cdiv(V, BV), N * H)
    gla_chunk_fwd_kernel_h[grid](k, v, gc, h0, hs, ht, cu, co, H=H, K=K, V=V, BT=BT, BK=BK,
                                 BV=BV, HAS_H0=h0 is not None, STORE_HT=output_final_state,
                                 PREC=precision(k.dtype), num_warps=W)
    return hs, ht


def gla_chunk_cumsum(g, layout, BT, BK):
    _, _, H, K = g.shape
    chunks = layout[2]
    gc = torch.empty_like(g, dtype=torch.float32)
    gla_chunk_fwd_kernel_cumsum[(triton.cdiv(K, BK), chunks.shape[0], H)](
        g, gc, chunks, H=H, K=K, BT=BT, BK=BK)
    return gc


def gla_chunk_fwd(q, k, v, g, h0, scale, cu_seqlens, output_final_state, tiles):
    """Launch the three forward kernels: (o [B, T, H, V], final [N, H, K, V] fp32 or None)."""
    B, T, H, K, V, layout, _, _ = chunk_launch_dims(q, v, cu_seqlens, tiles)
    BT, BK, BV, W = tiles
    gc = gla_chunk_cumsum(g, layout, BT, BK)
    hs, ht = gla_chunk_states(k, v, gc, h0, layout, tiles, output_final_state, q.dtype)
    o = torch.empty_like(v)
    gla_chunk_fwd_kernel_o[(triton.cdiv(V, BV), layout[2].shape[0], H)](
        q, k, v, gc, hs, o, layout[2], scale, H=H, K=K, V=V, BT=BT, BC=BC, BK=BK, BV=BV,
        PREC=precision(q.dtype), num_warps=max(W, MIN_WARPS_SCORES))
    return o, ht


__all__ = ["gla_chunk_fwd", "gla_chunk_cumsum", "gla_chunk_states", "chunk_layout", "BC"]
