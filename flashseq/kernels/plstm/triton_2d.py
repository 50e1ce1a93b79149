"""Triton forward of ``plstm_2d`` and the tile coefficient sweep its backward shares.

One program per (V block, batch row x head) visits the grid's BX x BY tiles in order (x tiles
outer, y tiles inner). For each tile it builds the tile's propagation coefficients on the fly by
sweeping the tile's BX columns (the same algebra as ``parallel.py``): in column a the d edges
are a line recurrence along y, solved from cumulative log-products of the t_du gates (zeros and
signs counted apart, ``triton_1d._products``), and the r edges then follow pointwise. That
gives, over the tile's inputs (its BY + BX entering edge states and its BX * BY sources), every
node's mark read (``MB`` boundary part [NP, NB], ``MS`` source part [NP, NP]) and every leaving
edge (``LB`` [NB, NB], ``LS`` [NB, NP]). Never is an [N, N] matrix formed.

Register budget (the planned tile must not spill; ``plan.py`` models it): the sweep writes each
column's coefficient rows straight to a per-program global slab (``CF``, [NP + NB, NB + NP]
fp32, L1/L2-resident) instead of accumulating [NP, NP] blocks in registers through selection
products, and the later steps read them back as whole tl.dot operands. q k^T goes BK (<= 32)
columns of K at a time. Edge states ([K, V] fp32 each) live in a per-program scratch slab in
global memory: one slot per grid row y for the r edge crossing into the current tile column,
and BX slots for the d edges crossing into the current tile from above. A tile reads its
entering states and overwrites them with its leaving ones one K row at a time ([NB, BV]
blocks), so nothing live scales with K. All products accumulate in fp32; tl.dot runs "ieee"
for fp32 inputs and "tf32" for bf16/fp16 ones (bf16 values are exact in tf32).

The backward kernel is in ``triton_2d_bwd.py``; for it the forward can keep every tile's
BX + BY entering states (``keep_states``). Imported only when a call asks for the Triton back
end.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_1d import _products


@triton.jit
def _mm(a, b, M: tl.constexpr, KK: tl.constexpr, N: tl.constexpr, PREC: tl.constexpr):
    """[M, KK] x [KK, N], fp32 accumulation: tl.dot (precision PREC) where every side is >= 16
    (its minimum), else a broadcast product and sum (small tiles; the plan keeps GPU tiles off
    this path)."""
    if M >= 16 and KK >= 16 and N >= 16:
        out = tl.dot(a, b, input_precision=PREC)
    else:
        out = tl.sum(a[:, :, None] * b[None, :, :], 1)
    return out


@triton.jit
def tile_coefficient_sweep(cf, SR, SD, TRL, TRU, TDL, TDU, ML, MU, i_b, i_h, ti, tj, X, Y,
                           H: tl.constexpr, BX: tl.constexpr, BY: tl.constexpr,
                           NP: tl.constexpr, NB: tl.constexpr, PREC: tl.constexpr):
    """Write tile (ti, tj)'s coefficients to the slab ``cf`` ([NP + NB, NB + NP] fp32): rows
    p < BX*BY the mark reads of node p (NB boundary columns MB, then NP source columns MS), rows
    NP + e the leaving edges (LB, LS); the rows and columns past BX*BY / BX+BY stay unwritten
    (readers mask them). The forward and the backward kernel share it."""
    o_b = tl.arange(0, BY)
    o_i = tl.arange(0, NB)
    o_p = tl.arange(0, NP)
    CW: tl.constexpr = NB + NP
    left_b = (o_b[:, None] == o_i[None, :]).to(tl.float32)               # [BY, NB]
    left_s = tl.zeros([BY, NP], dtype=tl.float32)
    for a in range(0, BX):
        x_a = ti * BX + a
        y_a = tj * BY + o_b
        m_g = (y_a < Y) & (x_a < X)
        p_g = ((i_b * X + x_a) * Y + y_a).to(tl.int64) * H + i_h
        s_r = tl.load(SR + p_g, mask=m_g, other=0.0)
        s_d = tl.load(SD + p_g, mask=m_g, other=0.0)
        t_rl = tl.load(TRL + p_g, mask=m_g, other=0.0)
        t_ru = tl.load(TRU + p_g, mask=m_g, other=0.0)
        t_dl = tl.load(TDL + p_g, mask=m_g, other=0.0)
        t_du = tl.load(TDU + p_g, mask=m_g, other=0.0)
        m_l = tl.load(ML + p_g, mask=m_g, other=0.0)
        m_u = tl.load(MU + p_g, mask=m_g, other=0.0)
        unit = (o_p[None, :] == a * BY + o_b[:, None]).to(tl.float32)   # [BY, NP]
        top_b = (o_i == BY + a).to(tl.float32)                          # [NB]
        # d edges of column a: D_b = t_du[b] D_{b-1} + drive_b, D_{-1} = the top edge
        drive_b = t_dl[:, None] * left_b
        drive_s = t_dl[:, None] * left_s + s_d[:, None] * unit
        prop, enter, carry, total = _products(t_du, o_b, BY)
        up_b = _mm(prop, drive_b, BY, BY, NB, PREC) + enter[:, None] * top_b[None, :]
        up_s = _mm(prop, drive_s, BY, BY, NP, PREC)                          # u edges in
        bot_b = tl.sum(carry[:, None] * drive_b, 0) + total * top_b     # D_{BY-1}
        bot_s = tl.sum(carry[:, None] * drive_s, 0)
        # rows a * BY + b of the mark reads and row NP + BY + a (the d edge leaving
        # through the bottom) of the leaving edges, straight to the coefficient slab
        c_row = cf + (a * BY + o_b)[:, None] * CW
        tl.store(c_row + o_i[None, :], m_l[:, None] * left_b + m_u[:, None] * up_b)
        tl.store(c_row + NB + o_p[None, :], m_l[:, None] * left_s + m_u[:, None] * up_s)
        tl.store(cf + (NP + BY + a) * CW + o_i, bot_b)
        tl.store(cf + (NP + BY + a) * CW + NB + o_p, bot_s)
        left_b = t_rl[:, None] * left_b + t_ru[:, None] * up_b
        left_s = t_rl[:, None] * left_s + t_ru[:, None] * up_s + s_r[:, None] * unit
    c_row = cf + (NP + o_b)[:, None] * CW                               # r edges out
    tl.store(c_row + o_i[None, :], left_b)
    tl.store(c_row + NB + o_p[None, :], left_s)


@triton.jit
def plstm2d_fwd_kernel(Q, K_, V_, SR, SD, TRL, TRU, TDL, TDU, ML, MU, D, O, SCR, CF, STATES,
                       X, Y, NX, NY, scale,
                       H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                       BX: tl.constexpr, BY: tl.constexpr, NP: tl.constexpr, NB: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
                       STORE_STATES: tl.constexpr):
    """Q, K_ [B, X, Y, H, DK]; V_, O [B, X, Y, H, DV]; the nine gates [B, X, Y, H] fp32;
    SCR [B*H, NY*BY + BX, DK, DV] fp32, any content (the edge-state slots, see the module
    docstring; the kernel zeroes its own); CF ``coef_shape`` fp32, any content (the coefficient
    slab; every entry read is written first). BK: K columns per q k^T step; PREC: tl.dot
    precision. STORE_STATES: write every tile's BX + BY entering states to STATES
    [B*H, NX*NY, BX+BY, DK, DV] fp32 (for the backward kernel).
    NP >= BX*BY and NB >= BX+BY are powers of two >= 16 (tl.dot's minimum)."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_i = tl.arange(0, NB)                   # tile inputs: BY left (r) edges, then BX top (d)
    o_p = tl.arange(0, NP)                   # tile nodes, p = a * BY + b
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < DV
    nb = BX + BY
    YP = NY * BY
    base = i_bh.to(tl.int64) * (YP + BX) * DK * DV
    CW: tl.constexpr = NB + NP               # a coefficient row: NB boundary, NP source columns
    cf = CF + (i_bh * tl.num_programs(0) + i_v).to(tl.int64) * (NP + NB) * CW
    zeros_iv = tl.zeros([NB, BV], dtype=tl.float32)
    for yy in range(0, YP, NB):              # nothing enters the first column of tiles
        for kr in range(0, DK):
            tl.store(SCR + base + (yy + o_i)[:, None] * (DK * DV) + kr * DV + o_v[None, :],
                     zeros_iv, mask=(yy + o_i < YP)[:, None] & m_v[None, :])
    for ti in range(0, NX):
        for kr in range(0, DK):              # nor the top row of tiles
            tl.store(SCR + base + (YP + o_i)[:, None] * (DK * DV) + kr * DV + o_v[None, :],
                     zeros_iv, mask=(o_i < BX)[:, None] & m_v[None, :])
        tl.debug_barrier()
        for tj in range(0, NY):
            x_p = ti * BX + o_p // BY
            y_p = tj * BY + o_p % BY
            m_p = (o_p < BX * BY) & (x_p < X) & (y_p < Y)
            row_p = ((i_b * X + x_p) * Y + y_p).to(tl.int64)
            tile_coefficient_sweep(cf, SR, SD, TRL, TRU, TDL, TDU, ML, MU, i_b, i_h, ti, tj, X, Y,
                                   H, BX, BY, NP, NB, PREC)
            tl.debug_barrier()               # the coefficients are read back in other layouts
            m_row = (o_p < BX * BY)[:, None]
            MS = tl.load(cf + o_p[:, None] * CW + NB + o_p[None, :], mask=m_row, other=0.0)
            # --- outputs: within the tile, then what the entering states give ----------------
            m_pv = m_p[:, None] & m_v[None, :]
            p_v = row_p[:, None] * (H * DV) + i_h * DV + o_v[None, :]
            b_v = tl.load(V_ + p_v, mask=m_pv, other=0.0).to(tl.float32)          # [NP, BV]
            b_d = tl.load(D + row_p * H + i_h, mask=m_p, other=0.0)              # [NP]
            qk = tl.zeros([NP, NP], dtype=tl.float32)
            for kc in range(0, DK, BK):      # q k^T, BK columns of K at a time
                p_qk = row_p[:, None] * (H * DK) + i_h * DK + kc + o_k[None, :]
                m_pk = m_p[:, None] & (kc + o_k < DK)[None, :]
                b_q = tl.load(Q + p_qk, mask=m_pk, other=0.0).to(tl.float32)    # [NP, BK]
                b_k = tl.load(K_ + p_qk, mask=m_pk, other=0.0).to(tl.float32)
                qk += _mm(b_q, tl.trans(b_k), NP, BK, NP, PREC)
            qk *= scale                                                          # [NP, NP]
            scores = qk * (MS + tl.where(o_p[:, None] == o_p[None, :], b_d[:, None], 0.0))
            b_o = tl.dot(scores, b_v, input_precision=PREC)                     # [NP, BV]
            m_lv = (o_i < nb)[:, None]
            slot_i = tl.where(o_i < BY, tj * BY + o_i, YP + o_i - BY).to(tl.int64)
            p_c = base + slot_i[:, None] * (DK * DV) + o_v[None, :]
            m_c = (o_i < nb)[:, None] & m_v[None, :]
            p_col = row_p * (H * DK) + i_h * DK
            # one K row of every entering state at a time: [NB, BV] blocks and tl.dot shapes,
            # nothing of size K kept live (the row is read, then overwritten by the leaving one);
            # MB, LB, LS are re-read from the slab (cache hits) rather than pinned in registers
            p_st = ((i_bh * NX + ti) * NY + tj).to(tl.int64) * (nb * DK * DV) + \
                o_i[:, None] * (DK * DV) + o_v[None, :]
            for kr in range(0, DK):
                c_in = tl.load(SCR + p_c + kr * DV, mask=m_c, other=0.0)              # [NB, BV]
                if STORE_STATES:
                    tl.store(STATES + p_st + kr * DV, c_in, mask=m_c)
                MB = tl.load(cf + o_p[:, None] * CW + o_i[None, :], mask=m_row, other=0.0)
                LB = tl.load(cf + (NP + o_i)[:, None] * CW + o_i[None, :], mask=m_lv, other=0.0)
                LS = tl.load(cf + (NP + o_i)[:, None] * CW + NB + o_p[None, :], mask=m_lv,
                             other=0.0)
                q_c = tl.load(Q + p_col + kr, mask=m_p, other=0.0).to(tl.float32)    # [NP]
                k_c = tl.load(K_ + p_col + kr, mask=m_p, other=0.0).to(tl.float32)
                b_o += _mm(MB * (scale * q_c)[:, None], c_in, NP, NB, BV, PREC)
                c_out = (_mm(LB, c_in, NB, NB, BV, PREC)
                         + _mm(LS, k_c[:, None] * b_v, NB, NP, BV, PREC))
                tl.debug_barrier()           # every read of this K row precedes the overwrite
                tl.store(SCR + p_c + kr * DV, c_out, mask=m_c)
            tl.debug_barrier()               # the next tile reads what this one wrote
            tl.store(O + p_v, b_o.to(O.dtype.element_ty), mask=m_pv)


def _pow2(n, low=1):
    return max(low, triton.next_power_of_2(n))


def kernel_meta(tile, DK, DV, BV=None, dtype=torch.float32):
    """Compile-time sizes of the kernel for a (BX, BY) tile (rounded up to powers of two), head
    dims DK, DV and q's dtype: dict of BX, BY, NP, NB, BK (the K columns of one q k^T step),
    BV, PREC (tl.dot precision: "ieee" for fp32 inputs, "tf32" for 16-bit ones, whose
    tolerance it meets)."""
    BX, BY = _pow2(tile[0]), _pow2(tile[1], 2)
    NB = _pow2(BX + BY, 16)
    BV = BV or min(_pow2(DV, 16), 32)
    return dict(BX=BX, BY=BY, NP=_pow2(BX * BY, 16), NB=NB, BK=min(_pow2(DK, 16), 32), BV=BV,
                PREC="ieee" if dtype == torch.float32 else "tf32")


def coef_shape(meta, batch_heads, DV):
    """Shape of the coefficient slab (fp32, one [NP + NB, NB + NP] block per program)."""
    NP, NB = meta["NP"], meta["NB"]
    return (triton.cdiv(DV, meta["BV"]) * batch_heads, NP + NB, NB + NP)


def split_gates(source, transition, mark, direct):
    """The nine per-node gates the kernels read, each [B, X, Y, H] fp32 contiguous: s_r, s_d,
    t_rl, t_ru, t_dl, t_du, m_l, m_u, direct."""
    return [g.float().contiguous() for g in (
        source[..., 0], source[..., 1], transition[..., 0, 0], transition[..., 0, 1],
        transition[..., 1, 0], transition[..., 1, 1], mark[..., 0], mark[..., 1], direct)]


def plstm_2d_triton_fwd(q, k, v, source, transition, mark, direct, scale, tile, BV=None,
                        num_warps=8, out=None, scratch=None, coef=None, keep_states=False):
    """Launch the forward kernel; tensors as ``plstm_2d``. Returns o [B, X, Y, H, V], q's
    dtype, or (o, states) with ``keep_states``: states [B*H, NX*NY, BX+BY, K, V] fp32, every
    tile's entering edge states (for ``triton_2d_bwd``). ``tile`` is (BX, BY), rounded up to
    powers of two here; BV defaults as ``kernel_meta``. ``out``, ``scratch`` (fp32
    [B*H, cdiv(Y, BY) BY + BX, K, V]) and ``coef`` (fp32, ``coef_shape``) may be given
    (contiguous, any content: tests poison them); else they are allocated."""
    B, X, Y, H, DK = q.shape
    DV = v.shape[-1]
    meta = kernel_meta(tile, DK, DV, BV=BV, dtype=q.dtype)
    BX, BY, BV = meta["BX"], meta["BY"], meta["BV"]
    NX, NY = triton.cdiv(X, BX), triton.cdiv(Y, BY)
    gates = split_gates(source, transition, mark, direct)
    o = torch.empty(B, X, Y, H, DV, device=q.device, dtype=q.dtype) if out is None else out
    if scratch is None:
        scratch = torch.empty(B * H, NY * BY + BX, DK, DV, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(DV, BV), B * H)
    if coef is None:
        coef = torch.empty(coef_shape(meta, B * H, DV), device=q.device, dtype=torch.float32)
    states = (torch.empty(B * H, NX * NY, BX + BY, DK, DV, device=q.device, dtype=torch.float32)
              if keep_states else scratch)
    plstm2d_fwd_kernel[grid](q.contiguous(), k.contiguous(), v.contiguous(), *gates, o, scratch,
                             coef, states, X, Y, NX, NY, scale, H=H, DK=DK, DV=DV,
                             STORE_STATES=keep_states, num_warps=num_warps, **meta)
    return (o, states) if keep_states else o


class PLSTM2DTriton(torch.autograd.Function):
    """Triton forward and backward (``triton_2d_bwd``); the forward keeps every tile's entering
    edge states for the backward when a gradient is needed."""

    @staticmethod
    def forward(ctx, q, k, v, source, transition, mark, direct, scale, tile, launch):
        keep = any(ctx.needs_input_grad[:7])
        out = plstm_2d_triton_fwd(q, k, v, source, transition, mark, direct, scale, tile,
                                  keep_states=keep, **launch)
        o, states = out if keep else (out, None)
        ctx.save_for_backward(q, k, v, source, transition, mark, direct, states)
        ctx.scale, ctx.tile, ctx.launch = scale, tile, launch
        return o

    @staticmethod
    def backward(ctx, do):
        from .triton_2d_bwd import plstm_2d_triton_bwd
        *inputs, states = ctx.saved_tensors
        grads = plstm_2d_triton_bwd(*inputs, do, states, ctx.scale, ctx.tile, **ctx.launch)
        # dq, dk, dv, dsource, dtransition, dmark, ddirect; scale, tile, launch
        return (*grads, None, None, None)
