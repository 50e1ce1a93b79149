"""Triton forward of ``plstm_2d``; the backward recomputes with the tiled PyTorch form.

One program per (V block, batch row x head) visits the grid's BX x BY tiles in order (x tiles
outer, y tiles inner). For each tile it builds the tile's propagation coefficients on the fly,
in registers, by sweeping the tile's BX columns (the same algebra as ``parallel.py``): in column
a the d edges are a line recurrence along y, solved from cumulative log-products of the t_du
gates (zeros and signs counted apart, ``triton_1d._products``), and the r edges then follow
pointwise. That gives, over the tile's inputs (its BY + BX entering edge states and its BX * BY
sources), every node's mark read (``MB`` boundary part [NP, NB], ``MS`` source part [NP, NP])
and every leaving edge (``LB`` [NB, NB], ``LS`` [NB, NP]). Never is an [N, N] matrix formed.

Edge states ([K, V] fp32 each) live in a per-program scratch slab in global memory: one slot per
grid row y for the r edge crossing into the current tile column, and BX slots for the d edges
crossing into the current tile from above. A tile reads its entering states and overwrites them
with its leaving ones, K rows (BKS) at a time, so no [NB, K, V] block is ever held in registers.
All products accumulate in fp32.

The backward (``PLSTM2DTriton.backward``) differentiates ``plstm_2d_tiled`` (the PyTorch form)
recomputed from the saved inputs in fp32: correct for every gate value, but at the PyTorch
form's speed and memory. Imported only when a call asks for the Triton back end.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .parallel import plstm_2d_tiled
from .triton_1d import _products


@triton.jit
def _mm(a, b, M: tl.constexpr, KK: tl.constexpr, N: tl.constexpr):
    """[M, KK] x [KK, N] in fp32: tl.dot where every side is >= 16 (its minimum), else a
    broadcast product and sum (small tiles; the plan keeps GPU tiles off this path)."""
    if M >= 16 and KK >= 16 and N >= 16:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.sum(a[:, :, None] * b[None, :, :], 1)
    return out


@triton.jit
def plstm2d_fwd_kernel(Q, K_, V_, SR, SD, TRL, TRU, TDL, TDU, ML, MU, D, O, SCR,
                       X, Y, NX, NY, scale,
                       H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                       BX: tl.constexpr, BY: tl.constexpr, NP: tl.constexpr, NB: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr, BKS: tl.constexpr):
    """Q, K_ [B, X, Y, H, DK]; V_, O [B, X, Y, H, DV]; the nine gates [B, X, Y, H] fp32;
    SCR [B*H, NY*BY + BX, DK, DV] fp32, any content (the edge-state slots, see the module
    docstring; the kernel zeroes its own).
    NP >= BX*BY and NB >= BX+BY are powers of two >= 16 (tl.dot's minimum)."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_b = tl.arange(0, BY)
    o_i = tl.arange(0, NB)                   # tile inputs: BY left (r) edges, then BX top (d)
    o_p = tl.arange(0, NP)                   # tile nodes, p = a * BY + b
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < DK, o_v < DV
    nb = BX + BY
    YP = NY * BY
    base = i_bh.to(tl.int64) * (YP + BX) * DK * DV
    o_kv = o_k[:, None] * DV + o_v[None, :]
    zeros_kv = tl.zeros([BK, BV], dtype=tl.float32)
    diagonal = o_p[:, None] == o_p[None, :]
    o_r = tl.arange(0, NB * BKS)             # rows (input i, k row) of the read block
    o_f = tl.arange(0, BKS * BV)             # columns (k row, v) of the update block
    for yy in range(0, YP):                  # nothing enters the first column of tiles
        tl.store(SCR + base + yy * DK * DV + o_kv, zeros_kv, mask=m_k[:, None] & m_v[None, :])
    for ti in range(0, NX):
        for aa in range(0, BX):              # nor the top row of tiles
            tl.store(SCR + base + (YP + aa) * DK * DV + o_kv, zeros_kv,
                     mask=m_k[:, None] & m_v[None, :])
        tl.debug_barrier()
        for tj in range(0, NY):
            x_p = ti * BX + o_p // BY
            y_p = tj * BY + o_p % BY
            m_p = (o_p < BX * BY) & (x_p < X) & (y_p < Y)
            row_p = ((i_b * X + x_p) * Y + y_p).to(tl.int64)
            m_pk, m_pv = m_p[:, None] & m_k[None, :], m_p[:, None] & m_v[None, :]
            p_qk = row_p[:, None] * (H * DK) + i_h * DK + o_k[None, :]
            p_v = row_p[:, None] * (H * DV) + i_h * DV + o_v[None, :]
            b_v = tl.load(V_ + p_v, mask=m_pv, other=0.0).to(tl.float32)          # [NP, BV]
            b_d = tl.load(D + row_p * H + i_h, mask=m_p, other=0.0)              # [NP]
            # --- the tile's coefficients, column by column --------------------------------
            left_b = (o_b[:, None] == o_i[None, :]).to(tl.float32)               # [BY, NB]
            left_s = tl.zeros([BY, NP], dtype=tl.float32)
            MB = tl.zeros([NP, NB], dtype=tl.float32)
            MS = tl.zeros([NP, NP], dtype=tl.float32)
            LB = tl.zeros([NB, NB], dtype=tl.float32)
            LS = tl.zeros([NB, NP], dtype=tl.float32)
            for a in tl.static_range(BX):
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
                up_b = _mm(prop, drive_b, BY, BY, NB) + enter[:, None] * top_b[None, :]
                up_s = _mm(prop, drive_s, BY, BY, NP)                          # u edges in
                bot_b = tl.sum(carry[:, None] * drive_b, 0) + total * top_b     # D_{BY-1}
                bot_s = tl.sum(carry[:, None] * drive_s, 0)
                sel = (o_p[:, None] == a * BY + o_b[None, :]).to(tl.float32)    # [NP, BY]
                MB += _mm(sel, m_l[:, None] * left_b + m_u[:, None] * up_b, NP, BY, NB)
                MS += _mm(sel, m_l[:, None] * left_s + m_u[:, None] * up_s, NP, BY, NP)
                bottom_row = (o_i == BY + a)[:, None]
                LB += tl.where(bottom_row, bot_b[None, :], 0.0)
                LS += tl.where(bottom_row, bot_s[None, :], 0.0)
                left_b = t_rl[:, None] * left_b + t_ru[:, None] * up_b
                left_s = t_rl[:, None] * left_s + t_ru[:, None] * up_s + s_r[:, None] * unit
            sel_r = (o_i[:, None] == o_b[None, :]).to(tl.float32)                # [NB, BY]
            LB += _mm(sel_r, left_b, NB, BY, NB)                                 # r edges out
            LS += _mm(sel_r, left_s, NB, BY, NP)
            # --- outputs: within the tile, then what the entering states give ----------------
            b_q = tl.load(Q + p_qk, mask=m_pk, other=0.0).to(tl.float32)        # [NP, BK]
            b_k = tl.load(K_ + p_qk, mask=m_pk, other=0.0).to(tl.float32)
            qk = tl.dot(b_q, tl.trans(b_k), input_precision="ieee") * scale       # [NP, NP]
            scores = qk * (MS + tl.where(diagonal, b_d[:, None], 0.0))
            b_o = tl.dot(scores, b_v, input_precision="ieee")                     # [NP, BV]
            r_i = o_r // BKS
            slot_r = tl.where(r_i < BY, tj * BY + r_i, YP + r_i - BY).to(tl.int64)
            slot_i = tl.where(o_i < BY, tj * BY + o_i, YP + o_i - BY).to(tl.int64)
            for ks in range(0, BK, BKS):
                r_k = ks + o_r % BKS
                p_cr = base + slot_r[:, None] * (DK * DV) + r_k[:, None] * DV + o_v[None, :]
                m_cr = ((r_i < nb) & (r_k < DK))[:, None] & m_v[None, :]
                c_read = tl.load(SCR + p_cr, mask=m_cr, other=0.0)              # [NB*BKS, BV]
                o_kk = ks + tl.arange(0, BKS)
                m_kk = m_p[:, None] & (o_kk < DK)[None, :]
                p_kk = row_p[:, None] * (H * DK) + i_h * DK + o_kk[None, :]
                q_s = tl.load(Q + p_kk, mask=m_kk, other=0.0).to(tl.float32)      # [NP, BKS]
                k_s = tl.load(K_ + p_kk, mask=m_kk, other=0.0).to(tl.float32)
                q_m = tl.reshape(MB[:, :, None] * q_s[:, None, :], [NP, NB * BKS])
                b_o += scale * _mm(q_m, c_read, NP, NB * BKS, BV)
                f_k = ks + o_f // BV
                f_v = i_v * BV + o_f % BV
                p_cu = base + slot_i[:, None] * (DK * DV) + (f_k * DV + f_v)[None, :]
                m_cu = (o_i < nb)[:, None] & ((f_k < DK) & (f_v < DV))[None, :]
                c_in = tl.load(SCR + p_cu, mask=m_cu, other=0.0)                  # [NB, BKS*BV]
                kv = tl.reshape(k_s[:, :, None] * b_v[:, None, :], [NP, BKS * BV])
                c_out = _mm(LB, c_in, NB, NB, BKS * BV) + _mm(LS, kv, NB, NP, BKS * BV)
                tl.debug_barrier()           # every read of these K rows precedes the overwrite
                tl.store(SCR + p_cu, c_out, mask=m_cu)
            tl.debug_barrier()               # the next tile reads what this one wrote
            tl.store(O + p_v, b_o.to(O.dtype.element_ty), mask=m_pv)


def _pow2(n, low=1):
    return max(low, triton.next_power_of_2(n))


def kernel_meta(tile, DK, DV, BV=None, BKS=None):
    """Compile-time sizes of the kernel for a (BX, BY) tile (rounded up to powers of two) and
    head dims DK, DV: dict of BX, BY, NP, NB, BK, BV, BKS."""
    BX, BY = _pow2(tile[0]), _pow2(tile[1], 2)
    NB = _pow2(BX + BY, 16)
    BV = BV or min(_pow2(DV, 16), 32)
    BKS = BKS or max(1, min(64 // NB, 64 // BV))
    return dict(BX=BX, BY=BY, NP=_pow2(BX * BY, 16), NB=NB, BK=_pow2(DK, 16), BV=BV, BKS=BKS)


def plstm_2d_triton_fwd(q, k, v, source, transition, mark, direct, scale, tile, BV=None,
                        num_warps=8, BKS=None, out=None, scratch=None):
    """Launch the forward kernel; tensors as ``plstm_2d``. Returns o [B, X, Y, H, V], q's
    dtype. ``tile`` is (BX, BY), rounded up to powers of two here; BV, BKS default as
    ``kernel_meta``. ``out`` and ``scratch`` (fp32 [B*H, cdiv(Y, BY) BY + BX, K, V]) may be
    given (contiguous, any content: tests poison them); else they are allocated."""
    B, X, Y, H, DK = q.shape
    DV = v.shape[-1]
    if BKS is None and q.device.type == "cpu":   # the interpreter: fewer, larger K steps
        BKS = _pow2(DK, 16)
    meta = kernel_meta(tile, DK, DV, BV=BV, BKS=BKS)
    BX, BY, BV = meta["BX"], meta["BY"], meta["BV"]
    NX, NY = triton.cdiv(X, BX), triton.cdiv(Y, BY)
    gates = [g.float().contiguous() for g in (
        source[..., 0], source[..., 1], transition[..., 0, 0], transition[..., 0, 1],
        transition[..., 1, 0], transition[..., 1, 1], mark[..., 0], mark[..., 1], direct)]
    o = torch.empty(B, X, Y, H, DV, device=q.device, dtype=q.dtype) if out is None else out
    if scratch is None:
        scratch = torch.empty(B * H, NY * BY + BX, DK, DV, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(DV, BV), B * H)
    plstm2d_fwd_kernel[grid](q.contiguous(), k.contiguous(), v.contiguous(), *gates, o, scratch,
                             X, Y, NX, NY, scale, H=H, DK=DK, DV=DV, num_warps=num_warps, **meta)
    return o


class PLSTM2DTriton(torch.autograd.Function):
    """Triton forward; the backward differentiates the tiled PyTorch form (fp32) recomputed
    from the saved inputs."""

    @staticmethod
    def forward(ctx, q, k, v, source, transition, mark, direct, scale, tile, torch_tile,
                launch):
        o = plstm_2d_triton_fwd(q, k, v, source, transition, mark, direct, scale, tile, **launch)
        ctx.save_for_backward(q, k, v, source, transition, mark, direct)
        ctx.scale, ctx.torch_tile = scale, torch_tile
        return o

    @staticmethod
    def backward(ctx, do):
        inputs = [t.detach().requires_grad_() for t in ctx.saved_tensors]
        with torch.enable_grad():
            o = plstm_2d_tiled(*(t.float() for t in inputs), scale=ctx.scale,
                               tile=ctx.torch_tile)
            grads = torch.autograd.grad(o, inputs, do.to(o.dtype), allow_unused=True,
                                        materialize_grads=True)
        return (*grads, None, None, None, None)
