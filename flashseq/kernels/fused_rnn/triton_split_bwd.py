"""Backward kernel for heads split over several programs (layouts: ``fused_rnn`` docstring).

``fused_rnn_bwd_kernel_split``: grid (cdiv(B, BB), NH, P), each program owning BH units of the
head and carrying the gradients of their S states in registers over reversed time. d h_t of its
units needs d rh_{t+1} of *all* units: sum_g d rh_{t+1,g} [BB, DH] @ r_g[j-rows]^T, read from
the DWX/DRH output in global memory that the other programs wrote one step earlier. Launched as
the forward split kernel is (see ``triton_split``): once with ``SYNC`` (barrier after every
step; weights r_g[j, :]^T on chip when BK == DHP), or once per step plus a final launch.
"""
import triton
import triton.language as tl

from .triton_bwd import _cell_bwd_step, _hold_past_length
from .triton_fwd import _load_blocks, _load_per_gate, _store_gates, _store_states
from .triton_split import group_barrier


@triton.jit
def _weight_rows_t(P_R, o_c, o_j, m_cj, DH, r_gate, G: tl.constexpr):
    # the G blocks r[g, n, j, c]^T as [BK (c), BH (j)]; P_R points at r[0, n]
    return _load_per_gate(P_R + o_j[None, :] * DH + o_c[:, None], r_gate, m_cj, G)


@triton.jit
def _drh_dot(acc, P_DRH, o_rows, o_c, m_bc, hd, dtype, b_r0, b_r1, b_r2, b_r3, G: tl.constexpr,
             PREC: tl.constexpr):
    # acc + sum_g d rh_g[:, c-chunk] @ r_g^T[c-chunk, j]; o_rows: gate-0 rows of the step
    p = P_DRH + o_rows[:, None] + o_c[None, :]
    acc = acc + tl.dot(tl.load(p, mask=m_bc, other=0.0, cache_modifier=".cg").to(dtype), b_r0,
                       input_precision=PREC)
    if G > 1:
        acc = acc + tl.dot(tl.load(p + hd, mask=m_bc, other=0.0, cache_modifier=".cg").to(dtype),
                           b_r1, input_precision=PREC)
    if G > 2:
        acc = acc + tl.dot(tl.load(p + 2 * hd, mask=m_bc, other=0.0, cache_modifier=".cg").to(dtype),
                           b_r2, input_precision=PREC)
    if G > 3:
        acc = acc + tl.dot(tl.load(p + 3 * hd, mask=m_bc, other=0.0, cache_modifier=".cg").to(dtype),
                           b_r3, input_precision=PREC)
    return acc


@triton.jit(do_not_specialize=["t_lo", "t_hi", "B", "T"])
def fused_rnn_bwd_kernel_split(
    WX, R, RH_ST, S_ST, DHO, LEN, DWX, DRH, DS_IN, DS_OUT, CNT,
    t_lo, t_hi, B, T, NH, DH,
    CELL: tl.constexpr, G: tl.constexpr, S: tl.constexpr,
    BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, DHP: tl.constexpr,
    HAS_LEN: tl.constexpr, RH_DIFF: tl.constexpr, SYNC: tl.constexpr, FINAL: tl.constexpr,
    PREC: tl.constexpr,
):
    """Steps t_hi-1 down to t_lo. Grid (cdiv(B, BB), NH, cdiv(DH, BH)). DS_IN / DS_OUT
    [S, B, NH, DH] fp32: the carried state gradients before / after these steps, without the
    d rh_{t_lo} @ r^T term unless FINAL (then DS_OUT is d states0). DRH: the caller passes DWX
    there unless RH_DIFF. Other layouts as ``fused_rnn_bwd_kernel``; CNT as the forward's."""
    i_b = tl.program_id(0)
    i_n = tl.program_id(1).to(tl.int64)
    i_j = tl.program_id(2)
    o_b = (i_b * BB + tl.arange(0, BB)).to(tl.int64)  # [BB]
    o_j = (i_j * BH + tl.arange(0, BH)).to(tl.int64)  # [BH] this program's units
    m_b = o_b < B
    m_j = o_j < DH
    m_bj = m_b[:, None] & m_j[None, :]  # [BB, BH]
    hd = NH * DH
    state_size = B.to(tl.int64) * hd
    o_state = o_b * hd + i_n * DH  # [BB]
    r_gate = NH * DH * DH
    p_r = R + i_n * DH * DH
    p_cnt = CNT + tl.program_id(0) * NH + i_n
    dt = R.dtype.element_ty
    if BK == DHP:  # r_g[j, :]^T of the program's units on chip
        o_k = tl.arange(0, DHP).to(tl.int64)
        m_k = o_k < DH
        b_rt0, b_rt1, b_rt2, b_rt3 = _weight_rows_t(p_r, o_k, o_j, m_k[:, None] & m_j[None, :],
                                                    DH, r_gate, G)  # [DHP, BH] each

    b_zero = tl.zeros([BB, BH], dtype=tl.float32)
    ds0, ds1, ds2, ds3 = _load_blocks(DS_IN, o_state, o_j, m_bj, state_size, S, b_zero)
    if HAS_LEN:
        b_len = tl.load(LEN + o_b, mask=m_b, other=0)  # [BB]
    n_rounds = t_hi - t_lo
    if FINAL:  # one more round, t = t_lo - 1: only the d rh_{t_lo} @ r^T term
        n_rounds = n_rounds + 1
    for i_t in range(n_rounds):
        t = t_hi - 1 - i_t
        if t + 1 < T:
            # d h_t[:, j] += sum_g sum_c d rh_{t+1, g}[:, c] * r[g, n, j, c]
            o_next = (o_b * T + t + 1) * G * hd + i_n * DH  # [BB]
            if BK == DHP:
                ds0 = _drh_dot(ds0, DRH, o_next, o_k, m_b[:, None] & m_k[None, :], hd, dt,
                               b_rt0, b_rt1, b_rt2, b_rt3, G, PREC)
            else:
                for c0 in range(0, DH, BK):
                    o_c = c0 + tl.arange(0, BK).to(tl.int64)  # [BK]
                    m_c = o_c < DH
                    c_r0, c_r1, c_r2, c_r3 = _weight_rows_t(p_r, o_c, o_j,
                                                            m_c[:, None] & m_j[None, :], DH,
                                                            r_gate, G)  # [BK, BH] each
                    ds0 = _drh_dot(ds0, DRH, o_next, o_c, m_b[:, None] & m_c[None, :], hd, dt,
                                   c_r0, c_r1, c_r2, c_r3, G, PREC)
        if t >= t_lo:
            dwx0, dwx1, dwx2, dwx3, drh0, drh1, drh2, drh3, dp0, dp1, dp2, dp3 = _cell_bwd_step(
                CELL, WX, RH_ST, S_ST, DHO, t, o_b, o_j, m_bj, o_state, hd, state_size, T, G, S,
                ds0, ds1, ds2, ds3, b_zero)
            if HAS_LEN:
                dwx0, dwx1, dwx2, dwx3, drh0, drh1, drh2, drh3, dp0, dp1, dp2, dp3 = _hold_past_length(
                    (t < b_len)[:, None], dwx0, dwx1, dwx2, dwx3, drh0, drh1, drh2, drh3,
                    dp0, dp1, dp2, dp3, ds0, ds1, ds2, ds3)
            o_wx = (o_b * T + t) * G * hd + i_n * DH
            _store_gates(DWX, o_wx, o_j, m_bj, hd, G, dwx0, dwx1, dwx2, dwx3)
            if RH_DIFF:
                _store_gates(DRH, o_wx, o_j, m_bj, hd, G, drh0, drh1, drh2, drh3)
            ds0 = dp0
            ds1 = dp1
            ds2 = dp2
            ds3 = dp3
            if SYNC:
                group_barrier(p_cnt, (t_hi - t) * tl.num_programs(2))
    _store_states(DS_OUT, o_state, o_j, m_bj, state_size, S, ds0, ds1, ds2, ds3)
