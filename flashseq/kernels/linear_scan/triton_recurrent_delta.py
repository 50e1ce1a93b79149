"""Triton step kernels of ``fused_recurrent_delta_rule`` (gated, DeltaProduct): forward, backward.

Grid ``(cdiv(V, BV), N * H)`` as for GLA (``triton_recurrent.py``): one program owns a
``[BK, BV]`` fp32 block of the state S (BK covering all of K, so ``k S`` is local to the block)
and walks its sequence: ``S *= exp(g_t)``, then for each of the NH Householder steps j
``u = v_j - k_j S``, ``S += beta_j k_j^T u``, then ``o_t = scale q_t S``. The forward keeps the
pseudo-values u ([B, T, NH, H, V] fp32, what the WY form calls the new values): with them the
backward rebuilds any state from the one before without a solve.

The backward recomputes the states rather than storing them:
``delta_recurrent_bwd_kernel_dkv`` walks backward with dS (the gradient of the state after the
step): ``dS += scale q_t^T do_t``; per Householder step in reverse ``du = beta dS^T k``
(= dv), ``dk = beta dS u``, ``dbeta = u . dS^T k``, ``dS -= k du^T``; then ``dS *= exp(g_t)``.
``delta_recurrent_bwd_kernel_dq`` walks forward again from the initial state and adds the term
of dk that needs the state before each Householder step, ``dk -= S du``, and writes
``dq_t = scale S_t do_t``. dq, dk, dbeta are partial sums over the V blocks (summed on the host).
The decay's gradient needs no kernel: ``<dS_t, S_t> = <dS'_t, S'_t> + sum_j v_j . du_j`` across
a step, so ``dg_t = sum_{s >= t} (q_s . dq_s - sum_j v_sj . du_sj) + <S_T, dS_T>`` (the kernel
writes the partial ``v . du`` per V block).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import load_state, state_tile, step_program
from .triton_recurrent import block_sizes, launch_sizes

# The forward runs 8 warps: at 4, ptxas kept one address of the final-state store on the stack
# across the step loop on sm_90 at K = V = 128 (8 bytes, at only 64-72 registers); at 8 no
# configuration of the compile check has a stack.
FWD_WARPS = 8


@triton.jit
def delta_recurrent_fwd_kernel(Q, K_, V_, BETA, G, H0, O, U, HT, CU, scale, T,
                               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                               BK: tl.constexpr, BV: tl.constexpr, NH: tl.constexpr,
                               HAS_G: tl.constexpr, HAS_H0: tl.constexpr,
                               STORE_HT: tl.constexpr, VARLEN: tl.constexpr):
    i_v, i_nh, i_h, bos, eos = step_program(CU, T, H, VARLEN)
    o_k, o_v, m_k, m_v, m_h = state_tile(0, i_v, K, V, BK, BV)
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]  # [BK, BV]
    b_h = load_state(H0, p_state, m_h, BK, BV, HAS_H0)                   # [BK, BV]
    for t in range(bos, eos):
        if HAS_G:
            b_h = b_h * tl.exp(tl.load(G + t * H + i_h).to(tl.float32))
        for j in tl.static_range(NH):
            row = (t * NH + j) * H + i_h                                   # [B, T, NH, H, .]
            b_k = tl.load(K_ + row * K + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_v = tl.load(V_ + row * V + o_v, mask=m_v, other=0.0).to(tl.float32)
            b_beta = tl.load(BETA + row).to(tl.float32)
            b_u = b_v - tl.sum(b_h * b_k[:, None], axis=0)                 # [BV]
            tl.store(U + row * V + o_v, b_u, mask=m_v)
            b_h += (b_beta * b_k)[:, None] * b_u[None, :]
        p_q = (t * H + i_h) * K + o_k
        b_q = tl.load(Q + p_q, mask=m_k, other=0.0).to(tl.float32) * scale
        b_o = tl.sum(b_h * b_q[:, None], axis=0)                           # [BV]
        tl.store(O + (t * H + i_h) * V + o_v, b_o.to(O.dtype.element_ty), mask=m_v)
    if STORE_HT:
        tl.store(HT + p_state, b_h, mask=m_h)


@triton.jit
def delta_recurrent_bwd_kernel_dkv(Q, K_, V_, BETA, G, U, DO, DHT, DK, DU, DB, R, DH0, CU, scale,
                                   T, NT_ALL, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                                   BK: tl.constexpr, BV: tl.constexpr, NH: tl.constexpr,
                                   HAS_G: tl.constexpr, HAS_DHT: tl.constexpr,
                                   HAS_H0: tl.constexpr, VARLEN: tl.constexpr):
    i_v, i_nh, i_h, bos, eos = step_program(CU, T, H, VARLEN)
    o_k, o_v, m_k, m_v, m_h = state_tile(0, i_v, K, V, BK, BV)
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]  # [BK, BV]
    b_dh = load_state(DHT, p_state, m_h, BK, BV, HAS_DHT)                # [BK, BV]
    # DK [NV, B*T*NH, H, K], DB and R [NV, B*T*NH, H]: this V block's shares
    dk_base = i_v.to(tl.int64) * NT_ALL * NH * H * K
    db_base = i_v.to(tl.int64) * NT_ALL * NH * H
    for s in range(bos, eos):
        t = bos + eos - 1 - s                                              # steps in reverse
        p_q = (t * H + i_h) * K + o_k
        b_q = tl.load(Q + p_q, mask=m_k, other=0.0).to(tl.float32) * scale
        b_do = tl.load(DO + (t * H + i_h) * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_dh += b_q[:, None] * b_do[None, :]
        for jj in tl.static_range(NH):
            row = (t * NH + NH - 1 - jj) * H + i_h             # Householder steps in reverse
            b_k = tl.load(K_ + row * K + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_v = tl.load(V_ + row * V + o_v, mask=m_v, other=0.0).to(tl.float32)
            b_u = tl.load(U + row * V + o_v, mask=m_v, other=0.0)
            b_beta = tl.load(BETA + row).to(tl.float32)
            b_kdh = tl.sum(b_dh * b_k[:, None], axis=0)                     # [BV] dS^T k
            b_du = b_beta * b_kdh
            tl.store(DU + row * V + o_v, b_du, mask=m_v)
            b_dk = b_beta * tl.sum(b_dh * b_u[None, :], axis=1)            # [BK]
            tl.store(DK + dk_base + row * K + o_k, b_dk, mask=m_k)
            tl.store(DB + db_base + row, tl.sum(b_u * b_kdh, axis=0))
            tl.store(R + db_base + row, tl.sum(b_v * b_du, axis=0))
            b_dh -= b_k[:, None] * b_du[None, :]
        if HAS_G:
            b_dh = b_dh * tl.exp(tl.load(G + t * H + i_h).to(tl.float32))
    if HAS_H0:
        tl.store(DH0 + p_state, b_dh, mask=m_h)


@triton.jit
def delta_recurrent_bwd_kernel_dq(K_, BETA, G, H0, U, DU, DO, DQ, DK, CU, scale, T, NT_ALL,
                                  H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                                  BK: tl.constexpr, BV: tl.constexpr, NH: tl.constexpr,
                                  HAS_G: tl.constexpr, HAS_H0: tl.constexpr,
                                  VARLEN: tl.constexpr):
    i_v, i_nh, i_h, bos, eos = step_program(CU, T, H, VARLEN)
    o_k, o_v, m_k, m_v, m_h = state_tile(0, i_v, K, V, BK, BV)
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]  # [BK, BV]
    b_h = load_state(H0, p_state, m_h, BK, BV, HAS_H0)                   # [BK, BV]
    dq_base = i_v.to(tl.int64) * NT_ALL * H * K                            # DQ [NV, B*T, H, K]
    dk_base = i_v.to(tl.int64) * NT_ALL * NH * H * K
    for t in range(bos, eos):
        if HAS_G:
            b_h = b_h * tl.exp(tl.load(G + t * H + i_h).to(tl.float32))
        for j in tl.static_range(NH):
            row = (t * NH + j) * H + i_h
            b_k = tl.load(K_ + row * K + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_u = tl.load(U + row * V + o_v, mask=m_v, other=0.0)
            b_du = tl.load(DU + row * V + o_v, mask=m_v, other=0.0)
            b_beta = tl.load(BETA + row).to(tl.float32)
            p_dk = DK + dk_base + row * K + o_k
            b_dk = tl.load(p_dk, mask=m_k, other=0.0) - tl.sum(b_h * b_du[None, :], axis=1)
            tl.store(p_dk, b_dk, mask=m_k)
            b_h += (b_beta * b_k)[:, None] * b_u[None, :]
        p_q = (t * H + i_h) * K + o_k
        b_do = tl.load(DO + (t * H + i_h) * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        tl.store(DQ + dq_base + p_q, tl.sum(b_h * b_do[None, :], axis=1) * scale, mask=m_k)


def delta_recurrent_fwd(q, k, v, beta, g, h0, scale, cu_seqlens, output_final_state, nh):
    """Launch the forward: (o [B, T, H, V] q's dtype, u [B, T, nh, H, V] fp32, final state
    [N, H, K, V] fp32 or None). k, v, beta may carry the n_h axis (``nh`` > 1) or not."""
    B, T, H, K, V, N = launch_sizes(q, v, cu_seqlens)
    BK, BV = block_sizes(K, V)
    o = q.new_empty(B, T, H, V, dtype=v.dtype)
    u = q.new_empty(B, T, nh, H, V, dtype=torch.float32)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    grid = (triton.cdiv(V, BV), N * H)
    delta_recurrent_fwd_kernel[grid](
        q, k, v, beta, g, h0, o, u, ht, cu_seqlens, scale, T, H=H, K=K, V=V, BK=BK, BV=BV, NH=nh,
        HAS_G=g is not None, HAS_H0=h0 is not None, STORE_HT=output_final_state,
        VARLEN=cu_seqlens is not None, num_warps=FWD_WARPS)
    return o, u, ht


def delta_recurrent_bwd(q, k, v, beta, g, h0, u, do, dht, scale, cu_seqlens, nh):
    """Launch both backward kernels: (dq [B, T, H, K], dk [B, T, nh, H, K], dv (= du)
    [B, T, nh, H, V], dbeta [B, T, nh, H], v . du [B, T, nh, H], dh0 or None), all fp32."""
    B, T, H, K, V, N = launch_sizes(q, v, cu_seqlens)
    BK, BV = block_sizes(K, V)
    NV = triton.cdiv(V, BV)
    grid = (NV, N * H)
    dq = q.new_empty(NV, B, T, H, K, dtype=torch.float32)
    dk = q.new_empty(NV, B, T, nh, H, K, dtype=torch.float32)
    du = q.new_empty(B, T, nh, H, V, dtype=torch.float32)
    db = q.new_empty(NV, B, T, nh, H, dtype=torch.float32)
    r = q.new_empty(NV, B, T, nh, H, dtype=torch.float32)
    dh0 = torch.empty_like(h0, dtype=torch.float32) if h0 is not None else None
    common = dict(H=H, K=K, V=V, BK=BK, BV=BV, NH=nh, HAS_G=g is not None,
                  HAS_H0=h0 is not None, VARLEN=cu_seqlens is not None, num_warps=4)
    delta_recurrent_bwd_kernel_dkv[grid](q, k, v, beta, g, u, do, dht, dk, du, db, r, dh0,
                                         cu_seqlens, scale, T, B * T, HAS_DHT=dht is not None,
                                         **common)
    delta_recurrent_bwd_kernel_dq[grid](k, beta, g, h0, u, du, do, dq, dk, cu_seqlens, scale, T,
                                        B * T, **common)
    return dq.sum(0), dk.sum(0), du, db.sum(0), r.sum(0), dh0


__all__ = ["delta_recurrent_fwd", "delta_recurrent_bwd", "FWD_WARPS"]
