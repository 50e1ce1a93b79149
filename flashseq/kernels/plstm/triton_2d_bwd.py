"""Triton backward of ``plstm_2d``: the adjoint sweep over the grid's tiles.

Per tile (see ``triton_2d`` for the coefficient names) the forward computes

    o       = (scale q k^T * (MS + diag(d))) v + scale * sum_i MB[:, i] (q C_in[i])
    C_out   = LB C_in + LS (k v^T per node)

so the tile's adjoint, given do and dC_out (the gradients of the states leaving it), is

    dC_in   = LB^T dC_out + MB^T (scale q do^T)          (what flows back to the tiles before)
    dv      = (scale q k^T * G)^T do + sum_e LS[e, p] dC_out[e]^T k_p
    dq, dk  from q k^T's gradient and from the MB / LS terms; d(direct) = diag(dG)
    dMB, dMS, dLB, dLS: the gradients of the tile's coefficients.

One program per (V block, batch row x head) visits the tiles in the reverse of the forward's
order (x tiles outer, descending; y tiles inner, descending) carrying the boundary adjoints
dC ([K, V] fp32 each) in the same slot layout as the forward's edge states: a tile reads its
leaving edges' dC from the slots and overwrites them with its entering edges' dC, one K row at
a time. The entering states C_in come from the forward (``keep_states``); the coefficients are
rebuilt by the forward's column sweep (``tile_coefficient_sweep``). All products accumulate in
fp32.

The coefficients' gradients are written per tile and V block (``dcoef``); the host turns them
into gate gradients by differentiating ``parallel.tile_coefficients_2d`` (PyTorch autograd over
all tiles at once: no q, k, v and no sequential dependency, O(BX BY^2 (BX + BY + BX BY)) per
tile). dq and dk are written per V block and summed on the host. Imported only when a call asks
for the Triton back end.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .parallel import tile_coefficients_2d
from .triton_2d import _mm, coef_shape, kernel_meta, split_gates, tile_coefficient_sweep


@triton.jit
def plstm2d_bwd_kernel(Q, K_, V_, SR, SD, TRL, TRU, TDL, TDU, ML, MU, D, DO, STATES, SCR, CF,
                       DQ, DK_, DV_, DD, DCF,
                       X, Y, NX, NY, scale,
                       H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                       BX: tl.constexpr, BY: tl.constexpr, NP: tl.constexpr, NB: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """Q, K_ [B, X, Y, H, DK]; V_, DO [B, X, Y, H, DV]; the nine gates [B, X, Y, H] fp32;
    STATES [B*H, NX*NY, BX+BY, DK, DV] fp32 (the forward's entering states); SCR, CF as the
    forward (any content). Outputs, fp32: DQ, DK_ [B, X, Y, H, NVB, DK] (per V block), DV_
    [B, X, Y, H, DV], DD [B, X, Y, H, NVB], DCF [B*H*NVB, NX*NY, NP+NB, NB+NP] (the
    coefficient slab's layout). NVB = number of V blocks = the grid's first axis."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    NVB = tl.num_programs(0)
    i_b, i_h = i_bh // H, i_bh % H
    o_i = tl.arange(0, NB)                   # tile inputs / leaving edges: BY r, then BX d
    o_p = tl.arange(0, NP)                   # tile nodes, p = a * BY + b
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < DV
    nb = BX + BY
    YP = NY * BY
    base = i_bh.to(tl.int64) * (YP + BX) * DK * DV
    CW: tl.constexpr = NB + NP
    slab = (i_bh * NVB + i_v).to(tl.int64)
    cf = CF + slab * (NP + NB) * CW
    zeros_iv = tl.zeros([NB, BV], dtype=tl.float32)
    for yy in range(0, YP, NB):              # no dC comes back from beyond the last tile column
        for kr in range(0, DK):
            tl.store(SCR + base + (yy + o_i)[:, None] * (DK * DV) + kr * DV + o_v[None, :],
                     zeros_iv, mask=(yy + o_i < YP)[:, None] & m_v[None, :])
    for tti in range(0, NX):
        ti = NX - 1 - tti
        for kr in range(0, DK):              # nor from below the last tile row
            tl.store(SCR + base + (YP + o_i)[:, None] * (DK * DV) + kr * DV + o_v[None, :],
                     zeros_iv, mask=(o_i < BX)[:, None] & m_v[None, :])
        tl.debug_barrier()
        for ttj in range(0, NY):
            tj = NY - 1 - ttj
            x_p = ti * BX + o_p // BY
            y_p = tj * BY + o_p % BY
            m_p = (o_p < BX * BY) & (x_p < X) & (y_p < Y)
            row_p = ((i_b * X + x_p) * Y + y_p).to(tl.int64)
            tile_coefficient_sweep(cf, SR, SD, TRL, TRU, TDL, TDU, ML, MU, i_b, i_h, ti, tj, X, Y,
                                   H, BX, BY, NP, NB, PREC)
            tl.debug_barrier()               # the coefficients are read back in other layouts
            m_row = (o_p < BX * BY)[:, None]
            MS = tl.load(cf + o_p[:, None] * CW + NB + o_p[None, :], mask=m_row, other=0.0)
            m_pv = m_p[:, None] & m_v[None, :]
            p_v = row_p[:, None] * (H * DV) + i_h * DV + o_v[None, :]
            b_v = tl.load(V_ + p_v, mask=m_pv, other=0.0).to(tl.float32)          # [NP, BV]
            b_do = tl.load(DO + p_v, mask=m_pv, other=0.0).to(tl.float32)        # [NP, BV]
            b_d = tl.load(D + row_p * H + i_h, mask=m_p, other=0.0)              # [NP]
            qk = tl.zeros([NP, NP], dtype=tl.float32)
            for kc in range(0, DK, BK):
                p_qk = row_p[:, None] * (H * DK) + i_h * DK + kc + o_k[None, :]
                m_pk = m_p[:, None] & (kc + o_k < DK)[None, :]
                b_q = tl.load(Q + p_qk, mask=m_pk, other=0.0).to(tl.float32)    # [NP, BK]
                b_k = tl.load(K_ + p_qk, mask=m_pk, other=0.0).to(tl.float32)
                qk += _mm(b_q, tl.trans(b_k), NP, BK, NP, PREC)
            qk *= scale                                                          # [NP, NP]
            gate = MS + tl.where(o_p[:, None] == o_p[None, :], b_d[:, None], 0.0)
            d_scores = _mm(b_do, tl.trans(b_v), NP, BV, NP, PREC)               # [NP, NP]
            d_gate = d_scores * qk                  # dMS; its diagonal is d(direct)
            d_qk = d_scores * gate * scale
            b_dv = _mm(tl.trans(qk * gate), b_do, NP, NP, BV, PREC)             # [NP, BV]
            p_dcf = DCF + (slab * NX * NY + ti * NY + tj) * ((NP + NB) * CW)
            tl.store(p_dcf + o_p[:, None] * CW + NB + o_p[None, :], d_gate)
            tl.store(DD + (row_p * H + i_h) * NVB + i_v,
                     tl.sum(tl.where(o_p[:, None] == o_p[None, :], d_gate, 0.0), 1), mask=m_p)
            p_dq = (row_p * H + i_h) * (NVB * DK) + i_v * DK                     # [NP]
            for kc in range(0, DK, BK):      # the q k^T part of dq, dk, BK columns at a time
                p_qk = row_p[:, None] * (H * DK) + i_h * DK + kc + o_k[None, :]
                m_pk = m_p[:, None] & (kc + o_k < DK)[None, :]
                b_q = tl.load(Q + p_qk, mask=m_pk, other=0.0).to(tl.float32)
                b_k = tl.load(K_ + p_qk, mask=m_pk, other=0.0).to(tl.float32)
                tl.store(DQ + p_dq[:, None] + kc + o_k[None, :], _mm(d_qk, b_k, NP, NP, BK, PREC),
                         mask=m_pk)
                tl.store(DK_ + p_dq[:, None] + kc + o_k[None, :],
                         _mm(tl.trans(d_qk), b_q, NP, NP, BK, PREC), mask=m_pk)
            tl.debug_barrier()               # the K-column updates below re-read dq, dk
            slot_i = tl.where(o_i < BY, tj * BY + o_i, YP + o_i - BY).to(tl.int64)
            p_c = base + slot_i[:, None] * (DK * DV) + o_v[None, :]
            m_c = (o_i < nb)[:, None] & m_v[None, :]
            p_st = ((i_bh * NX + ti) * NY + tj).to(tl.int64) * (nb * DK * DV) + \
                o_i[:, None] * (DK * DV) + o_v[None, :]
            p_col = row_p * (H * DK) + i_h * DK
            # dMB, dLB, dLS accumulate in the dcoef slab (this program's own block), not in
            # registers: three more [32, 32] fp32 accumulators spilled on sm_80/sm_90
            p_dmb = p_dcf + o_p[:, None] * CW + o_i[None, :]
            p_dlb = p_dcf + (NP + o_i)[:, None] * CW + o_i[None, :]
            p_dls = p_dcf + (NP + o_i)[:, None] * CW + NB + o_p[None, :]
            tl.store(p_dmb, tl.zeros([NP, NB], dtype=tl.float32))
            tl.store(p_dlb, tl.zeros([NB, NB], dtype=tl.float32))
            tl.store(p_dls, tl.zeros([NB, NP], dtype=tl.float32))
            # one K row of the entering states and of the leaving adjoints at a time. The
            # coefficients, C_in and v, do are read transposed straight from memory where a
            # product needs them so (tl.trans of register blocks cost registers)
            b_vT = tl.load(V_ + tl.trans(p_v), mask=tl.trans(m_pv), other=0.0).to(tl.float32)
            b_doT = tl.load(DO + tl.trans(p_v), mask=tl.trans(m_pv), other=0.0).to(tl.float32)
            m_pT = (o_p < BX * BY)[None, :]                                      # [1, NP]
            m_lT = (o_i < nb)[None, :]
            p_stT = ((i_bh * NX + ti) * NY + tj).to(tl.int64) * (nb * DK * DV) + \
                o_i[None, :] * (DK * DV) + o_v[:, None]                             # [BV, NB]
            m_cT = (o_i < nb)[None, :] & m_v[:, None]
            for kr in range(0, DK):
                c_in = tl.load(STATES + p_st + kr * DV, mask=m_c, other=0.0)         # [NB, BV]
                c_inT = tl.load(STATES + p_stT + kr * DV, mask=m_cT, other=0.0)     # [BV, NB]
                dc_out = tl.load(SCR + p_c + kr * DV, mask=m_c, other=0.0)          # [NB, BV]
                MBT = tl.load(cf + o_p[None, :] * CW + o_i[:, None], mask=m_pT, other=0.0)
                LBT = tl.load(cf + (NP + o_i)[None, :] * CW + o_i[:, None], mask=m_lT, other=0.0)
                LST = tl.load(cf + (NP + o_i)[None, :] * CW + NB + o_p[:, None], mask=m_lT,
                              other=0.0)                                             # [NP, NB]
                q_c = tl.load(Q + p_col + kr, mask=m_p, other=0.0).to(tl.float32)    # [NP]
                k_c = tl.load(K_ + p_col + kr, mask=m_p, other=0.0).to(tl.float32)
                q_do = (scale * q_c)[:, None] * b_do                                  # [NP, BV]
                dc_in = (_mm(LBT, dc_out, NB, NB, BV, PREC)
                         + _mm(MBT, q_do, NB, NP, BV, PREC))                          # [NB, BV]
                ls_dc = _mm(LST, dc_out, NP, NB, BV, PREC)                           # [NP, BV]
                b_dv += k_c[:, None] * ls_dc
                tl.store(p_dmb, tl.load(p_dmb) + _mm(q_do, c_inT, NP, BV, NB, PREC))
                tl.store(p_dlb, tl.load(p_dlb) + _mm(dc_out, c_inT, NB, BV, NB, PREC))
                tl.store(p_dls, tl.load(p_dls)
                         + k_c[None, :] * _mm(dc_out, b_vT, NB, BV, NP, PREC))
                # dq_p += scale sum_i MB[p, i] (C_in[i] . do_p)
                dq_c = scale * tl.sum(MBT * _mm(c_in, b_doT, NB, BV, NP, PREC), 0)   # [NP]
                dk_c = tl.sum(ls_dc * b_v, 1)
                dq_c += tl.load(DQ + p_dq + kr, mask=m_p, other=0.0)
                dk_c += tl.load(DK_ + p_dq + kr, mask=m_p, other=0.0)
                tl.debug_barrier()           # every read of this K row precedes the overwrite
                tl.store(SCR + p_c + kr * DV, dc_in, mask=m_c)
                tl.store(DQ + p_dq + kr, dq_c, mask=m_p)
                tl.store(DK_ + p_dq + kr, dk_c, mask=m_p)
            tl.store(DV_ + p_v, b_dv, mask=m_pv)
            tl.debug_barrier()               # the next tile reads the dC this one wrote


def plstm_2d_triton_bwd(q, k, v, source, transition, mark, direct, do, states, scale, tile,
                        BV=None, num_warps=8):
    """Gradients of ``plstm_2d`` (Triton forward's ``states``, same ``tile`` and BV): (dq, dk,
    dv in their dtypes, dsource, dtransition, dmark, ddirect in theirs)."""
    B, X, Y, H, DK = q.shape
    DV = v.shape[-1]
    meta = kernel_meta(tile, DK, DV, BV=BV, dtype=q.dtype)
    BX, BY, NP, NB, BV = (meta[n] for n in ("BX", "BY", "NP", "NB", "BV"))
    NX, NY, NVB = triton.cdiv(X, BX), triton.cdiv(Y, BY), triton.cdiv(DV, BV)
    dev, f32 = q.device, torch.float32
    gates = split_gates(source, transition, mark, direct)
    scratch = torch.empty(B * H, NY * BY + BX, DK, DV, device=dev, dtype=f32)
    coef = torch.empty(coef_shape(meta, B * H, DV), device=dev, dtype=f32)
    dq = torch.empty(B, X, Y, H, NVB, DK, device=dev, dtype=f32)
    dk = torch.empty_like(dq)
    dv = torch.empty(B, X, Y, H, DV, device=dev, dtype=f32)
    dd = torch.empty(B, X, Y, H, NVB, device=dev, dtype=f32)
    dcoef = torch.empty(B * H * NVB, NX * NY, NP + NB, NB + NP, device=dev, dtype=f32)
    plstm2d_bwd_kernel[(NVB, B * H)](q.contiguous(), k.contiguous(), v.contiguous(), *gates,
                                     do.contiguous(), states, scratch, coef, dq, dk, dv, dd,
                                     dcoef, X, Y, NX, NY, scale, H=H, DK=DK, DV=DV,
                                     num_warps=num_warps, **meta)
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
