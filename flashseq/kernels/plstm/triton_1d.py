"""Triton forward of ``plstm_1d``: one program per (V block, batch row x head) walks the chunks,
keeping its fp32 [K, BV] state in registers and building each chunk's propagation tile on the fly
from cumulative log-products of the transitions (zeros and signs counted separately, so exact
zero and negative D-mode gates are served); it keeps each chunk's entering state for the
backward kernel, which walks the chunks in reverse with the state's gradient (one program per
batch row x head, whole K and V). Exact-zero transitions take the PyTorch backward instead.

Imported only when a call asks for the Triton back end.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .parallel import plstm_1d_chunked


@triton.jit
def _products(b_t, o_i, BT: tl.constexpr):
    """Per chunk: prop [BT, BT] (prod_{j<l<i} t_l for j < i), enter [BT] (prod_{l<i} t_l),
    carry [BT] (prod_{j<l<BT} t_l) and total (prod_l t_l), from cumulative log|t| with the zeros
    and negative signs counted apart."""
    zero = (b_t == 0.0).to(tl.int32)
    neg = (b_t < 0.0).to(tl.int32)
    log_t = tl.log(tl.where(zero == 1, 1.0, tl.abs(b_t)))
    cl, cz, cn = tl.cumsum(log_t, 0), tl.cumsum(zero, 0), tl.cumsum(neg, 0)
    clx, czx, cnx = cl - log_t, cz - zero, cn - neg
    live = (o_i[:, None] > o_i[None, :]) & (czx[:, None] == cz[None, :])
    sign = 1.0 - 2.0 * ((cnx[:, None] - cn[None, :]) & 1).to(tl.float32)
    prop = tl.where(live, sign * tl.exp(clx[:, None] - cl[None, :]), 0.0)
    enter = tl.where(czx == 0, (1.0 - 2.0 * (cnx & 1).to(tl.float32)) * tl.exp(clx), 0.0)
    is_last = o_i == BT - 1
    cl_end = tl.sum(tl.where(is_last, cl, 0.0), 0)
    cz_end = tl.sum(tl.where(is_last, cz, 0), 0)
    cn_end = tl.sum(tl.where(is_last, cn, 0), 0)
    total = tl.where(cz_end == 0, (1.0 - 2.0 * (cn_end & 1).to(tl.float32)) * tl.exp(cl_end), 0.0)
    carry = tl.where(cz == cz_end, (1.0 - 2.0 * ((cn_end - cn) & 1).to(tl.float32))
                     * tl.exp(cl_end - cl), 0.0)
    return prop, enter, carry, total


@triton.jit
def plstm1d_fwd_kernel(Q, K_, V_, S, TR, M, D, O, STATES, T, NC, scale,
                       H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                       BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       STORE_STATES: tl.constexpr):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < DK, o_v < DV
    o_i = tl.arange(0, BT)
    diagonal = o_i[:, None] == o_i[None, :]
    state = tl.zeros([BK, BV], dtype=tl.float32)                      # [BK, BV]
    for c in range(0, NC):
        if STORE_STATES:   # [B*H, NC, DK, DV]: the state entering chunk c, for the backward pass
            p_st = (i_bh.to(tl.int64) * NC + c) * (DK * DV) + o_k[:, None] * DV + o_v[None, :]
            tl.store(STATES + p_st, state, mask=m_k[:, None] & m_v[None, :])
        o_t = c * BT + o_i
        m_t = o_t < T
        row = (i_b * T + o_t).to(tl.int64)                            # [BT]
        p_qk = row[:, None] * (H * DK) + i_h * DK + o_k[None, :]
        p_v = row[:, None] * (H * DV) + i_h * DV + o_v[None, :]
        p_g = row * H + i_h
        m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
        b_q = tl.load(Q + p_qk, mask=m_tk, other=0.0).to(tl.float32)   # [BT, BK]
        b_k = tl.load(K_ + p_qk, mask=m_tk, other=0.0).to(tl.float32)
        b_v = tl.load(V_ + p_v, mask=m_tv, other=0.0).to(tl.float32)   # [BT, BV]
        b_s = tl.load(S + p_g, mask=m_t, other=0.0).to(tl.float32)   # [BT]
        b_t = tl.load(TR + p_g, mask=m_t, other=1.0).to(tl.float32)
        b_m = tl.load(M + p_g, mask=m_t, other=0.0).to(tl.float32)
        b_d = tl.load(D + p_g, mask=m_t, other=0.0).to(tl.float32)
        # prop[i, j]: what node i reads of node j's write; enter[i]: of the entering state
        prop, enter, carry, total = _products(b_t, o_i, BT)
        gate = b_m[:, None] * prop * b_s[None, :] + tl.where(diagonal, b_d[:, None], 0.0)
        scores = tl.dot(b_q, tl.trans(b_k), input_precision="ieee") * scale * gate
        b_o = tl.dot(scores, b_v, input_precision="ieee")
        b_o += (scale * b_m * enter)[:, None] * tl.dot(b_q, state, input_precision="ieee")
        tl.store(O + p_v, b_o.to(O.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])
        # state leaving the chunk: prod of all its t times the old one, plus every write carried on
        state = total * state + tl.dot(tl.trans(b_k * (carry * b_s)[:, None]), b_v,
                                       input_precision="ieee")


@triton.jit
def plstm1d_bwd_kernel(Q, K_, V_, S, TR, M, D, DO, STATES, DQ, DK_, DV_, DS, DT, DM, DD,
                       T, NC, scale,
                       H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                       BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """One program per batch row x head walks the chunks backwards with dC, the gradient of the
    state leaving the chunk. Transition gradients come as t_l dt_l (every product's gradient
    times the product, summed over the products containing t_l), then divided by t_l: the host
    sends exact-zero transitions to the PyTorch backward instead."""
    i_bh = tl.program_id(0)
    i_b, i_h = i_bh // H, i_bh % H
    o_k, o_v, o_i = tl.arange(0, BK), tl.arange(0, BV), tl.arange(0, BT)
    m_k, m_v = o_k < DK, o_v < DV
    m_kv = m_k[:, None] & m_v[None, :]
    diagonal = o_i[:, None] == o_i[None, :]
    before = (o_i[:, None] < o_i[None, :]).to(tl.float32)             # [j, l]: j < l
    d_state = tl.zeros([BK, BV], dtype=tl.float32)                    # dC of the leaving state
    for cc in range(0, NC):
        c = NC - 1 - cc
        o_t = c * BT + o_i
        m_t = o_t < T
        row = (i_b * T + o_t).to(tl.int64)
        p_qk = row[:, None] * (H * DK) + i_h * DK + o_k[None, :]
        p_v = row[:, None] * (H * DV) + i_h * DV + o_v[None, :]
        p_g = row * H + i_h
        m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
        b_q = tl.load(Q + p_qk, mask=m_tk, other=0.0).to(tl.float32)
        b_k = tl.load(K_ + p_qk, mask=m_tk, other=0.0).to(tl.float32)
        b_v = tl.load(V_ + p_v, mask=m_tv, other=0.0).to(tl.float32)
        b_do = tl.load(DO + p_v, mask=m_tv, other=0.0).to(tl.float32)
        b_s = tl.load(S + p_g, mask=m_t, other=0.0).to(tl.float32)
        b_t = tl.load(TR + p_g, mask=m_t, other=1.0).to(tl.float32)
        b_m = tl.load(M + p_g, mask=m_t, other=0.0).to(tl.float32)
        b_d = tl.load(D + p_g, mask=m_t, other=0.0).to(tl.float32)
        p_st = (i_bh.to(tl.int64) * NC + c) * (DK * DV) + o_k[:, None] * DV + o_v[None, :]
        c_in = tl.load(STATES + p_st, mask=m_kv, other=0.0)            # [BK, BV]
        prop, enter, carry, total = _products(b_t, o_i, BT)
        qk = tl.dot(b_q, tl.trans(b_k), input_precision="ieee") * scale           # [BT, BT]
        gate = b_m[:, None] * prop * b_s[None, :] + tl.where(diagonal, b_d[:, None], 0.0)
        d_scores = tl.dot(b_do, tl.trans(b_v), input_precision="ieee")            # dA [BT, BT]
        d_gate = d_scores * qk
        w = carry * b_s
        k_dc = tl.dot(b_k, d_state, input_precision="ieee")                       # [BT, BV]
        dc_v = tl.dot(b_v, tl.trans(d_state), input_precision="ieee")             # [BT, BK]
        q_c = tl.dot(b_q, c_in, input_precision="ieee")                           # [BT, BV]
        read = scale * b_m * enter                                                # [BT]
        b_dv = tl.dot(tl.trans(qk * gate), b_do, input_precision="ieee") + w[:, None] * k_dc
        b_dq = tl.dot(d_scores * gate, b_k, input_precision="ieee") * scale \
            + read[:, None] * tl.dot(b_do, tl.trans(c_in), input_precision="ieee")
        b_dk = tl.dot(tl.trans(d_scores * gate), b_q, input_precision="ieee") * scale \
            + w[:, None] * dc_v
        d_prop = d_gate * b_m[:, None] * b_s[None, :]
        b_dd = tl.sum(tl.where(diagonal, d_gate, 0.0), 1)
        b_dm = tl.sum(d_gate * prop * b_s[None, :], 1) + scale * enter * tl.sum(b_do * q_c, 1)
        d_carry = tl.sum(k_dc * b_v, 1)                                           # k_j^T dC v_j
        b_ds = tl.sum(d_gate * b_m[:, None] * prop, 0) + carry * d_carry
        d_enter = scale * b_m * tl.sum(b_do * q_c, 1)
        d_total = tl.sum(tl.sum(d_state * c_in, 1), 0)
        # t_l dt_l: products over j < l < i (prop), l < i (enter), j < l (carry), all l (total)
        f = d_prop * prop
        r_prop = tl.sum(tl.where(o_i[:, None] > o_i[None, :],
                                 tl.dot(f, before, input_precision="ieee"), 0.0), 0)
        r_enter = tl.sum(tl.where(o_i[:, None] > o_i[None, :], (d_enter * enter)[:, None], 0.0), 0)
        r_carry = tl.sum(before * (d_carry * b_s * carry)[:, None], 0)
        r = r_prop + r_enter + r_carry + d_total * total
        b_dt = r / tl.where(b_t == 0.0, 1.0, b_t)
        tl.store(DQ + p_qk, b_dq, mask=m_tk)
        tl.store(DK_ + p_qk, b_dk, mask=m_tk)
        tl.store(DV_ + p_v, b_dv, mask=m_tv)
        tl.store(DS + p_g, b_ds, mask=m_t)
        tl.store(DT + p_g, b_dt, mask=m_t)
        tl.store(DM + p_g, b_dm, mask=m_t)
        tl.store(DD + p_g, b_dd, mask=m_t)
        # dC entering this chunk: through the carried state and every node's read of it
        d_state = total * d_state + tl.dot(tl.trans(b_q * read[:, None]), b_do,
                                           input_precision="ieee")


def _pow2(n, low=16):
    return max(low, triton.next_power_of_2(n))


def _tiles(chunk, DK, DV):
    return _pow2(chunk), _pow2(DK), _pow2(DV)


def plstm_1d_triton_fwd(q, k, v, source, transition, mark, direct, scale, chunk, keep_states):
    """Launch the forward kernel; tensors as ``plstm_1d`` (gates float32). Returns (o, states):
    states [B*H, NC, K, V] fp32, each chunk's entering state, or None unless keep_states."""
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    BT, BK, BV_full = _tiles(chunk, DK, DV)
    BV = min(BV_full, 64)
    NC = triton.cdiv(T, BT)
    o = torch.empty(B, T, H, DV, device=q.device, dtype=q.dtype)
    states = (torch.empty(B * H, NC, DK, DV, device=q.device, dtype=torch.float32)
              if keep_states else o)
    grid = (triton.cdiv(DV, BV), B * H)
    plstm1d_fwd_kernel[grid](q, k, v, source, transition, mark, direct, o, states, T, NC, scale,
                             H=H, DK=DK, DV=DV, BT=BT, BK=BK, BV=BV, STORE_STATES=keep_states)
    return o, (states if keep_states else None)


def plstm_1d_triton_bwd(q, k, v, source, transition, mark, direct, do, states, scale, chunk):
    """Launch the backward kernel: gradients of q, k, v (their dtype) and of the gates (fp32)."""
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    BT, BK, BV = _tiles(chunk, DK, DV)
    NC = triton.cdiv(T, BT)
    dq, dk = (torch.empty(B, T, H, DK, device=q.device, dtype=torch.float32) for _ in range(2))
    dv = torch.empty(B, T, H, DV, device=q.device, dtype=torch.float32)
    dgates = [torch.empty(B, T, H, device=q.device, dtype=torch.float32) for _ in range(4)]
    plstm1d_bwd_kernel[(B * H,)](q, k, v, source, transition, mark, direct, do.contiguous(), states,
                                 dq, dk, dv, *dgates, T, NC, scale,
                                 H=H, DK=DK, DV=DV, BT=BT, BK=BK, BV=BV)
    return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), *dgates)


class PLSTM1DTriton(torch.autograd.Function):
    """Triton forward and backward; exact-zero transitions (whose gradient the kernel's t dt / t
    cannot give) take the backward of the chunked PyTorch form instead. ``merge`` "sequential"
    (one program walks the chunks) or "tree" (``triton_1d_tree``: chunk-parallel programs and a
    log-depth scan of the chunk summaries); both feed the same backward kernel."""

    @staticmethod
    def forward(ctx, q, k, v, source, transition, mark, direct, scale, chunk, merge="sequential"):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        gates = [g.contiguous() for g in (source, transition, mark, direct)]
        if merge == "tree":
            from .triton_1d_tree import plstm_1d_triton_fwd_tree
            o, states = plstm_1d_triton_fwd_tree(q, k, v, *gates, scale, chunk)
        else:
            o, states = plstm_1d_triton_fwd(q, k, v, *gates, scale, chunk, keep_states=True)
        ctx.save_for_backward(q, k, v, *gates, states)
        ctx.scale, ctx.chunk = scale, chunk
        return o

    @staticmethod
    def backward(ctx, do):
        *inputs, states = ctx.saved_tensors
        # dq, dk, dv, dsource, dtransition, dmark, ddirect; scale, chunk, merge
        if not bool((inputs[4] != 0).all()):
            return (*_pytorch_backward(inputs, do, ctx.scale, ctx.chunk), None, None, None)
        grads = plstm_1d_triton_bwd(*inputs, do, states, ctx.scale, ctx.chunk)
        return (*grads, None, None, None)


def _pytorch_backward(inputs, do, scale, chunk):
    inputs = [t.detach().requires_grad_() for t in inputs]
    with torch.enable_grad():
        o = plstm_1d_chunked(*(t.float() for t in inputs), scale=scale, chunk=chunk)
        return torch.autograd.grad(o, inputs, do.to(o.dtype), allow_unused=True,
                                   materialize_grads=True)
