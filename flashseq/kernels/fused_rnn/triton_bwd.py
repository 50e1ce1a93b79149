"""Backward Triton kernels of ``fused_rnn``, over reversed time (layouts: ``fused_rnn`` docstring).

Both kernels produce d wx ([B, T, G, NH, DH] fp32), d rh when it differs from d wx (GRU's n gate)
and d states0; d r and d b are then one reduction over the stored h_{t-1} and d rh (see
``triton_function``). Per step, in registers: the carried gradients of the S states, the cell's
backward from the stored rh_t and states s_{t-1} (``triton_fwd`` saves them), and
d h_{t-1} += sum_g d rh_g @ r_g^T with tl.dot (d rh rounded to the input dtype, fp32 accumulation).

``fused_rnn_bwd_kernel`` is persistent (r^T of the head on chip for all T steps, grid
(cdiv(B, BB), NH)); ``triton_split_bwd`` holds the twin for heads split over programs.
"""
import triton
import triton.language as tl

from .triton_fwd import _load_blocks, _load_per_gate, _load_rows, _store_gates, _store_states


@triton.jit
def _cell_bwd_step(CELL, WX, RH_ST, S_ST, DHO, t, o_b, o_col, m_rc, o_state, hd, state_size, T,
                   G: tl.constexpr, S: tl.constexpr, ds0, ds1, ds2, ds3, b_zero):
    # The cell's backward at step t for one [BB, BH] block: returns d wx, d rh per gate and the
    # gradients of the states before the step (d h_prev without the h_prev @ r path).
    o_wx = (o_b * T + t) * G * hd + o_state - o_b * hd  # [BB] gate-0 rows of step t
    wx0, wx1, wx2, wx3 = _load_blocks(WX, o_wx, o_col, m_rc, hd, G, b_zero)
    rh0, rh1, rh2, rh3 = _load_blocks(RH_ST, o_wx, o_col, m_rc, hd, G, b_zero)
    sp0, sp1, sp2, sp3 = _load_blocks(S_ST + t * S * state_size, o_state, o_col, m_rc,
                                      state_size, S, b_zero)
    o_h = (o_b * T + t) * hd + o_state - o_b * hd
    d0 = ds0 + _load_rows(DHO, o_h, o_col, m_rc)
    return CELL(wx0, wx1, wx2, wx3, rh0, rh1, rh2, rh3, sp0, sp1, sp2, sp3, d0, ds1, ds2, ds3)


@triton.jit
def _hold_past_length(m_valid, dwx0, dwx1, dwx2, dwx3, drh0, drh1, drh2, drh3, dp0, dp1, dp2, dp3,
                      ds0, ds1, ds2, ds3):
    """Backward of a step past a row's length (m_valid [BB, 1] False): the step is the identity
    on the states and its output a constant 0, so d(wx) and d(rh) vanish and the state
    gradients pass through unchanged."""
    dwx0 = tl.where(m_valid, dwx0, 0.0)
    dwx1 = tl.where(m_valid, dwx1, 0.0)
    dwx2 = tl.where(m_valid, dwx2, 0.0)
    dwx3 = tl.where(m_valid, dwx3, 0.0)
    drh0 = tl.where(m_valid, drh0, 0.0)
    drh1 = tl.where(m_valid, drh1, 0.0)
    drh2 = tl.where(m_valid, drh2, 0.0)
    drh3 = tl.where(m_valid, drh3, 0.0)
    dp0 = tl.where(m_valid, dp0, ds0)
    dp1 = tl.where(m_valid, dp1, ds1)
    dp2 = tl.where(m_valid, dp2, ds2)
    dp3 = tl.where(m_valid, dp3, ds3)
    return dwx0, dwx1, dwx2, dwx3, drh0, drh1, drh2, drh3, dp0, dp1, dp2, dp3


@triton.jit(do_not_specialize=["B", "T"])
def fused_rnn_bwd_kernel(
    WX, R, RH_ST, S_ST, DHO, DSLAST, LEN, DWX, DRH, DS0,
    B, T, NH, DH,
    CELL: tl.constexpr, G: tl.constexpr, S: tl.constexpr,
    BB: tl.constexpr, DHP: tl.constexpr,
    HAS_LEN: tl.constexpr, RH_DIFF: tl.constexpr, PREC: tl.constexpr,
):
    """Grid (cdiv(B, BB), NH). Inputs WX, R as in the forward, RH_ST [B,T,G,NH,DH] and S_ST
    [T+1,S,B,NH,DH] fp32 from the forward, DHO [B,T,NH,DH] and DSLAST [S,B,NH,DH] fp32 (the
    gradients of h and last_states). Outputs DWX (and DRH if RH_DIFF) [B,T,G,NH,DH] fp32, zero
    at steps past a row's length, and DS0 [S,B,NH,DH] fp32."""
    i_b = tl.program_id(0)
    i_n = tl.program_id(1).to(tl.int64)
    o_b = (i_b * BB + tl.arange(0, BB)).to(tl.int64)  # [BB]
    o_d = tl.arange(0, DHP).to(tl.int64)  # [DHP]
    m_b = o_b < B
    m_d = o_d < DH
    m_bd = m_b[:, None] & m_d[None, :]  # [BB, DHP]
    hd = NH * DH
    state_size = B.to(tl.int64) * hd
    o_state = o_b * hd + i_n * DH  # [BB]

    # r_g^T of the head on chip: element (j, k) is r[g, n, k, j]
    p_rt = R + i_n * DH * DH + o_d[None, :] * DH + o_d[:, None]
    m_r = m_d[:, None] & m_d[None, :]
    r_gate = NH * DH * DH
    b_rt0, b_rt1, b_rt2, b_rt3 = _load_per_gate(p_rt, r_gate, m_r, G)  # [DHP, DHP] each

    b_zero = tl.zeros([BB, DHP], dtype=tl.float32)
    ds0, ds1, ds2, ds3 = _load_blocks(DSLAST, o_state, o_d, m_bd, state_size, S, b_zero)
    if HAS_LEN:
        b_len = tl.load(LEN + o_b, mask=m_b, other=0)  # [BB]
    for i_t in range(T):
        t = T - 1 - i_t
        dwx0, dwx1, dwx2, dwx3, drh0, drh1, drh2, drh3, dp0, dp1, dp2, dp3 = _cell_bwd_step(
            CELL, WX, RH_ST, S_ST, DHO, t, o_b, o_d, m_bd, o_state, hd, state_size, T, G, S,
            ds0, ds1, ds2, ds3, b_zero)
        if HAS_LEN:
            dwx0, dwx1, dwx2, dwx3, drh0, drh1, drh2, drh3, dp0, dp1, dp2, dp3 = _hold_past_length(
                (t < b_len)[:, None], dwx0, dwx1, dwx2, dwx3, drh0, drh1, drh2, drh3,
                dp0, dp1, dp2, dp3, ds0, ds1, ds2, ds3)
        # keep padded lanes exactly 0 before they meet the 0-padded rows of r^T
        drh0 = tl.where(m_bd, drh0, 0.0)
        drh1 = tl.where(m_bd, drh1, 0.0)
        drh2 = tl.where(m_bd, drh2, 0.0)
        drh3 = tl.where(m_bd, drh3, 0.0)
        dp0 = dp0 + tl.dot(drh0.to(R.dtype.element_ty), b_rt0, input_precision=PREC)
        if G > 1:
            dp0 = dp0 + tl.dot(drh1.to(R.dtype.element_ty), b_rt1, input_precision=PREC)
        if G > 2:
            dp0 = dp0 + tl.dot(drh2.to(R.dtype.element_ty), b_rt2, input_precision=PREC)
        if G > 3:
            dp0 = dp0 + tl.dot(drh3.to(R.dtype.element_ty), b_rt3, input_precision=PREC)
        o_wx = (o_b * T + t) * G * hd + i_n * DH
        _store_gates(DWX, o_wx, o_d, m_bd, hd, G, dwx0, dwx1, dwx2, dwx3)
        if RH_DIFF:
            _store_gates(DRH, o_wx, o_d, m_bd, hd, G, drh0, drh1, drh2, drh3)
        ds0 = dp0
        ds1 = dp1
        ds2 = dp2
        ds3 = dp3
    _store_states(DS0, o_state, o_d, m_bd, state_size, S, ds0, ds1, ds2, ds3)
