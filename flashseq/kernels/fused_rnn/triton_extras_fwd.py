"""Persistent forward kernel of ``fused_rnn`` with the extras (extras.py) and the LayerNorm cells.

A twin of ``triton_fwd.fused_rnn_fwd_kernel`` (same grid, tiles and on-chip weights), kept as a
separate kernel so the plain kernel compiles exactly as before. Each extra is a constexpr flag,
so a launch compiles only the code of the extras it uses. Order within step t (as the reference
loop, reference.py): rows with reset[b, t] go back to the initial states; h_{t-1} times the
variational mask meets r (the launcher multiplies r by the dropconnect mask once, before the
launch); NORM normalises the gate pre-activations of the input part and of the recurrent part
per row and head (then adds b), NORM_C also c before its tanh (LayerNorm LSTM); the cell steps;
zoneout keeps the previous (reset) value of the chosen units; rows past their length keep their
states (no reset applies there) and output 0. Offsets are int32 unless ``WIDE`` (a tensor of
2**31 elements or more): int64 offsets cost registers the kernel does not have to spare.

Saved for the backward (``SAVE``): rh_t as the cell saw it (LN(h @ r) + b with NORM; with
NORM_C the pre-activations LN(wx) + LN(h @ r) + b, so the backward reads no wx), with NORM
also LN(h @ r) (HR_ST) and its 1/std per row and head (RSTD_ST), and the states after every
step (S_ST[t + 1], S_ST[0] the initial states), all fp32. With ALL_STATES every step's states
go to ALL [T, S, B, NH, DH] in wx's dtype. The variational mask is read each step (L1/L2)
rather than held: registers are what the kernel runs short of.
"""
import triton
import triton.language as tl

from .triton_fwd import _load_bias, _load_blocks, _load_per_gate, _load_rows, _store_gates
from .triton_fwd import _store_states
from .triton_layernorm import ln_lstm_fwd, norm_gates


@triton.jit
def _reset_held(RESET_t, o_b, m_row, T, s0, s1, s2, s3, i0, i1, i2, i3):
    # RESET_t = RESET + t, RESET [B, T] uint8: rows set at step t (among m_row) take the
    # initial states i_k
    back = (tl.load(RESET_t + o_b * T, mask=m_row, other=0) != 0)[:, None]
    return (back, tl.where(back, i0, s0), tl.where(back, i1, s1), tl.where(back, i2, s2),
            tl.where(back, i3, s3))


@triton.jit
def _recurrent(b_h, b_r0, b_r1, b_r2, b_r3, b_zero, G: tl.constexpr, PREC: tl.constexpr):
    # h @ r_g per gate, fp32; gates the cell does not have are b_zero
    hr0 = tl.dot(b_h, b_r0, input_precision=PREC)
    hr1 = b_zero
    hr2 = b_zero
    hr3 = b_zero
    if G > 1:
        hr1 = tl.dot(b_h, b_r1, input_precision=PREC)
    if G > 2:
        hr2 = tl.dot(b_h, b_r2, input_precision=PREC)
    if G > 3:
        hr3 = tl.dot(b_h, b_r3, input_precision=PREC)
    return hr0, hr1, hr2, hr3


@triton.jit(do_not_specialize=["B", "T"])
def fused_rnn_fwd_extras_kernel(
    WX, R, BIAS, S0, LEN, VAR, ZONE, RESET, H, SLAST, ALL, RH_ST, HR_ST, RSTD_ST, S_ST,
    B, T, NH, DH,
    CELL: tl.constexpr, G: tl.constexpr, S: tl.constexpr,
    BB: tl.constexpr, DHP: tl.constexpr,
    NORM: tl.constexpr, NORM_C: tl.constexpr,
    HAS_LEN: tl.constexpr, HAS_VAR: tl.constexpr, HAS_ZONE: tl.constexpr,
    HAS_RESET: tl.constexpr, ALL_STATES: tl.constexpr, SAVE: tl.constexpr, PREC: tl.constexpr,
    WIDE: tl.constexpr,
):
    """Grid (cdiv(B, BB), NH). WX, R (dropconnect applied), BIAS, S0, LEN, H, SLAST, RH_ST, S_ST
    as ``fused_rnn_fwd_kernel``; VAR [B,NH,DH] (wx's dtype), ZONE [T,S,B,NH,DH] uint8, RESET
    [B,T] uint8, ALL [T,S,B,NH,DH] wx's dtype; with NORM and SAVE, HR_ST [B,T,G,NH,DH] and
    RSTD_ST [B,T,NH] fp32."""
    i_b = tl.program_id(0)
    i_n = tl.program_id(1)
    o_b = i_b * BB + tl.arange(0, BB)  # [BB]
    o_d = tl.arange(0, DHP)  # [DHP]
    m_b = o_b < B
    m_d = o_d < DH
    m_bd = m_b[:, None] & m_d[None, :]  # [BB, DHP]
    hd = NH * DH
    state_size = B * hd
    if WIDE:  # int64 offsets only for tensors of 2**31 elements or more (registers)
        i_n = i_n.to(tl.int64)
        o_b = o_b.to(tl.int64)
        o_d = o_d.to(tl.int64)
        state_size = B.to(tl.int64) * hd
    o_state = o_b * hd + i_n * DH  # [BB]
    n_gates = G * DH * 1.0  # the count of a gate norm (not .to: DH may be a constant 1)
    n_units = DH * 1.0  # the count of LN(c)

    p_r = R + i_n * DH * DH + o_d[:, None] * DH + o_d[None, :]
    m_r = m_d[:, None] & m_d[None, :]
    b_r0, b_r1, b_r2, b_r3 = _load_per_gate(p_r, NH * DH * DH, m_r, G)  # [DHP, DHP] each
    b_bias0, b_bias1, b_bias2, b_bias3 = _load_bias(BIAS + i_n * DH + o_d, hd, m_d, G)

    b_zero = tl.zeros([BB, DHP], dtype=tl.float32)
    b_s0, b_s1, b_s2, b_s3 = _load_blocks(S0, o_state, o_d, m_bd, state_size, S, b_zero)
    b_i0 = b_s0  # the initial states, which a reset returns to
    b_i1 = b_s1
    b_i2 = b_s2
    b_i3 = b_s3
    if SAVE:
        _store_states(S_ST, o_state, o_d, m_bd, state_size, S, b_s0, b_s1, b_s2, b_s3)
    b_len = o_b
    if HAS_LEN:
        b_len = tl.load(LEN + o_b, mask=m_b, other=0)

    for t in range(T):
        p0 = b_s0
        p1 = b_s1
        p2 = b_s2
        p3 = b_s3
        m_row = m_b
        if HAS_LEN:  # a row past its length is not reset, so p_k is then its carried state
            m_row = m_b & (t < b_len)
        if HAS_RESET:
            _, p0, p1, p2, p3 = _reset_held(RESET + t, o_b, m_row, T, p0, p1, p2, p3,
                                            b_i0, b_i1, b_i2, b_i3)
        b_h = p0
        if HAS_VAR:
            b_h = b_h * _load_rows(VAR, o_state, o_d, m_bd)  # re-read: registers are the limit
        b_h = tl.where(m_d[None, :], b_h, 0.0).to(R.dtype.element_ty)
        hr0, hr1, hr2, hr3 = _recurrent(b_h, b_r0, b_r1, b_r2, b_r3, b_zero, G, PREC)
        o_wx = (o_b * T + t) * G * hd + i_n * DH  # [BB] gate-0 rows of step t
        m_wx = m_bd
        if HAS_LEN:
            m_wx = m_bd & (t < b_len)[:, None]  # padding past a row's length is never read
        a0, a1, a2, a3 = _load_blocks(WX, o_wx, o_d, m_wx, hd, G, b_zero)
        u0 = hr0
        u1 = hr1
        u2 = hr2
        u3 = hr3
        if NORM:
            u0, u1, u2, u3, rstd = norm_gates(hr0, hr1, hr2, hr3, m_d, n_gates, G)
            if SAVE:  # what the norm's backward needs, so the backward need not recompute it
                _store_gates(HR_ST, o_wx, o_d, m_bd, hd, G, u0, u1, u2, u3)
                tl.store(RSTD_ST + (o_b * T + t) * NH + i_n, rstd, mask=m_b)
            a0, a1, a2, a3, _ = norm_gates(a0, a1, a2, a3, m_d, n_gates, G)
        rh0 = u0 + b_bias0[None, :]
        rh1 = u1 + b_bias1[None, :]
        rh2 = u2 + b_bias2[None, :]
        rh3 = u3 + b_bias3[None, :]
        if NORM_C:  # rh_g becomes the pre-activation: all the backward needs of the step
            rh0 = a0 + rh0
            rh1 = a1 + rh1
            rh2 = a2 + rh2
            rh3 = a3 + rh3
            n0, n1 = ln_lstm_fwd(rh0, rh1, rh2, rh3, p1, m_d, n_units)
            n2 = p2
            n3 = p3
        else:
            n0, n1, n2, n3 = CELL(a0, a1, a2, a3, rh0, rh1, rh2, rh3, p0, p1, p2, p3)
        if HAS_ZONE:
            z0, z1, z2, z3 = _load_blocks(ZONE + t * S * state_size, o_state, o_d, m_bd,
                                          state_size, S, b_zero)
            n0 = tl.where(z0 != 0.0, p0, n0)
            n1 = tl.where(z1 != 0.0, p1, n1)
            n2 = tl.where(z2 != 0.0, p2, n2)
            n3 = tl.where(z3 != 0.0, p3, n3)
        b_out = n0
        if HAS_LEN:
            m_valid = (t < b_len)[:, None]
            n0 = tl.where(m_valid, n0, p0)  # past the length: the carried states
            n1 = tl.where(m_valid, n1, p1)
            n2 = tl.where(m_valid, n2, p2)
            n3 = tl.where(m_valid, n3, p3)
            b_out = tl.where(m_valid, b_out, 0.0)
        o_h = (o_b * T + t) * hd + i_n * DH
        tl.store(H + o_h[:, None] + o_d[None, :], b_out.to(H.dtype.element_ty), mask=m_bd)
        if ALL_STATES:
            _store_states(ALL + t * S * state_size, o_state, o_d, m_bd, state_size, S,
                          n0, n1, n2, n3)
        if SAVE:
            _store_gates(RH_ST, o_wx, o_d, m_bd, hd, G, rh0, rh1, rh2, rh3)
            _store_states(S_ST + (t + 1) * S * state_size, o_state, o_d, m_bd, state_size, S,
                          n0, n1, n2, n3)
        b_s0 = n0
        b_s1 = n1
        b_s2 = n2
        b_s3 = n3
    _store_states(SLAST, o_state, o_d, m_bd, state_size, S, b_s0, b_s1, b_s2, b_s3)
