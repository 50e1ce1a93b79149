"""Triton forward of ``plstm_1d``: one program per (V block, batch row x head) walks the chunks,
keeping its fp32 [K, BV] state in registers and building each chunk's propagation tile on the fly
from cumulative log-products of the transitions (zeros and signs counted separately, so exact
zero and negative D-mode gates are served); it keeps each chunk's entering state for the
backward kernel, which walks the chunks in reverse with the state's gradient (one program per
V block x batch row x head, K walked in steps; the V blocks' partial gradients of q, k and the
gates are summed on the host). Exact-zero transitions take the PyTorch backward instead.
Tile sizes and warps: ``kernel_meta_1d``; chunk on CUDA: ``plan.plan_plstm_1d_triton``.

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
                       STORE_STATES: tl.constexpr, PREC: tl.constexpr):
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
        # 16-bit q, k are exact in tf32: q k^T's products are exact either way
        scores = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * scale * gate
        b_o = tl.dot(scores, b_v, input_precision=PREC)
        b_o += (scale * b_m * enter)[:, None] * tl.dot(b_q, state,
                                                       input_precision=PREC)
        tl.store(O + p_v, b_o.to(O.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])
        # state leaving the chunk: prod of all its t times the old one, plus every write carried on
        state = total * state + tl.dot(tl.trans(b_k * (carry * b_s)[:, None]),
                                       b_v, input_precision=PREC)


@triton.jit
def plstm1d_bwd_kernel(Q, K_, V_, S, TR, M, D, DO, STATES, DC, DQ, DK_, DV_, DS, DT, DM, DD,
                       T, NC, scale,
                       H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                       BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       BKK: tl.constexpr, PREC: tl.constexpr):
    """One program per (V block, batch row x head) walks the chunks backwards with its columns of
    dC, the gradient of the state leaving the chunk (dC's columns are independent), kept in
    DC [B*H, 2, DK, DV] fp32 (this chunk's and the next one's, alternating) and read BKK rows
    of K at a time with the matching columns of q, k and the entering state: no program holds
    more than [BT, BKK], [BKK, BV], [BT, BV] and [BT, BT] blocks. dv is the block's own; dq, dk
    and the gate gradients are sums over V, so each V block writes its partial sum into its
    own slot of DQ, DK_, DS, DT, DM, DD ([V blocks, ...], summed by the host). Transition
    gradients come as t_l dt_l (every product's gradient times the product, summed over the
    products containing t_l), then divided by t_l: the host sends exact-zero transitions to
    the PyTorch backward instead."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    rows = (tl.num_programs(1) // H).to(tl.int64) * T * H            # B * T * H
    DQ += i_v * rows * DK
    DK_ += i_v * rows * DK
    DS += i_v * rows
    DT += i_v * rows
    DM += i_v * rows
    DD += i_v * rows
    DC += i_bh.to(tl.int64) * 2 * DK * DV
    o_kk, o_i = tl.arange(0, BKK), tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < DV
    diagonal = o_i[:, None] == o_i[None, :]
    before = (o_i[:, None] < o_i[None, :]).to(tl.float32)             # [j, l]: j < l
    for k0 in range(0, DK, BKK):                                      # dC leaving the last chunk
        p_kv = (k0 + o_kk)[:, None] * DV + o_v[None, :]
        tl.store(DC + p_kv, tl.zeros([BKK, BV], dtype=tl.float32),
                 mask=((k0 + o_kk) < DK)[:, None] & m_v[None, :])
    tl.debug_barrier()
    for cc in range(0, NC):
        c = NC - 1 - cc
        dc_in = DC + (cc % 2) * (DK * DV)                             # dC leaving chunk c
        dc_out = DC + ((cc + 1) % 2) * (DK * DV)                      # dC entering it
        o_t = c * BT + o_i
        m_t = o_t < T
        row = (i_b * T + o_t).to(tl.int64)
        p_v = row[:, None] * (H * DV) + i_h * DV + o_v[None, :]
        p_g = row * H + i_h
        m_tv = m_t[:, None] & m_v[None, :]
        b_v = tl.load(V_ + p_v, mask=m_tv, other=0.0).to(tl.float32)
        b_do = tl.load(DO + p_v, mask=m_tv, other=0.0).to(tl.float32)
        b_s = tl.load(S + p_g, mask=m_t, other=0.0).to(tl.float32)
        b_t = tl.load(TR + p_g, mask=m_t, other=1.0).to(tl.float32)
        b_m = tl.load(M + p_g, mask=m_t, other=0.0).to(tl.float32)
        b_d = tl.load(D + p_g, mask=m_t, other=0.0).to(tl.float32)
        st = STATES + (i_bh.to(tl.int64) * NC + c) * (DK * DV)
        prop, enter, carry, total = _products(b_t, o_i, BT)
        qk = tl.zeros([BT, BT], dtype=tl.float32)
        for k0 in range(0, DK, BKK):
            p_qk = row[:, None] * (H * DK) + i_h * DK + (k0 + o_kk)[None, :]
            m_tk = m_t[:, None] & ((k0 + o_kk) < DK)[None, :]
            b_q = tl.load(Q + p_qk, mask=m_tk, other=0.0).to(tl.float32)
            b_k = tl.load(K_ + p_qk, mask=m_tk, other=0.0).to(tl.float32)
            qk += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
        qk *= scale                                                              # [BT, BT]
        gate = b_m[:, None] * prop * b_s[None, :] + tl.where(diagonal, b_d[:, None], 0.0)
        d_scores = tl.dot(b_do, tl.trans(b_v), input_precision=PREC)            # dA [BT, BT]
        dsg = d_scores * gate
        w = carry * b_s
        read = scale * b_m * enter                                                # [BT]
        k_dc = tl.zeros([BT, BV], dtype=tl.float32)                               # k dC
        q_c = tl.zeros([BT, BV], dtype=tl.float32)                                # q C_in
        d_total = 0.0
        for k0 in range(0, DK, BKK):
            p_qk = row[:, None] * (H * DK) + i_h * DK + (k0 + o_kk)[None, :]
            m_kk = (k0 + o_kk) < DK
            m_tk = m_t[:, None] & m_kk[None, :]
            p_kv = (k0 + o_kk)[:, None] * DV + o_v[None, :]
            m_kv = m_kk[:, None] & m_v[None, :]
            b_q = tl.load(Q + p_qk, mask=m_tk, other=0.0).to(tl.float32)           # [BT, BKK]
            b_k = tl.load(K_ + p_qk, mask=m_tk, other=0.0).to(tl.float32)
            c_in = tl.load(st + p_kv, mask=m_kv, other=0.0)                         # [BKK, BV]
            d_state = tl.load(dc_in + p_kv, mask=m_kv, other=0.0)
            k_dc += tl.dot(b_k, d_state, input_precision=PREC)
            q_c += tl.dot(b_q, c_in, input_precision=PREC)
            d_total += tl.sum(tl.sum(d_state * c_in, 1), 0)
            b_dq = tl.dot(dsg, b_k, input_precision=PREC) * scale \
                + read[:, None] * tl.dot(b_do, tl.trans(c_in), input_precision=PREC)
            tl.store(DQ + p_qk, b_dq, mask=m_tk)
            b_dk = tl.dot(tl.trans(dsg), b_q, input_precision=PREC) * scale \
                + w[:, None] * tl.dot(b_v, tl.trans(d_state), input_precision=PREC)
            tl.store(DK_ + p_qk, b_dk, mask=m_tk)
            # dC entering this chunk: through the carried state and every node's read of it
            d_enter_c = total * d_state + tl.dot(tl.trans(b_q * read[:, None]), b_do,
                                                 input_precision=PREC)
            tl.store(dc_out + p_kv, d_enter_c, mask=m_kv)
        b_dv = tl.dot(tl.trans(qk * gate), b_do, input_precision=PREC) + w[:, None] * k_dc
        tl.store(DV_ + p_v, b_dv, mask=m_tv)
        do_qc = tl.sum(b_do * q_c, 1)
        d_carry = tl.sum(k_dc * b_v, 1)                                           # k_j^T dC v_j
        d_gate = d_scores * qk
        d_prop = d_gate * b_m[:, None] * b_s[None, :]
        b_dd = tl.sum(tl.where(diagonal, d_gate, 0.0), 1)
        b_dm = tl.sum(d_gate * prop * b_s[None, :], 1) + scale * enter * do_qc
        b_ds = tl.sum(d_gate * b_m[:, None] * prop, 0) + carry * d_carry
        d_enter = scale * b_m * do_qc
        # t_l dt_l: products over j < l < i (prop), l < i (enter), j < l (carry), all l (total)
        f = d_prop * prop
        r_prop = tl.sum(tl.where(o_i[:, None] > o_i[None, :],
                                 tl.dot(f, before, input_precision=PREC), 0.0), 0)
        r_enter = tl.sum(tl.where(o_i[:, None] > o_i[None, :], (d_enter * enter)[:, None], 0.0), 0)
        r_carry = tl.sum(before * (d_carry * b_s * carry)[:, None], 0)
        r = r_prop + r_enter + r_carry + d_total * total
        b_dt = r / tl.where(b_t == 0.0, 1.0, b_t)
        tl.store(DS + p_g, b_ds, mask=m_t)
        tl.store(DT + p_g, b_dt, mask=m_t)
        tl.store(DM + p_g, b_dm, mask=m_t)
        tl.store(DD + p_g, b_dd, mask=m_t)
        tl.debug_barrier()      # the next chunk reads dc_out, written by other threads


def _pow2(n, low=16):
    return max(low, triton.next_power_of_2(n))


# Tiles of the 1D kernels on CUDA (tests/kernels/test_plstm_triton_compile.py compiles them for
# sm_80 and sm_90 and checks for spills): tl.dot picks one mma layout with every warp along the
# chunk's rows for a chain of products, so a chunk shorter than 16 rows per warp replicates its
# [BT, K or V] blocks in every warp. The forward kernels hold q, k [BT, K] and the state
# [K, BV]; the backward walks K BWD_BKK rows at a time (its dC in a global scratch), so nothing
# it holds scales with K. fp32 inputs run tl.dot "ieee", FMA loops without mma layouts (no
# replication), whose operands at K = 128 need 8 warps in the forward kernels (4: 80-264 B of
# stack); 16-bit inputs run tf32 mma at 4 warps. Measured on ptxas (triton 3.7, chunk 16): no
# spills for K = V = 64 and 128, bf16 and fp32, sm_80 and sm_90.
FWD_BV = 16
BWD_BV = 16
BWD_BKK = 16
NUM_WARPS_1D = 4
NUM_WARPS_1D_FWD_FP32 = 8


def kernel_meta_1d(chunk, DK, DV, dtype=torch.float32, backward=False):
    """Compile-time sizes and launch warps of the 1D kernels for a chunk, head dims DK, DV and
    q's dtype: dict of BT (chunk rounded up to a power of two >= 16), BK, BV (the V columns of
    one program), PREC (tl.dot precision of fp32 operands: "ieee" for fp32 inputs, "tf32" for
    16-bit ones, within their tolerance) and num_warps."""
    BT, BK, BV = _tiles(chunk, DK, DV)
    meta = dict(BT=BT, BK=BK, BV=min(BV, BWD_BV if backward else FWD_BV),
                PREC="ieee" if dtype == torch.float32 else "tf32",
                num_warps=(NUM_WARPS_1D_FWD_FP32 if dtype == torch.float32 and not backward
                           else NUM_WARPS_1D))
    if backward:
        meta["BKK"] = min(BK, BWD_BKK)
    return meta


def _tiles(chunk, DK, DV):
    return _pow2(chunk), _pow2(DK), _pow2(DV)


def plstm_1d_triton_fwd(q, k, v, source, transition, mark, direct, scale, chunk, keep_states):
    """Launch the forward kernel; tensors as ``plstm_1d`` (gates float32). Returns (o, states):
    states [B*H, NC, K, V] fp32, each chunk's entering state, or None unless keep_states."""
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    meta = kernel_meta_1d(chunk, DK, DV, q.dtype)
    NC = triton.cdiv(T, meta["BT"])
    o = torch.empty(B, T, H, DV, device=q.device, dtype=q.dtype)
    states = (torch.empty(B * H, NC, DK, DV, device=q.device, dtype=torch.float32)
              if keep_states else o)
    grid = (triton.cdiv(DV, meta["BV"]), B * H)
    plstm1d_fwd_kernel[grid](q, k, v, source, transition, mark, direct, o, states, T, NC, scale,
                             H=H, DK=DK, DV=DV, STORE_STATES=keep_states, **meta)
    return o, (states if keep_states else None)


def plstm_1d_triton_bwd(q, k, v, source, transition, mark, direct, do, states, scale, chunk):
    """Launch the backward kernel: gradients of q, k, v (their dtype) and of the gates (fp32)."""
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    meta = kernel_meta_1d(chunk, DK, DV, q.dtype, backward=True)
    NC = triton.cdiv(T, meta["BT"])
    n_v = triton.cdiv(DV, meta["BV"])
    dev, f32 = q.device, torch.float32
    dq, dk = (torch.empty(n_v, B, T, H, DK, device=dev, dtype=f32) for _ in range(2))
    dv = torch.empty(B, T, H, DV, device=dev, dtype=f32)
    dgates = [torch.empty(n_v, B, T, H, device=dev, dtype=f32) for _ in range(4)]
    d_state = torch.empty(B * H, 2, DK, DV, device=dev, dtype=f32)
    plstm1d_bwd_kernel[(n_v, B * H)](q, k, v, source, transition, mark, direct, do.contiguous(),
                                     states, d_state, dq, dk, dv, *dgates, T, NC, scale, H=H,
                                     DK=DK, DV=DV, **meta)
    # the V blocks' partial sums, added in a fixed order
    return (dq.sum(0).to(q.dtype), dk.sum(0).to(k.dtype), dv.to(v.dtype),
            *(g.sum(0) for g in dgates))


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
