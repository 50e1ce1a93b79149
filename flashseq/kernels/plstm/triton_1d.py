"""Triton forward of ``plstm_1d``: one program per (V block, batch row x head) walks the chunks,
keeping its fp32 [K, BV] state in registers and building each chunk's propagation tile on the fly
from cumulative log-products of the transitions (zeros and signs counted separately, so exact
zero and negative D-mode gates are served). The backward pass is not a kernel yet: it reruns the
chunked PyTorch form under autograd (``parallel.plstm_1d_chunked``).

Imported only when a call asks for the Triton back end.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .parallel import plstm_1d_chunked


@triton.jit
def plstm1d_fwd_kernel(Q, K_, V_, S, TR, M, D, O, T, scale,
                       H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                       BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < DK, o_v < DV
    o_i = tl.arange(0, BT)
    strictly_lower = o_i[:, None] > o_i[None, :]                      # [BT, BT]: j < i
    diagonal = o_i[:, None] == o_i[None, :]
    is_last = o_i == BT - 1
    state = tl.zeros([BK, BV], dtype=tl.float32)                      # [BK, BV]
    for c in range(0, tl.cdiv(T, BT)):
        o_t = c * BT + o_i
        m_t = o_t < T
        row = (i_b * T + o_t).to(tl.int64)                            # [BT]
        p_qk = row[:, None] * (H * DK) + i_h * DK + o_k[None, :]
        p_v = row[:, None] * (H * DV) + i_h * DV + o_v[None, :]
        p_g = row * H + i_h
        b_q = tl.load(Q + p_qk, mask=m_t[:, None] & m_k[None, :], other=0.0).to(tl.float32)  # [BT, BK]
        b_k = tl.load(K_ + p_qk, mask=m_t[:, None] & m_k[None, :], other=0.0).to(tl.float32)
        b_v = tl.load(V_ + p_v, mask=m_t[:, None] & m_v[None, :], other=0.0).to(tl.float32)  # [BT, BV]
        b_s = tl.load(S + p_g, mask=m_t, other=0.0).to(tl.float32)   # [BT]
        b_t = tl.load(TR + p_g, mask=m_t, other=1.0).to(tl.float32)
        b_m = tl.load(M + p_g, mask=m_t, other=0.0).to(tl.float32)
        b_d = tl.load(D + p_g, mask=m_t, other=0.0).to(tl.float32)
        zero = (b_t == 0.0).to(tl.int32)
        neg = (b_t < 0.0).to(tl.int32)
        log_t = tl.log(tl.where(zero == 1, 1.0, tl.abs(b_t)))         # log|t|, 0 where t == 0
        cl, cz, cn = tl.cumsum(log_t, 0), tl.cumsum(zero, 0), tl.cumsum(neg, 0)
        clx, czx, cnx = cl - log_t, cz - zero, cn - neg                # exclusive: steps < i
        # what node i reads of node j's write (j < i): prod_{j < l < i} t_l
        live = strictly_lower & (czx[:, None] == cz[None, :])
        sign = 1.0 - 2.0 * ((cnx[:, None] - cn[None, :]) & 1).to(tl.float32)
        prop = tl.where(live, sign * tl.exp(clx[:, None] - cl[None, :]), 0.0)
        gate = b_m[:, None] * prop * b_s[None, :] + tl.where(diagonal, b_d[:, None], 0.0)
        scores = tl.dot(b_q, tl.trans(b_k), input_precision="ieee") * scale * gate
        b_o = tl.dot(scores, b_v, input_precision="ieee")
        # the chunk's entering state, carried to node i: prod_{l < i} t_l
        enter = tl.where(czx == 0, (1.0 - 2.0 * (cnx & 1).to(tl.float32)) * tl.exp(clx), 0.0)
        b_o += (scale * b_m * enter)[:, None] * tl.dot(b_q, state, input_precision="ieee")
        tl.store(O + p_v, b_o.to(O.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])
        # state leaving the chunk: prod of all its t times the old one, plus every write carried on
        cl_end = tl.sum(tl.where(is_last, cl, 0.0), 0)
        cz_end = tl.sum(tl.where(is_last, cz, 0), 0)
        cn_end = tl.sum(tl.where(is_last, cn, 0), 0)
        total = tl.where(cz_end == 0, (1.0 - 2.0 * (cn_end & 1).to(tl.float32)) * tl.exp(cl_end), 0.0)
        carry = tl.where(cz == cz_end, (1.0 - 2.0 * ((cn_end - cn) & 1).to(tl.float32))
                         * tl.exp(cl_end - cl), 0.0) * b_s
        state = total * state + tl.dot(tl.trans(b_k * carry[:, None]), b_v, input_precision="ieee")


def _pow2(n, low=16):
    return max(low, triton.next_power_of_2(n))


def plstm_1d_triton_fwd(q, k, v, source, transition, mark, direct, scale, chunk):
    """Launch the forward kernel; tensors as ``plstm_1d`` (q, k, v any float dtype, gates fp32+)."""
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    gates = [g.contiguous() for g in (source, transition, mark, direct)]
    o = torch.empty(B, T, H, DV, device=q.device, dtype=q.dtype)
    BT, BK, BV = _pow2(chunk), _pow2(DK), min(_pow2(DV), 64)
    grid = (triton.cdiv(DV, BV), B * H)
    plstm1d_fwd_kernel[grid](q, k, v, *gates, o, T, scale, H=H, DK=DK, DV=DV, BT=BT, BK=BK, BV=BV)
    return o


class PLSTM1DTriton(torch.autograd.Function):
    """Forward: the Triton kernel. Backward: autograd through the chunked PyTorch form."""

    @staticmethod
    def forward(ctx, q, k, v, source, transition, mark, direct, scale, chunk):
        ctx.save_for_backward(q, k, v, source, transition, mark, direct)
        ctx.scale, ctx.chunk = scale, chunk
        return plstm_1d_triton_fwd(q, k, v, source, transition, mark, direct, scale, chunk)

    @staticmethod
    def backward(ctx, do):
        inputs = [t.detach().requires_grad_() for t in ctx.saved_tensors]
        with torch.enable_grad():
            compute = torch.float64 if inputs[0].dtype == torch.float64 else torch.float32
            o = plstm_1d_chunked(*(t.to(compute) for t in inputs), scale=ctx.scale, chunk=ctx.chunk)
            grads = torch.autograd.grad(o, inputs, do.to(o.dtype), allow_unused=True, materialize_grads=True)
        return (*grads, None, None)
