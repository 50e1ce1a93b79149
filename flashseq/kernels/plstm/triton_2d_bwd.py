"""Triton backward of ``plstm_2d``: an adjoint walk over the grid's tiles, then every tile's
gradients in parallel.

Per tile (see ``triton_2d`` for the coefficient names) the forward computes

    o       = (scale q k^T * (MS + diag(d))) v + scale * sum_i MB[:, i] (q C_in[i])
    C_out   = LB C_in + LS (k v^T per node)

so the tile's adjoint, given do and dC_out (the gradients of the states leaving it), is

    dC_in   = LB^T dC_out + MB^T (scale q do^T)          (what flows back to the tiles before)
    dv      = (scale q k^T * G)^T do + sum_e LS[e, p] dC_out[e]^T k_p
    dq, dk  from q k^T's gradient and from the MB / LS terms; d(direct) = diag(dG)
    dMB, dMS, dLB, dLS: the gradients of the tile's coefficients.

Five launches, none holding more than a few [32, 32] fp32 blocks per program (one kernel doing
all of it spilled 176-1176 B of stack on sm_80/sm_90 at the planned tile):

1. ``plstm2d_coef_kernel``, one program per (tile, batch row x head): the forward's column
   sweep (``tile_coefficient_sweep``) writes every tile's coefficients to ``COEF``.
2. ``plstm2d_bwd_walk_kernel``, one program per (V block, batch row x head), visits the tiles in
   the reverse of the forward's order (x tiles outer, descending; y tiles inner, descending)
   carrying only the boundary adjoints dC ([K, V] fp32 each) in the forward's slot layout: a
   tile copies its leaving edges' dC to ``DCO`` (the same layout as the forward's ``states``)
   and overwrites the slots with its entering edges' dC, one K row at a time.
3. - 5. one program per (tile, V block, batch row x head) each, no sequential dependency:
   ``plstm2d_bwd_kernel`` the terms within the tile (q k^T and its gate: dv, the V block's
   partial dq, dk, d(direct), dMS; K walked BWD_BK columns at a time), then
   ``plstm2d_bwd_mark_kernel`` the mark reads of the entering states (the forward's
   ``keep_states``: dq's part, dMB) and ``plstm2d_bwd_leaving_kernel`` the leaving edges (from
   the entering states and ``DCO``: dv's and dk's parts, dLB, dLS), each adding to what the
   first wrote and accumulating its coefficient gradients in registers one K row at a time.

The host sums the V blocks' partial dq, dk, d(direct) and coefficient gradients in a fixed
order (deterministic), and turns the coefficient gradients into gate gradients by
differentiating ``parallel.tile_coefficients_2d`` (PyTorch autograd over all tiles at once: no
q, k, v and no sequential dependency, O(BX BY^2 (BX + BY + BX BY)) per tile). All products
accumulate in fp32. Imported only when a call asks for the Triton back end.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .parallel import tile_coefficients_2d
from .triton_2d import _mm, kernel_meta, split_gates, tile_coefficient_sweep

# Warps of the backward launches, (16-bit inputs, fp32 inputs), and the K columns of one q k^T
# step (tests/kernels/test_plstm_triton_compile.py compiles them for sm_80 and sm_90 at the
# planned tile and checks for spills). Measured on ptxas (triton 3.7, tile 2 x 16, BV 16,
# K = V = 64 and 128): no spills; the within-tile kernel in fp32 (tl.dot "ieee": FMA loops)
# needs 8 warps (4: 8-16 B of stack), in bf16 4 (8: 8 B on sm_90); BK 32 there took 205-255
# registers in bf16 (BK 16: 149-168).
NUM_WARPS_2D_BWD = {"plstm2d_coef_kernel": (4, 4), "plstm2d_bwd_walk_kernel": (4, 4),
                    "plstm2d_bwd_kernel": (4, 8), "plstm2d_bwd_mark_kernel": (4, 4),
                    "plstm2d_bwd_leaving_kernel": (4, 4)}
BWD_BK = 16


def bwd_meta(meta):
    """The backward's compile-time sizes from the forward's ``kernel_meta``: q k^T and its
    gradient BWD_BK columns of K at a time."""
    return {**meta, "BK": min(meta["BK"], BWD_BK)}


def bwd_num_warps(kernel_name, dtype):
    """Warps of one backward launch for q's dtype."""
    return NUM_WARPS_2D_BWD[kernel_name][dtype == torch.float32]


@triton.jit
def plstm2d_coef_kernel(SR, SD, TRL, TRU, TDL, TDU, ML, MU, COEF, X, Y, NX, NY,
                        H: tl.constexpr, BX: tl.constexpr, BY: tl.constexpr,
                        NP: tl.constexpr, NB: tl.constexpr, PREC: tl.constexpr):
    """Gates [B, X, Y, H] fp32; COEF [B*H, NX*NY, NP+NB, NB+NP] fp32 (any content; the rows
    and columns the readers mask stay unwritten): tile i_t's coefficient slab."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    cf = COEF + (i_bh * NX * NY + i_t).to(tl.int64) * ((NP + NB) * (NB + NP))
    tile_coefficient_sweep(cf, SR, SD, TRL, TRU, TDL, TDU, ML, MU, i_b, i_h, i_t // NY, i_t % NY,
                           X, Y, H, BX, BY, NP, NB, PREC)


@triton.jit
def plstm2d_bwd_walk_kernel(Q, DO, COEF, SCR, DCO, X, Y, NX, NY, scale,
                            H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                            BX: tl.constexpr, BY: tl.constexpr, NP: tl.constexpr,
                            NB: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """Q [B, X, Y, H, DK]; DO [B, X, Y, H, DV]; COEF as ``plstm2d_coef_kernel`` wrote it; SCR
    [B*H, NY*BY + BX, DK, DV] fp32, any content (the adjoint slots; zeroed here). Writes DCO
    [B*H, NX*NY, BX+BY, DK, DV] fp32: every tile's leaving edges' dC (r edges, then d edges)."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_i = tl.arange(0, NB)                   # leaving / entering edges: BY r, then BX d
    o_p = tl.arange(0, NP)                   # tile nodes, p = a * BY + b
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < DV
    nb = BX + BY
    YP = NY * BY
    base = i_bh.to(tl.int64) * (YP + BX) * DK * DV
    CW: tl.constexpr = NB + NP
    zeros_iv = tl.zeros([NB, BV], dtype=tl.float32)
    for yy in range(0, YP, NB):              # no dC comes back from beyond the last tile column
        for kr in range(0, DK):
            tl.store(SCR + base + (yy + o_i)[:, None] * (DK * DV) + kr * DV + o_v[None, :],
                     zeros_iv, mask=(yy + o_i < YP)[:, None] & m_v[None, :])
    m_pT = (o_p < BX * BY)[None, :]
    m_lT = (o_i < nb)[None, :]
    m_c = (o_i < nb)[:, None] & m_v[None, :]
    for tti in range(0, NX):
        ti = NX - 1 - tti
        for kr in range(0, DK):              # nor from below the last tile row
            tl.store(SCR + base + (YP + o_i)[:, None] * (DK * DV) + kr * DV + o_v[None, :],
                     zeros_iv, mask=(o_i < BX)[:, None] & m_v[None, :])
        tl.debug_barrier()
        for ttj in range(0, NY):
            tj = NY - 1 - ttj
            i_t = ti * NY + tj
            x_p = ti * BX + o_p // BY
            y_p = tj * BY + o_p % BY
            m_p = (o_p < BX * BY) & (x_p < X) & (y_p < Y)
            row_p = ((i_b * X + x_p) * Y + y_p).to(tl.int64)
            cf = COEF + (i_bh * NX * NY + i_t).to(tl.int64) * ((NP + NB) * CW)
            p_v = row_p[:, None] * (H * DV) + i_h * DV + o_v[None, :]
            b_do = tl.load(DO + p_v, mask=m_p[:, None] & m_v[None, :],
                           other=0.0).to(tl.float32)                             # [NP, BV]
            slot_i = tl.where(o_i < BY, tj * BY + o_i, YP + o_i - BY).to(tl.int64)
            p_c = base + slot_i[:, None] * (DK * DV) + o_v[None, :]
            p_out = ((i_bh * NX + ti) * NY + tj).to(tl.int64) * (nb * DK * DV) + \
                o_i[:, None] * (DK * DV) + o_v[None, :]
            p_col = row_p * (H * DK) + i_h * DK
            for kr in range(0, DK):
                dc_out = tl.load(SCR + p_c + kr * DV, mask=m_c, other=0.0)          # [NB, BV]
                tl.store(DCO + p_out + kr * DV, dc_out, mask=m_c)
                MBT = tl.load(cf + o_p[None, :] * CW + o_i[:, None], mask=m_pT, other=0.0)
                LBT = tl.load(cf + (NP + o_i)[None, :] * CW + o_i[:, None], mask=m_lT, other=0.0)
                q_c = tl.load(Q + p_col + kr, mask=m_p, other=0.0).to(tl.float32)    # [NP]
                dc_in = (_mm(LBT, dc_out, NB, NB, BV, PREC)
                         + _mm(MBT, (scale * q_c)[:, None] * b_do, NB, NP, BV, PREC))
                tl.debug_barrier()           # every read of this K row precedes the overwrite
                tl.store(SCR + p_c + kr * DV, dc_in, mask=m_c)
            tl.debug_barrier()               # the next tile reads the dC this one wrote


@triton.jit
def plstm2d_bwd_kernel(Q, K_, V_, D, DO, COEF, DQ, DK_, DV_, DD, DCF,
                       X, Y, NX, NY, scale,
                       H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                       BX: tl.constexpr, BY: tl.constexpr, NP: tl.constexpr, NB: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """The terms within a tile (q k^T and its gate). Q, K_ [B, X, Y, H, DK]; V_, DO
    [B, X, Y, H, DV]; D [B, X, Y, H] fp32; COEF as ``plstm2d_coef_kernel`` wrote it. Outputs,
    fp32: DQ, DK_ [B, X, Y, H, NVB, DK] (per V block), DV_ [B, X, Y, H, DV], DD
    [B, X, Y, H, NVB], and the MS block of DCF [B*H*NVB, NX*NY, NP+NB, NB+NP] (the
    coefficient slab's layout). Grid (NX*NY, NVB, B*H)."""
    i_t, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    NVB = tl.num_programs(1)
    i_b, i_h = i_bh // H, i_bh % H
    ti, tj = i_t // NY, i_t % NY
    o_i = tl.arange(0, NB)
    o_p = tl.arange(0, NP)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < DV
    nb = BX + BY
    CW: tl.constexpr = NB + NP
    cf = COEF + (i_bh * NX * NY + i_t).to(tl.int64) * ((NP + NB) * CW)
    x_p = ti * BX + o_p // BY
    y_p = tj * BY + o_p % BY
    m_p = (o_p < BX * BY) & (x_p < X) & (y_p < Y)
    row_p = ((i_b * X + x_p) * Y + y_p).to(tl.int64)
    m_row = (o_p < BX * BY)[:, None]
    MS = tl.load(cf + o_p[:, None] * CW + NB + o_p[None, :], mask=m_row, other=0.0)
    m_pv = m_p[:, None] & m_v[None, :]
    p_v = row_p[:, None] * (H * DV) + i_h * DV + o_v[None, :]
    b_v = tl.load(V_ + p_v, mask=m_pv, other=0.0).to(tl.float32)                  # [NP, BV]
    b_do = tl.load(DO + p_v, mask=m_pv, other=0.0).to(tl.float32)                # [NP, BV]
    b_d = tl.load(D + row_p * H + i_h, mask=m_p, other=0.0)                      # [NP]
    qk = tl.zeros([NP, NP], dtype=tl.float32)
    for kc in range(0, DK, BK):
        p_qk = row_p[:, None] * (H * DK) + i_h * DK + kc + o_k[None, :]
        m_pk = m_p[:, None] & (kc + o_k < DK)[None, :]
        b_q = tl.load(Q + p_qk, mask=m_pk, other=0.0).to(tl.float32)            # [NP, BK]
        b_k = tl.load(K_ + p_qk, mask=m_pk, other=0.0).to(tl.float32)
        qk += _mm(b_q, tl.trans(b_k), NP, BK, NP, PREC)
    qk *= scale                                                                  # [NP, NP]
    gate = MS + tl.where(o_p[:, None] == o_p[None, :], b_d[:, None], 0.0)
    d_scores = _mm(b_do, tl.trans(b_v), NP, BV, NP, PREC)                       # [NP, NP]
    d_gate = d_scores * qk                  # dMS; its diagonal is d(direct)
    d_qk = d_scores * gate * scale
    b_dv = _mm(tl.trans(qk * gate), b_do, NP, NP, BV, PREC)                     # [NP, BV]
    p_dcf = DCF + ((i_bh * NVB + i_v) * NX * NY + i_t).to(tl.int64) * ((NP + NB) * CW)
    tl.store(p_dcf + o_p[:, None] * CW + NB + o_p[None, :], d_gate)
    tl.store(DD + (row_p * H + i_h) * NVB + i_v,
             tl.sum(tl.where(o_p[:, None] == o_p[None, :], d_gate, 0.0), 1), mask=m_p)
    p_dq = (row_p * H + i_h) * (NVB * DK) + i_v * DK                             # [NP]
    for kc in range(0, DK, BK):              # the q k^T part of dq, dk, BK columns at a time
        p_qk = row_p[:, None] * (H * DK) + i_h * DK + kc + o_k[None, :]
        m_pk = m_p[:, None] & (kc + o_k < DK)[None, :]
        b_q = tl.load(Q + p_qk, mask=m_pk, other=0.0).to(tl.float32)
        b_k = tl.load(K_ + p_qk, mask=m_pk, other=0.0).to(tl.float32)
        tl.store(DQ + p_dq[:, None] + kc + o_k[None, :], _mm(d_qk, b_k, NP, NP, BK, PREC),
                 mask=m_pk)
        tl.store(DK_ + p_dq[:, None] + kc + o_k[None, :],
                 _mm(tl.trans(d_qk), b_q, NP, NP, BK, PREC), mask=m_pk)
    tl.store(DV_ + p_v, b_dv, mask=m_pv)


@triton.jit
def _boundary_block(STATES, DCO, COEF, i_t, i_v, i_bh, X, Y, NX, NY,
                    H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BX: tl.constexpr,
                    BY: tl.constexpr, NP: tl.constexpr, NB: tl.constexpr, BV: tl.constexpr):
    """What both boundary kernels address for tile i_t, V block i_v: the tile's coefficient
    slab, its nodes' rows and mask, the offsets of its [NB, BV] state / adjoint block (K row 0)
    and their mask."""
    i_b = i_bh // H
    ti, tj = i_t // NY, i_t % NY
    o_i = tl.arange(0, NB)
    o_p = tl.arange(0, NP)
    o_v = i_v * BV + tl.arange(0, BV)
    nb = BX + BY
    cf = COEF + (i_bh * NX * NY + i_t).to(tl.int64) * ((NP + NB) * (NB + NP))
    x_p = ti * BX + o_p // BY
    y_p = tj * BY + o_p % BY
    m_p = (o_p < BX * BY) & (x_p < X) & (y_p < Y)
    row_p = ((i_b * X + x_p) * Y + y_p).to(tl.int64)
    p_st = (i_bh.to(tl.int64) * NX * NY + i_t) * (nb * DK * DV) + \
        o_i[:, None] * (DK * DV) + o_v[None, :]                                   # [NB, BV]
    m_c = (o_i < nb)[:, None] & (o_v < DV)[None, :]
    return cf, m_p, row_p, p_st, m_c


@triton.jit
def plstm2d_bwd_mark_kernel(Q, DO, STATES, COEF, DQ, DCF, X, Y, NX, NY, scale,
                            H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                            BX: tl.constexpr, BY: tl.constexpr, NP: tl.constexpr,
                            NB: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """The mark reads of the entering states, after ``plstm2d_bwd_kernel`` (same tensors and
    grid; STATES [B*H, NX*NY, BX+BY, DK, DV] fp32, the forward's): adds
    scale sum_i MB[p, i] (C_in[i] do_p) to DQ and writes the MB block of DCF,
    dMB[p, i] = scale sum_k q[p, k] (C_in[i, k] . do_p), one K row at a time."""
    i_t, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    NVB = tl.num_programs(1)
    i_h = i_bh % H
    cf, m_p, row_p, p_st, m_c = _boundary_block(STATES, STATES, COEF, i_t, i_v, i_bh, X, Y, NX,
                                                NY, H, DK, DV, BX, BY, NP, NB, BV)
    o_i = tl.arange(0, NB)
    o_p = tl.arange(0, NP)
    o_v = i_v * BV + tl.arange(0, BV)
    CW: tl.constexpr = NB + NP
    m_pv = m_p[:, None] & (o_v < DV)[None, :]
    p_v = row_p[:, None] * (H * DV) + i_h * DV + o_v[None, :]
    b_do = tl.load(DO + p_v, mask=m_pv, other=0.0).to(tl.float32)                # [NP, BV]
    MBT = tl.load(cf + o_p[None, :] * CW + o_i[:, None], mask=(o_p < BX * BY)[None, :],
                  other=0.0)                                                     # [NB, NP]
    p_dq = (row_p * H + i_h) * (NVB * DK) + i_v * DK                             # [NP]
    p_col = row_p * (H * DK) + i_h * DK
    d_mb = tl.zeros([NP, NB], dtype=tl.float32)
    for kr in range(0, DK):
        c_in = tl.load(STATES + p_st + kr * DV, mask=m_c, other=0.0)                 # [NB, BV]
        q_c = tl.load(Q + p_col + kr, mask=m_p, other=0.0).to(tl.float32)            # [NP]
        d_mb += _mm((scale * q_c)[:, None] * b_do, tl.trans(c_in), NP, BV, NB, PREC)
        dq_c = scale * tl.sum(MBT * _mm(c_in, tl.trans(b_do), NB, BV, NP, PREC), 0)  # [NP]
        tl.store(DQ + p_dq + kr, dq_c + tl.load(DQ + p_dq + kr, mask=m_p, other=0.0), mask=m_p)
    p_dcf = DCF + ((i_bh * NVB + i_v) * NX * NY + i_t).to(tl.int64) * ((NP + NB) * CW)
    tl.store(p_dcf + o_p[:, None] * CW + o_i[None, :], d_mb)


@triton.jit
def plstm2d_bwd_leaving_kernel(K_, V_, STATES, DCO, COEF, DK_, DV_, DCF, X, Y, NX, NY,
                               H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                               BX: tl.constexpr, BY: tl.constexpr, NP: tl.constexpr,
                               NB: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """The leaving edges, after ``plstm2d_bwd_kernel`` (same tensors and grid; STATES, DCO
    [B*H, NX*NY, BX+BY, DK, DV] fp32: entering states, leaving adjoints): adds to DV_ and DK_
    what C_out = LB C_in + LS (k v^T) gives back and writes the LB, LS blocks of DCF,
    dLB = sum_k dC_out C_in^T, dLS[e, p] = sum_k k[p, k] (dC_out[e, k] . v_p), one K row at a
    time."""
    i_t, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    NVB = tl.num_programs(1)
    i_h = i_bh % H
    cf, m_p, row_p, p_st, m_c = _boundary_block(STATES, DCO, COEF, i_t, i_v, i_bh, X, Y, NX, NY,
                                                H, DK, DV, BX, BY, NP, NB, BV)
    o_i = tl.arange(0, NB)
    o_p = tl.arange(0, NP)
    o_v = i_v * BV + tl.arange(0, BV)
    CW: tl.constexpr = NB + NP
    m_pv = m_p[:, None] & (o_v < DV)[None, :]
    p_v = row_p[:, None] * (H * DV) + i_h * DV + o_v[None, :]
    b_v = tl.load(V_ + p_v, mask=m_pv, other=0.0).to(tl.float32)                  # [NP, BV]
    LST = tl.load(cf + (NP + o_i)[None, :] * CW + NB + o_p[:, None],
                  mask=(o_i < BX + BY)[None, :], other=0.0)                      # [NP, NB]
    p_dk = (row_p * H + i_h) * (NVB * DK) + i_v * DK                             # [NP]
    p_col = row_p * (H * DK) + i_h * DK
    b_dv = tl.zeros([NP, BV], dtype=tl.float32)
    d_lb = tl.zeros([NB, NB], dtype=tl.float32)
    d_ls = tl.zeros([NB, NP], dtype=tl.float32)
    for kr in range(0, DK):
        c_in = tl.load(STATES + p_st + kr * DV, mask=m_c, other=0.0)                 # [NB, BV]
        dc_out = tl.load(DCO + p_st + kr * DV, mask=m_c, other=0.0)                  # [NB, BV]
        k_c = tl.load(K_ + p_col + kr, mask=m_p, other=0.0).to(tl.float32)           # [NP]
        ls_dc = _mm(LST, dc_out, NP, NB, BV, PREC)                                   # [NP, BV]
        b_dv += k_c[:, None] * ls_dc
        d_lb += _mm(dc_out, tl.trans(c_in), NB, BV, NB, PREC)
        d_ls += k_c[None, :] * _mm(dc_out, tl.trans(b_v), NB, BV, NP, PREC)
        dk_c = tl.sum(ls_dc * b_v, 1)
        tl.store(DK_ + p_dk + kr, dk_c + tl.load(DK_ + p_dk + kr, mask=m_p, other=0.0),
                 mask=m_p)
    tl.store(DV_ + p_v, b_dv + tl.load(DV_ + p_v, mask=m_pv, other=0.0), mask=m_pv)
    p_dcf = DCF + ((i_bh * NVB + i_v) * NX * NY + i_t).to(tl.int64) * ((NP + NB) * CW)
    tl.store(p_dcf + (NP + o_i)[:, None] * CW + o_i[None, :], d_lb)
    tl.store(p_dcf + (NP + o_i)[:, None] * CW + NB + o_p[None, :], d_ls)


def plstm_2d_triton_bwd(q, k, v, source, transition, mark, direct, do, states, scale, tile,
                        BV=None, num_warps=None):
    """Gradients of ``plstm_2d`` (Triton forward's ``states``, same ``tile`` and BV): (dq, dk,
    dv in their dtypes, dsource, dtransition, dmark, ddirect in theirs). ``num_warps`` is the
    forward's and ignored: the backward launches run ``NUM_WARPS_2D_BWD``."""
    B, X, Y, H, DK = q.shape
    DV = v.shape[-1]
    meta = bwd_meta(kernel_meta(tile, DK, DV, BV=BV, dtype=q.dtype))
    BX, BY, NP, NB, BV = (meta[n] for n in ("BX", "BY", "NP", "NB", "BV"))
    NX, NY, NVB = triton.cdiv(X, BX), triton.cdiv(Y, BY), triton.cdiv(DV, BV)
    dev, f32 = q.device, torch.float32
    w = {name: bwd_num_warps(name, q.dtype) for name in NUM_WARPS_2D_BWD}
    *gates, direct32 = split_gates(source, transition, mark, direct)
    q, k, v, do = q.contiguous(), k.contiguous(), v.contiguous(), do.contiguous()
    coef = torch.empty(B * H, NX * NY, NP + NB, NB + NP, device=dev, dtype=f32)
    plstm2d_coef_kernel[(NX * NY, B * H)](*gates, coef, X, Y, NX, NY, H=H, BX=BX, BY=BY, NP=NP,
                                          NB=NB, PREC=meta["PREC"],
                                          num_warps=w["plstm2d_coef_kernel"])
    scratch = torch.empty(B * H, NY * BY + BX, DK, DV, device=dev, dtype=f32)
    d_leaving = torch.empty_like(states)
    plstm2d_bwd_walk_kernel[(NVB, B * H)](q, do, coef, scratch, d_leaving, X, Y, NX, NY, scale,
                                          H=H, DK=DK, DV=DV, BX=BX, BY=BY, NP=NP, NB=NB, BV=BV,
                                          PREC=meta["PREC"],
                                          num_warps=w["plstm2d_bwd_walk_kernel"])
    dq = torch.empty(B, X, Y, H, NVB, DK, device=dev, dtype=f32)
    dk = torch.empty_like(dq)
    dv = torch.empty(B, X, Y, H, DV, device=dev, dtype=f32)
    dd = torch.empty(B, X, Y, H, NVB, device=dev, dtype=f32)
    dcoef = torch.empty(B * H * NVB, NX * NY, NP + NB, NB + NP, device=dev, dtype=f32)
    plstm2d_bwd_kernel[(NX * NY, NVB, B * H)](q, k, v, direct32, do, coef, dq, dk, dv, dd, dcoef,
                                              X, Y, NX, NY, scale, H=H, DK=DK, DV=DV,
                                              num_warps=w["plstm2d_bwd_kernel"], **meta)
    sizes = dict(H=H, DK=DK, DV=DV, BX=BX, BY=BY, NP=NP, NB=NB, BV=BV, PREC=meta["PREC"])
    plstm2d_bwd_mark_kernel[(NX * NY, NVB, B * H)](
        q, do, states, coef, dq, dcoef, X, Y, NX, NY, scale,
        num_warps=w["plstm2d_bwd_mark_kernel"], **sizes)
    plstm2d_bwd_leaving_kernel[(NX * NY, NVB, B * H)](
        k, v, states, d_leaving, coef, dk, dv, dcoef, X, Y, NX, NY,
        num_warps=w["plstm2d_bwd_leaving_kernel"], **sizes)
    d_source, d_transition, d_mark = _gate_gradients(source, transition, mark, dcoef, meta,
                                                     (B, H, NVB, NX, NY))
    return (dq.sum(4).to(q.dtype), dk.sum(4).to(k.dtype), dv.to(v.dtype),
            d_source.to(source.dtype), d_transition.to(transition.dtype),
            d_mark.to(mark.dtype), dd.sum(4).to(direct.dtype))


def _gate_gradients(source, transition, mark, dcoef, meta, dims):
    """The coefficient slabs' gradients (summed over V blocks) -> gradients of source,
    transition, mark, through the PyTorch coefficient builder (all tiles at once)."""
    B, H, NVB, NX, NY = dims
    BX, BY, NP, NB = (meta[n] for n in ("BX", "BY", "NP", "NB"))
    n, nb = BX * BY, BX + BY
    dc = dcoef.view(B, H, NVB, NX, NY, NP + NB, NB + NP).sum(2)
    d_marks = torch.cat([dc[..., :n, :nb], dc[..., :n, NB:NB + n]], dim=-1)
    d_leaving = torch.cat([dc[..., NP:NP + nb, :nb], dc[..., NP:NP + nb, NB:NB + n]], dim=-1)
    gates = [g.detach().float().requires_grad_() for g in (source, transition, mark)]
    with torch.enable_grad():
        marks, leaving = tile_coefficients_2d(*gates, (BX, BY))
        return torch.autograd.grad((marks, leaving), gates, (d_marks, d_leaving),
                                   allow_unused=True, materialize_grads=True)
