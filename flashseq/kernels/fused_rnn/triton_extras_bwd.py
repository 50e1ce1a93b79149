"""Persistent backward kernel of ``fused_rnn`` with the extras and the LayerNorm cells.

The twin of ``triton_bwd.fused_rnn_bwd_kernel`` for ``triton_extras_fwd``; it walks the forward's
step in reverse (order there). Per step t and row block, from D_k = d loss / d state_k after the
step (carried, plus d all_states[t] with ALL_STATES):

- lengths: a row past its length passes D_k on unchanged (no reset, no zoneout there) and its
  cell gets nothing;
- zoneout: a kept unit sends its gradient to the previous (reset) state, the rest to the cell;
- the cell's backward (LN(c) with NORM_C) gives d a, d rh and the direct d of the previous states;
- NORM: d (h @ r) = LN backward of d rh (from the forward's LN(h @ r) and 1/std); DWX gets
  d LN(wx), whose LN backward the launcher applies (``norm_gates_backward``; with NORM_C it
  equals d rh and the launcher takes DRH), so the kernel holds less;
- d h_{t-1} += (sum_g d(h @ r)_g @ r_g^T) times the variational mask;
- reset: a row reset at t sends its previous-state gradient to the initial states instead.

Outputs DWX (d wx; d LN(wx) with NORM, not written with NORM_C), DRH (d rh = what d b sums)
and, with NORM, DHR (d of h @ r, what d r sums), all [B, T, G, NH, DH] fp32 and 0 past a row's
length, and DS0 [S, B, NH, DH] fp32. Offsets are int32 unless ``WIDE``, as the forward.
"""
import triton
import triton.language as tl

from .triton_extras_fwd import _reset_held
from .triton_fwd import _load_blocks, _load_per_gate, _load_rows, _store_gates, _store_states
from .triton_layernorm import ln_lstm_bwd, norm_gates, norm_gates_bwd


@triton.jit
def _zero_where_not(m, x0, x1, x2, x3):
    return tl.where(m, x0, 0.0), tl.where(m, x1, 0.0), tl.where(m, x2, 0.0), tl.where(m, x3, 0.0)


@triton.jit(do_not_specialize=["B", "T"])
def fused_rnn_bwd_extras_kernel(
    WX, R, RH_ST, HR_ST, RSTD_ST, S_ST, DHO, DSLAST, DALL, LEN, VAR, ZONE, RESET,
    DWX, DRH, DHR, DS0,
    B, T, NH, DH,
    CELL: tl.constexpr, G: tl.constexpr, S: tl.constexpr,
    BB: tl.constexpr, DHP: tl.constexpr,
    NORM: tl.constexpr, NORM_C: tl.constexpr,
    HAS_LEN: tl.constexpr, HAS_VAR: tl.constexpr, HAS_ZONE: tl.constexpr,
    HAS_RESET: tl.constexpr, ALL_STATES: tl.constexpr, PREC: tl.constexpr,
    WIDE: tl.constexpr,
):
    """Grid (cdiv(B, BB), NH). WX, R (dropconnect applied), VAR, ZONE, RESET, LEN as the
    forward; RH_ST, HR_ST, RSTD_ST, S_ST its saved tensors; DHO [B,T,NH,DH], DSLAST [S,B,NH,DH]
    and DALL [T,S,B,NH,DH] (ALL_STATES) fp32 gradients of h, last_states and all_states."""
    i_b = tl.program_id(0)
    i_n = tl.program_id(1)
    o_b = i_b * BB + tl.arange(0, BB)
    o_d = tl.arange(0, DHP)
    m_b = o_b < B
    m_d = o_d < DH
    m_bd = m_b[:, None] & m_d[None, :]
    hd = NH * DH
    state_size = B * hd
    if WIDE:  # int64 offsets only for tensors of 2**31 elements or more (registers)
        i_n = i_n.to(tl.int64)
        o_b = o_b.to(tl.int64)
        o_d = o_d.to(tl.int64)
        state_size = B.to(tl.int64) * hd
    o_state = o_b * hd + i_n * DH
    n_gates = G * DH * 1.0
    n_units = DH * 1.0

    # r_g^T of the head on chip: element (j, k) is r[g, n, k, j]
    p_rt = R + i_n * DH * DH + o_d[None, :] * DH + o_d[:, None]
    m_r = m_d[:, None] & m_d[None, :]
    b_rt0, b_rt1, b_rt2, b_rt3 = _load_per_gate(p_rt, NH * DH * DH, m_r, G)

    b_zero = tl.zeros([BB, DHP], dtype=tl.float32)
    ds0, ds1, ds2, ds3 = _load_blocks(DSLAST, o_state, o_d, m_bd, state_size, S, b_zero)
    b_i0, b_i1, b_i2, b_i3 = _load_blocks(S_ST, o_state, o_d, m_bd, state_size, S, b_zero)
    di0 = b_zero  # gradient reaching the initial states through resets
    di1 = b_zero
    di2 = b_zero
    di3 = b_zero
    b_len = o_b
    if HAS_LEN:
        b_len = tl.load(LEN + o_b, mask=m_b, other=0)

    # offsets of step 0; a step's tensors are addressed from a scalar base plus these (fewer
    # per-element address registers than offsets that move with t)
    o_wx = o_b * T * G * hd + i_n * DH  # [B, T, G, NH, DH]
    o_h = o_b * T * hd + i_n * DH  # [B, T, NH, DH]
    for i_t in range(T):
        t = T - 1 - i_t
        WX_t = WX + t * G * hd
        RH_t = RH_ST + t * G * hd
        HR_t = HR_ST + t * G * hd
        DWX_t = DWX + t * G * hd
        DRH_t = DRH + t * G * hd
        DHR_t = DHR + t * G * hd
        if ALL_STATES:
            e0, e1, e2, e3 = _load_blocks(DALL + t * S * state_size, o_state, o_d, m_bd,
                                          state_size, S, b_zero)
            ds0 += e0
            ds1 += e1
            ds2 += e2
            ds3 += e3
        m_row = m_b
        if HAS_LEN:
            m_row = m_b & (t < b_len)
        m_valid = m_row[:, None]
        m_wx = m_bd & m_valid
        p0, p1, p2, p3 = _load_blocks(S_ST + t * S * state_size, o_state, o_d, m_bd, state_size,
                                      S, b_zero)
        back = m_bd
        if HAS_RESET:  # as the forward: a row past its length is not reset
            back, p0, p1, p2, p3 = _reset_held(RESET + t, o_b, m_row, T, p0, p1, p2, p3,
                                               b_i0, b_i1, b_i2, b_i3)
        a0 = b_zero
        a1 = b_zero
        a2 = b_zero
        a3 = b_zero
        if not NORM_C:  # with NORM_C, RH_ST holds the whole pre-activations
            a0, a1, a2, a3 = _load_blocks(WX_t, o_wx, o_d, m_wx, hd, G, b_zero)
            if NORM:
                a0, a1, a2, a3, _ = norm_gates(a0, a1, a2, a3, m_d, n_gates, G)
        rh0, rh1, rh2, rh3 = _load_blocks(RH_t, o_wx, o_d, m_bd, hd, G, b_zero)
        # past a row's length the step is the identity on the states: its h (0) passes no
        # gradient and no zoneout applies, so there dz ends up as the previous states' gradient
        dz0 = ds0 + _load_rows(DHO + t * hd, o_h, o_d, m_wx)
        dz1 = ds1
        dz2 = ds2
        dz3 = ds3
        # the zoneout split: kept units' gradient goes straight to the previous states
        k0 = b_zero
        k1 = b_zero
        k2 = b_zero
        k3 = b_zero
        if HAS_ZONE:
            z0, z1, z2, z3 = _load_blocks(ZONE + t * S * state_size, o_state, o_d, m_wx,
                                          state_size, S, b_zero)
            k0 = tl.where(z0 != 0.0, dz0, 0.0)
            k1 = tl.where(z1 != 0.0, dz1, 0.0)
            k2 = tl.where(z2 != 0.0, dz2, 0.0)
            k3 = tl.where(z3 != 0.0, dz3, 0.0)
            dz0 = dz0 - k0
            dz1 = dz1 - k1
            dz2 = dz2 - k2
            dz3 = dz3 - k3
        if NORM_C:
            da0, da1, da2, da3, dp1 = ln_lstm_bwd(rh0, rh1, rh2, rh3, p1, dz0, dz1, m_d, n_units)
            drh0 = da0
            drh1 = da1
            drh2 = da2
            drh3 = da3
            dp0 = b_zero
            dp2 = dz2
            dp3 = dz3
        else:
            da0, da1, da2, da3, drh0, drh1, drh2, drh3, dp0, dp1, dp2, dp3 = CELL(
                a0, a1, a2, a3, rh0, rh1, rh2, rh3, p0, p1, p2, p3, dz0, dz1, dz2, dz3)
        if HAS_ZONE:
            dp0 += k0
            dp1 += k1
            dp2 += k2
            dp3 += k3
        dhr0 = drh0
        dhr1 = drh1
        dhr2 = drh2
        dhr3 = drh3
        if NORM:
            q0, q1, q2, q3 = _load_blocks(HR_t, o_wx, o_d, m_bd, hd, G, b_zero)  # LN(h @ r)
            rstd_q = tl.load(RSTD_ST + t * NH + o_b * T * NH + i_n, mask=m_b, other=0.0)
            dhr0, dhr1, dhr2, dhr3 = norm_gates_bwd(q0, q1, q2, q3, drh0, drh1, drh2, drh3,
                                                    rstd_q, m_d, n_gates, G)
        # rows past their length (and padded lanes) give the cell nothing
        m_live = m_bd & m_valid
        da0, da1, da2, da3 = _zero_where_not(m_live, da0, da1, da2, da3)
        drh0, drh1, drh2, drh3 = _zero_where_not(m_live, drh0, drh1, drh2, drh3)
        dhr0, dhr1, dhr2, dhr3 = _zero_where_not(m_live, dhr0, dhr1, dhr2, dhr3)
        dp0, dp1, dp2, dp3 = _zero_where_not(m_live, dp0, dp1, dp2, dp3)
        if HAS_LEN:
            dp0 = tl.where(m_valid, dp0, dz0)
            dp1 = tl.where(m_valid, dp1, dz1)
            dp2 = tl.where(m_valid, dp2, dz2)
            dp3 = tl.where(m_valid, dp3, dz3)
        d_in = tl.dot(dhr0.to(R.dtype.element_ty), b_rt0, input_precision=PREC)
        if G > 1:
            d_in += tl.dot(dhr1.to(R.dtype.element_ty), b_rt1, input_precision=PREC)
        if G > 2:
            d_in += tl.dot(dhr2.to(R.dtype.element_ty), b_rt2, input_precision=PREC)
        if G > 3:
            d_in += tl.dot(dhr3.to(R.dtype.element_ty), b_rt3, input_precision=PREC)
        if HAS_VAR:
            d_in = d_in * _load_rows(VAR, o_state, o_d, m_bd)  # re-read: registers are the limit
        dp0 += d_in
        if HAS_RESET:
            di0 += tl.where(back, dp0, 0.0)
            di1 += tl.where(back, dp1, 0.0)
            di2 += tl.where(back, dp2, 0.0)
            di3 += tl.where(back, dp3, 0.0)
            dp0 = tl.where(back, 0.0, dp0)
            dp1 = tl.where(back, 0.0, dp1)
            dp2 = tl.where(back, 0.0, dp2)
            dp3 = tl.where(back, 0.0, dp3)
        if not NORM_C:  # with NORM_C d a = d rh: the launcher takes DRH for both
            _store_gates(DWX_t, o_wx, o_d, m_bd, hd, G, da0, da1, da2, da3)
        _store_gates(DRH_t, o_wx, o_d, m_bd, hd, G, drh0, drh1, drh2, drh3)
        if NORM:
            _store_gates(DHR_t, o_wx, o_d, m_bd, hd, G, dhr0, dhr1, dhr2, dhr3)
        ds0 = dp0
        ds1 = dp1
        ds2 = dp2
        ds3 = dp3
    _store_states(DS0, o_state, o_d, m_bd, state_size, S, ds0 + di0, ds1 + di1, ds2 + di2,
                  ds3 + di3)
