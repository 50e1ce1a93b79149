"""Forward Triton kernels of ``fused_rnn`` (layouts: see the ``fused_rnn`` docstring).

``fused_rnn_fwd_kernel`` (path "fused"): persistent. One program per (batch tile, head) runs
all T steps and keeps the head's recurrent weights r[:, n] ([G, DHP, DHP]) on chip (loaded once;
the compiler stages them in shared memory / registers) and its states in registers; per step it
loads wx[:, t], does G products [BB, DHP] x [DHP, DHP] with tl.dot (fp32 accumulation), applies
the cell's pointwise function and stores h_t. Heads split over programs: ``triton_split``.

What the backward needs is stored, not recomputed (``SAVE``): rh_t = h_{t-1} @ r + b per gate
([B, T, G, NH, DH] fp32) and the states before/after every step ([T+1, S, B, NH, DH] fp32).
Recomputing rh would put a second sequence of dependent GEMMs on the backward's critical path;
storing costs (G + S) * 4 bytes per (b, t, unit) while training (nothing extra in inference).

Internally the head is padded to DHP = next power of two >= 16 (tl.dot's minimum) with masks;
padded lanes hold finite values (zero weights, zero inputs) so they never leak NaN into dots.
All offsets are int64. States and accumulation are fp32 whatever the input dtype.
"""
import triton
import triton.language as tl


@triton.jit
def _load_per_gate(P, gate_stride, mask, G: tl.constexpr):
    """One tile per gate from P + g * gate_stride (g < G), masked to 0; gates the cell does not
    have repeat gate 0 so every kernel can carry four (their values are never used)."""
    b_0 = tl.load(P, mask=mask, other=0.0)
    b_1 = b_0
    b_2 = b_0
    b_3 = b_0
    if G > 1:
        b_1 = tl.load(P + gate_stride, mask=mask, other=0.0)
    if G > 2:
        b_2 = tl.load(P + 2 * gate_stride, mask=mask, other=0.0)
    if G > 3:
        b_3 = tl.load(P + 3 * gate_stride, mask=mask, other=0.0)
    return b_0, b_1, b_2, b_3


@triton.jit
def _load_bias(P, gate_stride, mask, G: tl.constexpr):
    # the G bias vectors of the program's units as fp32 (added to fp32 accumulators)
    b_0, b_1, b_2, b_3 = _load_per_gate(P, gate_stride, mask, G)
    return b_0.to(tl.float32), b_1.to(tl.float32), b_2.to(tl.float32), b_3.to(tl.float32)


@triton.jit
def _load_rows(P, o_row, o_col, m_rc):
    # [BB, BH] fp32 block of a row-major tensor whose rows are given by o_row (int64 offsets)
    return tl.load(P + o_row[:, None] + o_col[None, :], mask=m_rc, other=0.0).to(tl.float32)


@triton.jit
def _load_blocks(P, o_row, o_col, m_rc, stride, N: tl.constexpr, b_zero):
    # the N fp32 [BB, BH] blocks at P + i * stride (i < N; the gates of a step, the states of a
    # slot); the rest of the four are b_zero
    b_0 = _load_rows(P, o_row, o_col, m_rc)
    b_1 = b_zero
    b_2 = b_zero
    b_3 = b_zero
    if N > 1:
        b_1 = _load_rows(P + stride, o_row, o_col, m_rc)
    if N > 2:
        b_2 = _load_rows(P + 2 * stride, o_row, o_col, m_rc)
    if N > 3:
        b_3 = _load_rows(P + 3 * stride, o_row, o_col, m_rc)
    return b_0, b_1, b_2, b_3


@triton.jit
def _cell_step(CELL, wx0, wx1, wx2, wx3, rh0, rh1, rh2, rh3, s0, s1, s2, s3, t, b_len,
               HAS_LEN: tl.constexpr):
    # The cell's forward at step t for one block: (new states, output). With lengths, rows past
    # their length keep their states and output 0.
    n0, n1, n2, n3 = CELL(wx0, wx1, wx2, wx3, rh0, rh1, rh2, rh3, s0, s1, s2, s3)
    b_out = n0
    if HAS_LEN:
        m_valid = (t < b_len)[:, None]  # [BB, 1]
        n0 = tl.where(m_valid, n0, s0)
        n1 = tl.where(m_valid, n1, s1)
        n2 = tl.where(m_valid, n2, s2)
        n3 = tl.where(m_valid, n3, s3)
        b_out = tl.where(m_valid, b_out, 0.0)
    return n0, n1, n2, n3, b_out


@triton.jit(do_not_specialize=["B", "T"])
def fused_rnn_fwd_kernel(
    WX, R, BIAS, S0, LEN, H, SLAST, RH_ST, S_ST,
    B, T, NH, DH,
    CELL: tl.constexpr, G: tl.constexpr, S: tl.constexpr,
    BB: tl.constexpr, DHP: tl.constexpr,
    HAS_LEN: tl.constexpr, SAVE: tl.constexpr, PREC: tl.constexpr,
):
    """Grid (cdiv(B, BB), NH). WX [B,T,G,NH,DH], R [G,NH,DH,DH], BIAS [G,NH,DH], S0 [S,B,NH,DH],
    LEN [B] int64, outputs H [B,T,NH,DH], SLAST [S,B,NH,DH], and if SAVE RH_ST [B,T,G,NH,DH]
    fp32 and S_ST [T+1,S,B,NH,DH] fp32."""
    i_b = tl.program_id(0)
    i_n = tl.program_id(1).to(tl.int64)
    o_b = (i_b * BB + tl.arange(0, BB)).to(tl.int64)  # [BB]
    o_d = tl.arange(0, DHP).to(tl.int64)  # [DHP]
    m_b = o_b < B
    m_d = o_d < DH
    m_bd = m_b[:, None] & m_d[None, :]  # [BB, DHP]
    hd = NH * DH  # elements per (b, t, g) row of wx
    o_state = o_b * hd + i_n * DH  # [BB] row offsets into [B, NH, DH]
    state_size = B.to(tl.int64) * hd  # one state of [S, B, NH, DH]

    # the head's recurrent weights, on chip for all T steps
    p_r = R + i_n * DH * DH + o_d[:, None] * DH + o_d[None, :]
    m_r = m_d[:, None] & m_d[None, :]
    r_gate = NH * DH * DH
    b_r0, b_r1, b_r2, b_r3 = _load_per_gate(p_r, r_gate, m_r, G)  # [DHP, DHP] each
    b_bias0, b_bias1, b_bias2, b_bias3 = _load_bias(BIAS + i_n * DH + o_d, hd, m_d, G)  # [DHP] each

    b_zero = tl.zeros([BB, DHP], dtype=tl.float32)
    b_s0, b_s1, b_s2, b_s3 = _load_blocks(S0, o_state, o_d, m_bd, state_size, S, b_zero)
    if SAVE:
        _store_states(S_ST, o_state, o_d, m_bd, state_size, S, b_s0, b_s1, b_s2, b_s3)
    b_len = o_b  # [BB] int64, read only when HAS_LEN
    if HAS_LEN:
        b_len = tl.load(LEN + o_b, mask=m_b, other=0)

    for t in range(T):
        # padded lanes of h stay 0 so that 0-weight rows never meet a NaN
        b_h = tl.where(m_d[None, :], b_s0, 0.0).to(R.dtype.element_ty)  # [BB, DHP]
        o_wx = (o_b * T + t) * G * hd + i_n * DH  # [BB] row offsets of gate 0 at step t
        b_rh0 = tl.dot(b_h, b_r0, input_precision=PREC) + b_bias0[None, :]  # [BB, DHP]
        b_wx0 = _load_rows(WX, o_wx, o_d, m_bd)
        b_rh1 = b_zero
        b_rh2 = b_zero
        b_rh3 = b_zero
        b_wx1 = b_zero
        b_wx2 = b_zero
        b_wx3 = b_zero
        if G > 1:
            b_rh1 = tl.dot(b_h, b_r1, input_precision=PREC) + b_bias1[None, :]
            b_wx1 = _load_rows(WX, o_wx + hd, o_d, m_bd)
        if G > 2:
            b_rh2 = tl.dot(b_h, b_r2, input_precision=PREC) + b_bias2[None, :]
            b_wx2 = _load_rows(WX, o_wx + 2 * hd, o_d, m_bd)
        if G > 3:
            b_rh3 = tl.dot(b_h, b_r3, input_precision=PREC) + b_bias3[None, :]
            b_wx3 = _load_rows(WX, o_wx + 3 * hd, o_d, m_bd)
        n0, n1, n2, n3, b_out = _cell_step(CELL, b_wx0, b_wx1, b_wx2, b_wx3, b_rh0, b_rh1, b_rh2,
                                           b_rh3, b_s0, b_s1, b_s2, b_s3, t, b_len, HAS_LEN)
        o_h = (o_b * T + t) * hd + i_n * DH  # [BB]
        tl.store(H + o_h[:, None] + o_d[None, :], b_out.to(H.dtype.element_ty), mask=m_bd)
        if SAVE:
            _store_gates(RH_ST, o_wx, o_d, m_bd, hd, G, b_rh0, b_rh1, b_rh2, b_rh3)
            _store_states(S_ST + (t + 1) * S * state_size, o_state, o_d, m_bd, state_size, S,
                          n0, n1, n2, n3)
        b_s0 = n0
        b_s1 = n1
        b_s2 = n2
        b_s3 = n3
    _store_states(SLAST, o_state, o_d, m_bd, state_size, S, b_s0, b_s1, b_s2, b_s3)


@triton.jit
def _store_states(P, o_state, o_col, m_rc, state_size, S: tl.constexpr, s0, s1, s2, s3):
    # the S states of one [S, B, NH, DH] slot starting at P, converted to its dtype
    p = P + o_state[:, None] + o_col[None, :]
    tl.store(p, s0.to(P.dtype.element_ty), mask=m_rc)
    if S > 1:
        tl.store(p + state_size, s1.to(P.dtype.element_ty), mask=m_rc)
    if S > 2:
        tl.store(p + 2 * state_size, s2.to(P.dtype.element_ty), mask=m_rc)
    if S > 3:
        tl.store(p + 3 * state_size, s3.to(P.dtype.element_ty), mask=m_rc)


@triton.jit
def _store_gates(P, o_row, o_col, m_rc, gate_stride, G: tl.constexpr, g0, g1, g2, g3):
    # the G gate blocks of one step of a [B, T, G, NH, DH] tensor; o_row points at gate 0
    p = P + o_row[:, None] + o_col[None, :]
    tl.store(p, g0.to(P.dtype.element_ty), mask=m_rc)
    if G > 1:
        tl.store(p + gate_stride, g1.to(P.dtype.element_ty), mask=m_rc)
    if G > 2:
        tl.store(p + 2 * gate_stride, g2.to(P.dtype.element_ty), mask=m_rc)
    if G > 3:
        tl.store(p + 3 * gate_stride, g3.to(P.dtype.element_ty), mask=m_rc)


