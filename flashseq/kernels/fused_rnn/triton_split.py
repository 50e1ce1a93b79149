"""Forward kernel for heads split over several programs (layouts: ``fused_rnn`` docstring).

``fused_rnn_fwd_kernel_split``: grid (cdiv(B, BB), NH, P) with P = cdiv(DH, BH) programs per
head, each owning BH units (columns) of every gate and carrying their states in registers.
Every step each program reads the whole previous h [BB, DH] from the state buffer in global
memory (written by all P programs), multiplies it by its weight columns and writes its slice of
h_t. Two ways to launch it:

- ``path="split"``: one launch for steps [t_begin, t_end) with ``SYNC``: after each step the P
  programs of a (batch tile, head) meet at a barrier on an atomic counter in global memory
  (release/acquire, gpu scope). All programs must be co-resident (the plan sizes the grid; the
  launcher re-checks with the compiled kernel's registers and shared memory). Weights on chip
  when BK == DHP.
- ``path="stepwise"`` and the interpreter: one launch per step (t_end = t_begin + 1, no SYNC),
  the launch boundary being the barrier. Under TRITON_INTERPRET=1 programs run one after another,
  so a spin-wait would never end; launching per step runs the same code minus the barrier.
  With BK < DHP the weights are streamed from global memory (L2) in [BK, BH] chunks.

The state buffer S_ST is [T+1, S, B, NH, DH] fp32 when the backward needs it (SAVE; step t
reads slot t, writes slot t+1), else [2, S, B, NH, DH] (slots t % 2 and (t+1) % 2).
h loads use the ".cg" cache modifier: another SM wrote them, and L1 is not coherent.
"""
import triton
import triton.language as tl

from .triton_fwd import (_cell_step, _load_bias, _load_blocks, _load_per_gate, _load_rows,
                         _store_gates, _store_states)


@triton.jit
def group_barrier(P_CNT, target):
    """Wait until the counter at P_CNT reaches ``target`` after adding this program's 1.

    bar.sync first so every thread's stores precede the release; the acquire side re-syncs the
    block so no thread reads before the wait is over."""
    tl.debug_barrier()
    tl.atomic_add(P_CNT, 1, sem="release", scope="gpu")
    count = tl.atomic_add(P_CNT, 0, sem="acquire", scope="gpu")
    while count < target:
        count = tl.atomic_add(P_CNT, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _weight_cols(P_R, o_k, o_j, m_kj, DH, r_gate, G: tl.constexpr):
    # the G weight blocks r[g, n, k-rows, j-cols] [BK, BH]; P_R points at r[0, n]
    return _load_per_gate(P_R + o_k[:, None] * DH + o_j[None, :], r_gate, m_kj, G)


@triton.jit
def _dot_gates(b_h, b_r0, b_r1, b_r2, b_r3, a0, a1, a2, a3, G: tl.constexpr, PREC: tl.constexpr):
    # a_g + b_h @ r_g for the G gates
    a0 = a0 + tl.dot(b_h, b_r0, input_precision=PREC)
    if G > 1:
        a1 = a1 + tl.dot(b_h, b_r1, input_precision=PREC)
    if G > 2:
        a2 = a2 + tl.dot(b_h, b_r2, input_precision=PREC)
    if G > 3:
        a3 = a3 + tl.dot(b_h, b_r3, input_precision=PREC)
    return a0, a1, a2, a3


@triton.jit(do_not_specialize=["t_begin", "t_end", "B", "T"])
def fused_rnn_fwd_kernel_split(
    WX, R, BIAS, LEN, H, RH_ST, S_ST, CNT,
    t_begin, t_end, B, T, NH, DH,
    CELL: tl.constexpr, G: tl.constexpr, S: tl.constexpr,
    BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, DHP: tl.constexpr,
    HAS_LEN: tl.constexpr, SAVE: tl.constexpr, SYNC: tl.constexpr, PREC: tl.constexpr,
):
    """Steps [t_begin, t_end). Grid (cdiv(B, BB), NH, cdiv(DH, BH)). S_ST as in the module
    docstring (slot t_begin holds the states before the first step); CNT [cdiv(B, BB) * NH]
    int32 zeros (SYNC only). Writes H[:, t] and, if SAVE, RH_ST[:, t] (fp32)."""
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

    if BK == DHP:  # the program's weight columns stay on chip for all its steps
        o_k = tl.arange(0, DHP).to(tl.int64)  # [DHP]
        m_k = o_k < DH
        b_r0, b_r1, b_r2, b_r3 = _weight_cols(p_r, o_k, o_j, m_k[:, None] & m_j[None, :], DH,
                                              r_gate, G)  # [DHP, BH] each
    b_bias0, b_bias1, b_bias2, b_bias3 = _load_bias(BIAS + i_n * DH + o_j, hd, m_j, G)  # [BH] each

    b_zero = tl.zeros([BB, BH], dtype=tl.float32)
    if SAVE:
        slot0 = t_begin
    else:
        slot0 = t_begin % 2
    p_in = S_ST + slot0.to(tl.int64) * S * state_size
    b_s0, b_s1, b_s2, b_s3 = _load_blocks(p_in, o_state, o_j, m_bj, state_size, S, b_zero)
    b_len = o_b  # [BB] int64, read only when HAS_LEN
    if HAS_LEN:
        b_len = tl.load(LEN + o_b, mask=m_b, other=0)

    for t in range(t_begin, t_end):
        if SAVE:
            slot_in = t
            slot_out = t + 1
        else:
            slot_in = t % 2
            slot_out = (t + 1) % 2
        p_h = S_ST + slot_in.to(tl.int64) * S * state_size + o_state  # [BB] rows of h_{t-1}
        a0, a1, a2, a3 = b_zero, b_zero, b_zero, b_zero
        if BK == DHP:
            b_h = tl.load(p_h[:, None] + o_k[None, :], mask=m_b[:, None] & m_k[None, :], other=0.0,
                          cache_modifier=".cg").to(R.dtype.element_ty)  # [BB, DHP]
            a0, a1, a2, a3 = _dot_gates(b_h, b_r0, b_r1, b_r2, b_r3, a0, a1, a2, a3, G, PREC)
        else:
            for k0 in range(0, DH, BK):
                o_c = k0 + tl.arange(0, BK).to(tl.int64)  # [BK]
                m_c = o_c < DH
                b_h = tl.load(p_h[:, None] + o_c[None, :], mask=m_b[:, None] & m_c[None, :],
                              other=0.0, cache_modifier=".cg").to(R.dtype.element_ty)  # [BB, BK]
                c0, c1, c2, c3 = _weight_cols(p_r, o_c, o_j, m_c[:, None] & m_j[None, :], DH,
                                              r_gate, G)  # [BK, BH] each
                a0, a1, a2, a3 = _dot_gates(b_h, c0, c1, c2, c3, a0, a1, a2, a3, G, PREC)
        o_wx = (o_b * T + t) * G * hd + i_n * DH  # [BB] gate-0 rows of step t
        b_rh0 = a0 + b_bias0[None, :]
        b_wx0 = _load_rows(WX, o_wx, o_j, m_bj)
        b_rh1 = b_zero
        b_rh2 = b_zero
        b_rh3 = b_zero
        b_wx1 = b_zero
        b_wx2 = b_zero
        b_wx3 = b_zero
        if G > 1:
            b_rh1 = a1 + b_bias1[None, :]
            b_wx1 = _load_rows(WX, o_wx + hd, o_j, m_bj)
        if G > 2:
            b_rh2 = a2 + b_bias2[None, :]
            b_wx2 = _load_rows(WX, o_wx + 2 * hd, o_j, m_bj)
        if G > 3:
            b_rh3 = a3 + b_bias3[None, :]
            b_wx3 = _load_rows(WX, o_wx + 3 * hd, o_j, m_bj)
        n0, n1, n2, n3, b_out = _cell_step(CELL, b_wx0, b_wx1, b_wx2, b_wx3, b_rh0, b_rh1, b_rh2,
                                           b_rh3, b_s0, b_s1, b_s2, b_s3, t, b_len, HAS_LEN)
        o_h = (o_b * T + t) * hd + i_n * DH
        tl.store(H + o_h[:, None] + o_j[None, :], b_out.to(H.dtype.element_ty), mask=m_bj)
        if SAVE:
            _store_gates(RH_ST, o_wx, o_j, m_bj, hd, G, b_rh0, b_rh1, b_rh2, b_rh3)
        _store_states(S_ST + slot_out.to(tl.int64) * S * state_size, o_state, o_j, m_bj,
                      state_size, S, n0, n1, n2, n3)
        b_s0 = n0
        b_s1 = n1
        b_s2 = n2
        b_s3 = n3
        if SYNC:
            group_barrier(p_cnt, (t - t_begin + 1) * tl.num_programs(2))
