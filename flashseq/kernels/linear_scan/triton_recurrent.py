"""Triton step kernels of ``fused_recurrent_gla`` (decoding; also any T): forward and backward.

Grid ``(cdiv(V, BV), N * H)``: one program owns a ``[BK, BV]`` fp32 block of one sequence's and
head's state, BK covering all of K (K <= 256), and walks that sequence's steps in order:
``S = exp(g_t)[:, None] * S + k_t^T v_t``, ``o_t = scale * q_t S``.

The backward recomputes the states instead of storing T of them:
``gla_recurrent_bwd_kernel_dq`` walks forward again and writes ``dq_t = scale * S_t do_t^T``;
``gla_recurrent_bwd_kernel_dkv`` walks backward with ``dS += scale q_t^T do_t``, writes
``dk_t = dS v_t^T``, ``dv_t = k_t dS``, then ``dS *= exp(g_t)[:, None]``; dS at the start is the
initial state's gradient. dq and dk are partial sums over the V blocks (summed on the host), and
the gate's gradient needs no kernel: with ``G`` the cumulated log gate, q meets ``exp(G_t)`` and
k ``exp(-G_t)``, so ``dg_t = sum_{s >= t} (q_s dq_s - k_s dk_s) + sum_v S_T dS_T``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import load_state, state_tile, step_program


@triton.jit
def gla_recurrent_fwd_kernel(Q, K_, V_, G, H0, O, HT, CU, scale, T,
                             H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                             BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr,
                             STORE_HT: tl.constexpr, VARLEN: tl.constexpr):
    i_v, i_nh, i_h, bos, eos = step_program(CU, T, H, VARLEN)
    o_k, o_v, m_k, m_v, m_h = state_tile(0, i_v, K, V, BK, BV)
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]  # [BK, BV]
    b_h = load_state(H0, p_state, m_h, BK, BV, HAS_H0)                   # [BK, BV]
    for t in range(bos, eos):
        p_k = (t * H + i_h) * K + o_k
        p_v = (t * H + i_h) * V + o_v
        b_q = tl.load(Q + p_k, mask=m_k, other=0.0).to(tl.float32) * scale   # [BK]
        b_k = tl.load(K_ + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_g = tl.load(G + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(V_ + p_v, mask=m_v, other=0.0).to(tl.float32)          # [BV]
        b_h = b_h * tl.exp(b_g)[:, None] + b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_h * b_q[:, None], axis=0)                              # [BV]
        tl.store(O + p_v, b_o.to(O.dtype.element_ty), mask=m_v)
    if STORE_HT:
        tl.store(HT + p_state, b_h, mask=m_h)


@triton.jit
def gla_recurrent_bwd_kernel_dq(K_, V_, G, H0, DO, DQ, CU, scale, T, NT_ALL,
                                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                                BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr,
                                VARLEN: tl.constexpr):
    i_v, i_nh, i_h, bos, eos = step_program(CU, T, H, VARLEN)
    o_k, o_v, m_k, m_v, m_h = state_tile(0, i_v, K, V, BK, BV)
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]  # [BK, BV]
    b_h = load_state(H0, p_state, m_h, BK, BV, HAS_H0)                   # [BK, BV]
    # DQ is [NV, B*T, H, K] fp32: this V block's share of dq
    dq_base = i_v.to(tl.int64) * NT_ALL * H * K
    for t in range(bos, eos):
        p_k = (t * H + i_h) * K + o_k
        p_v = (t * H + i_h) * V + o_v
        b_k = tl.load(K_ + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_g = tl.load(G + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(V_ + p_v, mask=m_v, other=0.0).to(tl.float32)
        b_do = tl.load(DO + p_v, mask=m_v, other=0.0).to(tl.float32)
        b_h = b_h * tl.exp(b_g)[:, None] + b_k[:, None] * b_v[None, :]
        b_dq = tl.sum(b_h * b_do[None, :], axis=1) * scale                    # [BK]
        tl.store(DQ + dq_base + p_k, b_dq, mask=m_k)


@triton.jit
def gla_recurrent_bwd_kernel_dkv(Q, K_, V_, G, DO, DHT, DK, DV, DH0, CU, scale, T, NT_ALL,
                                 H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                                 BK: tl.constexpr, BV: tl.constexpr, HAS_DHT: tl.constexpr,
                                 HAS_H0: tl.constexpr, VARLEN: tl.constexpr):
    i_v, i_nh, i_h, bos, eos = step_program(CU, T, H, VARLEN)
    o_k, o_v, m_k, m_v, m_h = state_tile(0, i_v, K, V, BK, BV)
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]  # [BK, BV]
    b_dh = load_state(DHT, p_state, m_h, BK, BV, HAS_DHT)                # [BK, BV]
    dk_base = i_v.to(tl.int64) * NT_ALL * H * K
    for j in range(bos, eos):
        t = bos + eos - 1 - j                                              # steps in reverse
        p_k = (t * H + i_h) * K + o_k
        p_v = (t * H + i_h) * V + o_v
        b_q = tl.load(Q + p_k, mask=m_k, other=0.0).to(tl.float32) * scale
        b_k = tl.load(K_ + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_g = tl.load(G + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(V_ + p_v, mask=m_v, other=0.0).to(tl.float32)
        b_do = tl.load(DO + p_v, mask=m_v, other=0.0).to(tl.float32)
        b_dh += b_q[:, None] * b_do[None, :]
        b_dk = tl.sum(b_dh * b_v[None, :], axis=1)                            # [BK]
        b_dv = tl.sum(b_dh * b_k[:, None], axis=0)                            # [BV]
        tl.store(DK + dk_base + p_k, b_dk, mask=m_k)
        tl.store(DV + p_v, b_dv.to(DV.dtype.element_ty), mask=m_v)
        b_dh = b_dh * tl.exp(b_g)[:, None]
    if HAS_H0:
        tl.store(DH0 + p_state, b_dh, mask=m_h)


def block_sizes(K: int, V: int) -> tuple[int, int]:
    """(BK, BV): BK covers K; BV keeps the fp32 state block at <= 2048 elements (16 registers
    per thread at 4 warps). With 4096 the backward's dk/dv kernel needed 246 of the 255
    registers at K = V = 64 (sm_80 cubin); at 2048 no kernel passes 130 (no spills)."""
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(triton.next_power_of_2(V), 2048 // BK))
    return BK, BV


def launch_sizes(q, v, cu_seqlens):
    """(B, T, H, K, V, N) of q [B, T, H, K] and v [..., V]; N = B or len(cu_seqlens) - 1."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    return B, T, H, K, V, N


def gla_recurrent_fwd(q, k, v, g, h0, scale, cu_seqlens, output_final_state):
    """Launch the forward: (o [B, T, H, V] q's dtype, final state [N, H, K, V] fp32 or None)."""
    B, T, H, K, V, N = launch_sizes(q, v, cu_seqlens)
    BK, BV = block_sizes(K, V)
    o = torch.empty_like(v)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    grid = (triton.cdiv(V, BV), N * H)
    gla_recurrent_fwd_kernel[grid](
        q, k, v, g, h0, o, ht, cu_seqlens, scale, T, H=H, K=K, V=V, BK=BK, BV=BV,
        HAS_H0=h0 is not None, STORE_HT=output_final_state, VARLEN=cu_seqlens is not None,
        num_warps=4)
    return o, ht


def gla_recurrent_bwd(q, k, v, g, h0, do, dht, scale, cu_seqlens):
    """Launch both backward kernels: (dq, dk, dv, dh0 or None) with dq, dk fp32 [B, T, H, K]."""
    B, T, H, K, V, N = launch_sizes(q, v, cu_seqlens)
    BK, BV = block_sizes(K, V)
    NV = triton.cdiv(V, BV)
    grid = (NV, N * H)
    dq = q.new_empty(NV, B, T, H, K, dtype=torch.float32)
    dk = q.new_empty(NV, B, T, H, K, dtype=torch.float32)
    dv = torch.empty_like(v)
    dh0 = torch.empty_like(h0, dtype=torch.float32) if h0 is not None else None
    common = dict(H=H, K=K, V=V, BK=BK, BV=BV, VARLEN=cu_seqlens is not None, num_warps=4)
    gla_recurrent_bwd_kernel_dq[grid](k, v, g, h0, do, dq, cu_seqlens, scale, T, B * T,
                                      HAS_H0=h0 is not None, **common)
    gla_recurrent_bwd_kernel_dkv[grid](q, k, v, g, do, dht, dk, dv, dh0, cu_seqlens, scale, T,
                                       B * T, HAS_DHT=dht is not None, HAS_H0=h0 is not None,
                                       **common)
    return dq.sum(0), dk.sum(0), dv, dh0


__all__ = ["gla_recurrent_fwd", "gla_recurrent_bwd", "block_sizes", "launch_sizes"]
