"""Triton step kernels of ``fused_recurrent_mlstm`` (decoding; also any T): forward and backward.

Grid ``(cdiv(V, BV), N * H)`` as for GLA (``triton_recurrent.py``): one program owns a
``[BK, BV]`` fp32 block of C (BK covering all of K), and the whole normaliser n and stabiliser m
of its sequence and head (every V block computes them; block 0 writes them). Per step
``lf = logsigmoid(f)``, ``m' = max(lf + m, i)``, ``C = exp(lf + m - m') C + exp(i - m') k^T v``,
n likewise, ``o = scale q C / (max(|scale q . n|, exp(-m')) + eps)``. The forward also writes m_t
and ``qn_t = scale q_t . n_t`` per step ([B, T, H] fp32 each) for the backward.

The backward recomputes the states. With F the cumulated log forget gate, C_t is a sum of terms
``exp(F_t - F_s + i_s - m_t) k_s^T v_s`` (and ``exp(F_t + m_0 - m_t) C_0``), so, as for GLA's
gate, the gradient of every exponent comes from dq and dk: ``dF_t = q_t . dq_t - k_t . dk_t``,
``di_t = k_t . dk_t``, ``dm_t = -q_t . dq_t`` (plus the final state's and the denominator's
terms), then the stabiliser's own recurrence ``m_t = max(lf_t + m_{t-1}, i_t)`` routes dm_t to
lf, i or m_{t-1} (``mlstm_gate_grads``, on the host, over [B, T, H] scalars in float64).

``mlstm_recurrent_bwd_kernel_dq``  walks forward: ``dq_t = scale (C_t dh_t + n_t dqn_t)``;
``mlstm_recurrent_bwd_kernel_dkv`` walks backward with ``dC += scale q^T dh``,
    ``dn += scale q dqn``, ``dk = gain (dC v + dn)``, ``dv = gain k dC``, then ``dC *= decay``;
where ``dh_t = do_t / den_t`` and ``dqn_t`` (the denominator's share) come from the host.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import load_state, state_tile, step_program
from .triton_recurrent import block_sizes, launch_sizes

EPS_VALUE = 1e-6                 # the denominator's eps, as in reference.mlstm_reference
EPS = tl.constexpr(EPS_VALUE)


@triton.jit
def _logsigmoid(x):
    # min(x, 0) - log1p(exp(-|x|)), log1p by Kahan's trick: log(1 + e) alone loses the low bits
    # of e (6e-8 absolute), which the cumulated gate and the stabiliser then carry
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    log1p = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
    return tl.minimum(x, 0.0) - log1p


@triton.jit
def _initial(C0, N0, M0, i_nh, o_k, m_k, p_C, m_C, K: tl.constexpr, BK: tl.constexpr,
             BV: tl.constexpr, HAS_H0: tl.constexpr):
    """The initial (C [BK, BV], n [BK], m [1]) fp32, zeros unless HAS_H0."""
    b_C = load_state(C0, p_C, m_C, BK, BV, HAS_H0)                       # [BK, BV]
    b_n = tl.zeros([BK], dtype=tl.float32)
    b_m = tl.zeros([1], dtype=tl.float32)
    if HAS_H0:
        b_n += tl.load(N0 + i_nh.to(tl.int64) * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_m += tl.load(M0 + i_nh + tl.arange(0, 1)).to(tl.float32)
    return b_C, b_n, b_m


@triton.jit
def _gates(I, F_, p_g, b_m):
    """(m', decay, gain) of one step from the previous stabiliser b_m ([1] fp32)."""
    b_i = tl.load(I + p_g + tl.arange(0, 1)).to(tl.float32)
    b_lf = _logsigmoid(tl.load(F_ + p_g + tl.arange(0, 1)).to(tl.float32))
    m_new = tl.maximum(b_lf + b_m, b_i)
    return m_new, tl.exp(b_lf + b_m - m_new), tl.exp(b_i - m_new)


@triton.jit
def mlstm_recurrent_fwd_kernel(Q, K_, V_, I, F_, C0, N0, M0, O, MS, QN, CT, NT, MT, CU, scale, T,
                               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                               BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr,
                               STORE_HT: tl.constexpr, VARLEN: tl.constexpr):
    i_v, i_nh, i_h, bos, eos = step_program(CU, T, H, VARLEN)
    o_k, o_v, m_k, m_v, m_C = state_tile(0, i_v, K, V, BK, BV)
    p_C = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]     # [BK, BV]
    first = tl.arange(0, 1) < (i_v == 0).to(tl.int32)                  # [1]: block 0 writes n, m
    b_C, b_n, b_m = _initial(C0, N0, M0, i_nh, o_k, m_k, p_C, m_C, K, BK, BV, HAS_H0)
    for t in range(bos, eos):
        p_k = (t * H + i_h) * K + o_k
        p_v = (t * H + i_h) * V + o_v
        b_m, b_decay, b_gain = _gates(I, F_, t * H + i_h, b_m)
        b_q = tl.load(Q + p_k, mask=m_k, other=0.0).to(tl.float32) * scale   # [BK]
        b_k = tl.load(K_ + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(V_ + p_v, mask=m_v, other=0.0).to(tl.float32)          # [BV]
        b_C = b_C * b_decay[:, None] + (b_gain * b_k)[:, None] * b_v[None, :]
        b_n = b_n * b_decay + b_gain * b_k
        b_num = tl.sum(b_C * b_q[:, None], axis=0)                            # [BV]
        b_qn = tl.sum(b_q * b_n, axis=0, keep_dims=True)                      # [1]
        b_den = tl.maximum(tl.abs(b_qn), tl.exp(-b_m)) + EPS
        tl.store(O + p_v, (b_num / b_den).to(O.dtype.element_ty), mask=m_v)
        p_s = t * H + i_h + tl.arange(0, 1)
        tl.store(MS + p_s, b_m, mask=first)
        tl.store(QN + p_s, b_qn, mask=first)
    if STORE_HT:
        tl.store(CT + p_C, b_C, mask=m_C)
        tl.store(NT + i_nh.to(tl.int64) * K + o_k, b_n, mask=m_k & (i_v == 0))
        tl.store(MT + i_nh + tl.arange(0, 1), b_m, mask=first)


@triton.jit
def mlstm_recurrent_bwd_kernel_dq(K_, V_, I, F_, C0, N0, M0, RDEN, DQN, DO, DQ, CU, scale, T,
                                  NT_ALL, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                                  BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr,
                                  VARLEN: tl.constexpr):
    i_v, i_nh, i_h, bos, eos = step_program(CU, T, H, VARLEN)
    o_k, o_v, m_k, m_v, m_C = state_tile(0, i_v, K, V, BK, BV)
    p_C = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]     # [BK, BV]
    only_first = (i_v == 0).to(tl.float32)                              # n's share: block 0
    b_C, b_n, b_m = _initial(C0, N0, M0, i_nh, o_k, m_k, p_C, m_C, K, BK, BV, HAS_H0)
    dq_base = i_v.to(tl.int64) * NT_ALL * H * K                          # DQ [NV, B*T, H, K]
    for t in range(bos, eos):
        p_k = (t * H + i_h) * K + o_k
        p_v = (t * H + i_h) * V + o_v
        p_s = t * H + i_h + tl.arange(0, 1)
        b_m, b_decay, b_gain = _gates(I, F_, t * H + i_h, b_m)
        b_k = tl.load(K_ + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(V_ + p_v, mask=m_v, other=0.0).to(tl.float32)
        b_C = b_C * b_decay[:, None] + (b_gain * b_k)[:, None] * b_v[None, :]
        b_n = b_n * b_decay + b_gain * b_k
        b_dh = tl.load(DO + p_v, mask=m_v, other=0.0).to(tl.float32) * tl.load(RDEN + p_s)
        b_dqn = tl.load(DQN + p_s) * only_first                           # [1]
        b_dq = (tl.sum(b_C * b_dh[None, :], axis=1) + b_n * b_dqn) * scale    # [BK]
        tl.store(DQ + dq_base + p_k, b_dq, mask=m_k)


@triton.jit
def mlstm_recurrent_bwd_kernel_dkv(Q, K_, V_, I, F_, M0, MS, RDEN, DQN, DO, DCT, DNT, DK, DV,
                                   DC0, DN0, CU, scale, T, NT_ALL, H: tl.constexpr,
                                   K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                                   BV: tl.constexpr, HAS_DHT: tl.constexpr,
                                   HAS_H0: tl.constexpr, VARLEN: tl.constexpr):
    i_v, i_nh, i_h, bos, eos = step_program(CU, T, H, VARLEN)
    o_k, o_v, m_k, m_v, m_C = state_tile(0, i_v, K, V, BK, BV)
    p_C = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]     # [BK, BV]
    only_first = (i_v == 0).to(tl.float32)
    b_dC = load_state(DCT, p_C, m_C, BK, BV, HAS_DHT)                    # [BK, BV]
    b_dn = tl.zeros([BK], dtype=tl.float32)
    if HAS_DHT:
        b_dn += tl.load(DNT + i_nh.to(tl.int64) * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    dk_base = i_v.to(tl.int64) * NT_ALL * H * K
    for j in range(bos, eos):
        t = bos + eos - 1 - j                                              # steps in reverse
        p_k = (t * H + i_h) * K + o_k
        p_v = (t * H + i_h) * V + o_v
        p_s = t * H + i_h + tl.arange(0, 1)
        # the previous stabiliser: m_{t-1}, or m_0 at the sequence's first step
        b_prev = tl.load(MS + p_s - H, mask=p_s - H >= bos * H, other=0.0)
        if HAS_H0:
            b_prev = tl.where(t > bos, b_prev, tl.load(M0 + i_nh + tl.arange(0, 1)))
        b_mt = tl.load(MS + p_s)
        b_i = tl.load(I + p_s).to(tl.float32)
        b_lf = _logsigmoid(tl.load(F_ + p_s).to(tl.float32))
        b_decay = tl.exp(b_lf + b_prev - b_mt)
        b_gain = tl.exp(b_i - b_mt)
        b_q = tl.load(Q + p_k, mask=m_k, other=0.0).to(tl.float32) * scale
        b_k = tl.load(K_ + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(V_ + p_v, mask=m_v, other=0.0).to(tl.float32)
        b_dh = tl.load(DO + p_v, mask=m_v, other=0.0).to(tl.float32) * tl.load(RDEN + p_s)
        b_dC += b_q[:, None] * b_dh[None, :]
        b_dn += b_q * tl.load(DQN + p_s)
        b_dk = (tl.sum(b_dC * b_v[None, :], axis=1) + b_dn * only_first) * b_gain
        b_dv = tl.sum(b_dC * b_k[:, None], axis=0) * b_gain
        tl.store(DK + dk_base + p_k, b_dk, mask=m_k)
        tl.store(DV + p_v, b_dv.to(DV.dtype.element_ty), mask=m_v)
        b_dC = b_dC * b_decay[:, None]
        b_dn = b_dn * b_decay
    if HAS_H0:
        tl.store(DC0 + p_C, b_dC, mask=m_C)
        tl.store(DN0 + i_nh.to(tl.int64) * K + o_k, b_dn, mask=m_k & (i_v == 0))


def mlstm_recurrent_fwd(q, k, v, i, f, C0, n0, m0, scale, cu_seqlens, output_final_state):
    """Launch the forward: (o [B, T, H, V], m [B, T, H] fp32, qn [B, T, H] fp32, and the final
    (C, n, m) fp32, or Nones unless ``output_final_state``)."""
    B, T, H, K, V, N = launch_sizes(q, v, cu_seqlens)
    BK, BV = block_sizes(K, V)
    o = torch.empty_like(v)
    ms = q.new_empty(B, T, H, dtype=torch.float32)
    qn = q.new_empty(B, T, H, dtype=torch.float32)
    shapes = ((N, H, K, V), (N, H, K), (N, H))
    final = (tuple(q.new_empty(s, dtype=torch.float32) for s in shapes) if output_final_state
             else (None,) * 3)
    grid = (triton.cdiv(V, BV), N * H)
    mlstm_recurrent_fwd_kernel[grid](
        q, k, v, i, f, C0, n0, m0, o, ms, qn, *final, cu_seqlens, scale, T, H=H, K=K, V=V,
        BK=BK, BV=BV, HAS_H0=C0 is not None, STORE_HT=output_final_state,
        VARLEN=cu_seqlens is not None, num_warps=4)
    return o, ms, qn, final


def mlstm_recurrent_bwd(q, k, v, i, f, C0, n0, m0, ms, rden, dqn, do, dCT, dnT, scale,
                        cu_seqlens):
    """Launch both backward kernels: (dq, dk fp32 [B, T, H, K], dv, dC0, dn0 fp32 or None).
    ``rden`` = 1 / den_t and ``dqn`` (the gradient of qn_t) are [B, T, H] fp32; dCT and dnT are
    both given or both None."""
    B, T, H, K, V, N = launch_sizes(q, v, cu_seqlens)
    BK, BV = block_sizes(K, V)
    NV = triton.cdiv(V, BV)
    grid = (NV, N * H)
    dq = q.new_empty(NV, B, T, H, K, dtype=torch.float32)
    dk = q.new_empty(NV, B, T, H, K, dtype=torch.float32)
    dv = torch.empty_like(v)
    has_h0 = C0 is not None
    dC0 = torch.empty_like(C0, dtype=torch.float32) if has_h0 else None
    dn0 = torch.empty_like(n0, dtype=torch.float32) if has_h0 else None
    common = dict(H=H, K=K, V=V, BK=BK, BV=BV, HAS_H0=has_h0, VARLEN=cu_seqlens is not None,
                  num_warps=4)
    mlstm_recurrent_bwd_kernel_dq[grid](k, v, i, f, C0, n0, m0, rden, dqn, do, dq, cu_seqlens,
                                        scale, T, B * T, **common)
    mlstm_recurrent_bwd_kernel_dkv[grid](q, k, v, i, f, m0, ms, rden, dqn, do, dCT, dnT, dk, dv,
                                         dC0, dn0, cu_seqlens, scale, T, B * T,
                                         HAS_DHT=dCT is not None, **common)
    return dq.sum(0), dk.sum(0), dv, dC0, dn0


__all__ = ["mlstm_recurrent_fwd", "mlstm_recurrent_bwd", "EPS_VALUE"]
