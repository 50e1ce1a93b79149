"""Pieces every Triton linear-recurrence kernel starts with: which sequence, head and state tile
a program owns, and the optional initial (or final-gradient) state it starts from.

States are laid out ``[N*H, K, V]``; a program's tile is ``[BK, BV]`` at K block ``i_k`` and V
block ``i_v``. All helpers are inlined into the calling kernel by Triton.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def sequence_bounds(CU, i_n, T, VARLEN: tl.constexpr):
    """(bos, eos) int64: sequence i_n's first and one-past-last step in the packed time axis."""
    if VARLEN:
        bos = tl.load(CU + i_n).to(tl.int64)
        eos = tl.load(CU + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    return bos, eos


@triton.jit
def step_program(CU, T, H: tl.constexpr, VARLEN: tl.constexpr):
    """(i_v, i_nh, i_h, bos, eos) of a step kernel's program, grid (cdiv(V, BV), N * H)."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = sequence_bounds(CU, i_n, T, VARLEN)
    return i_v, i_nh, i_h, bos, eos


@triton.jit
def chunk_state_program(CU, CO, H: tl.constexpr):
    """(i_k, i_v, i_nh, i_h, bos, eos, c0) of a chunk state pass's program, grid
    (cdiv(K, BK), cdiv(V, BV), N * H); c0 is the sequence's first chunk."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(CU + i_n).to(tl.int64)
    eos = tl.load(CU + i_n + 1).to(tl.int64)
    c0 = tl.load(CO + i_n).to(tl.int64)
    return i_k, i_v, i_nh, i_h, bos, eos, c0


@triton.jit
def chunk_bounds(CHUNKS, i_c):
    """(t0, eos) int64: chunk i_c's first step and its sequence's end (CHUNKS [NC, 2])."""
    t0 = tl.load(CHUNKS + 2 * i_c).to(tl.int64)
    eos = tl.load(CHUNKS + 2 * i_c + 1).to(tl.int64)
    return t0, eos


@triton.jit
def chunk_steps(t0, eos, BT: tl.constexpr):
    """(o_t [BT], m_t [BT], last) of the chunk starting at step t0 of a sequence ending at eos:
    its steps, which of them lie in the sequence, and its last step."""
    o_t = t0 + tl.arange(0, BT)
    m_t = o_t < eos
    last = tl.minimum(t0 + BT, eos) - 1
    return o_t, m_t, last


@triton.jit
def state_tile(i_k, i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """(o_k [BK], o_v [BV], m_k [BK], m_v [BV], m_h [BK, BV]): the tile's K and V offsets and
    their masks. Callers form the tile's addresses themselves (``o_k[:, None] * V + o_v[None, :]``
    plus their base, in that order: ptxas allots registers by how the int64 sums associate)."""
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_h = m_k[:, None] & m_v[None, :]
    return o_k, o_v, m_k, m_v, m_h


@triton.jit
def load_state(P, p_state, m_h, BK: tl.constexpr, BV: tl.constexpr, HAS: tl.constexpr):
    """[BK, BV] fp32 tile of the state at P + p_state, or zeros unless HAS (P may be None)."""
    b_h = tl.zeros([BK, BV], dtype=tl.float32)                             # [BK, BV]
    if HAS:
        b_h += tl.load(P + p_state, mask=m_h, other=0.0).to(tl.float32)
    return b_h
