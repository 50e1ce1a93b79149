"""Triton scan of affine maps ``x_t = A_t x_{t-1} + c_t``, same contract as ``scan_torch``.

A chunked three-phase scan (the usual GPU parallel scan), for diagonal structure (m = S <= 2
values per group, BG groups per program) and small dense blocks (m = S * DH <= 32, padded to a
power of two M):

1. ``parallel_rnn_scan_fwd_kernel_chunk``: every (group block, chunk) program composes its chunk's
   BT maps into one, ``(P, q)`` with ``x_end = P x_start + q``;
2. ``parallel_rnn_scan_fwd_kernel_carry``: per group block, the T/BT chunk maps are applied in
   order from x0, giving each chunk's start value (matrix-vector products only);
3. ``parallel_rnn_scan_fwd_kernel_apply``: every (group block, chunk) program runs its chunk from
   its start value and stores x.

Depth ~ 2 BT + T/BT with BT ~ sqrt(T); work T (M^3 + 2 M^2) per group. Products are broadcast
multiply-and-sum in registers (M <= 32; no tensor cores: Newton needs float32 or float64).
Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import scan_torch

SUPPORTED_DTYPES = (torch.float32, torch.float64)
MAX_M = 32


@triton.jit
def _block_ptrs(base, o_g, o_i, o_j, t, T, m):
    # [BG, M, M] addresses of A[g, t, i, j] in a contiguous [N, T, m, m]
    return (base + o_g[:, None, None] * T * m * m + t * m * m
            + o_i[None, :, None] * m + o_j[None, None, :])


@triton.jit
def parallel_rnn_scan_fwd_kernel_chunk(A, c, P_out, q_out, N, T, m, BT, n_chunks,
                                       M: tl.constexpr, BG: tl.constexpr):
    i_g, i_k = tl.program_id(0), tl.program_id(1)
    o_g = (i_g * BG + tl.arange(0, BG)).to(tl.int64)  # [BG]
    o_i = tl.arange(0, M)                              # [M]
    m_g = o_g < N
    m_i = o_i < m
    m_mat = m_g[:, None, None] & m_i[None, :, None] & m_i[None, None, :]  # [BG, M, M]
    m_vec = m_g[:, None] & m_i[None, :]                                    # [BG, M]
    b_P = tl.where((o_i[:, None] == o_i[None, :])[None, :, :] & m_mat, 1.0, 0.0)  # [BG, M, M]
    b_P = b_P.to(A.dtype.element_ty)
    b_q = tl.zeros([BG, M], dtype=A.dtype.element_ty)                      # [BG, M]
    t0 = i_k * BT
    t1 = tl.minimum(t0 + BT, T)
    for t in range(t0, t1):
        b_A = tl.load(_block_ptrs(A, o_g, o_i, o_i, t, T, m), mask=m_mat, other=0.0)
        b_c = tl.load(c + o_g[:, None] * T * m + t * m + o_i[None, :], mask=m_vec, other=0.0)
        # P <- A P, q <- A q + c
        b_P = tl.sum(b_A[:, :, :, None] * b_P[:, None, :, :], axis=2)
        b_q = tl.sum(b_A * b_q[:, None, :], axis=2) + b_c
    p_P = (P_out + o_g[:, None, None] * n_chunks * m * m + i_k * m * m
           + o_i[None, :, None] * m + o_i[None, None, :])
    tl.store(p_P, b_P, mask=m_mat)
    tl.store(q_out + o_g[:, None] * n_chunks * m + i_k * m + o_i[None, :], b_q, mask=m_vec)

@triton.jit
def parallel_rnn_scan_fwd_kernel_carry(P, q, x0, x_start, N, m, n_chunks,
                                       M: tl.constexpr, BG: tl.constexpr):
    i_g = tl.program_id(0)
    o_g = (i_g * BG + tl.arange(0, BG)).to(tl.int64)
    o_i = tl.arange(0, M)
    m_g = o_g < N
    m_i = o_i < m
    m_mat = m_g[:, None, None] & m_i[None, :, None] & m_i[None, None, :]
    m_vec = m_g[:, None] & m_i[None, :]
    b_x = tl.load(x0 + o_g[:, None] * m + o_i[None, :], mask=m_vec, other=0.0)  # [BG, M]
    for k in range(0, n_chunks):
        tl.store(x_start + o_g[:, None] * n_chunks * m + k * m + o_i[None, :], b_x, mask=m_vec)
        b_P = tl.load(_block_ptrs(P, o_g, o_i, o_i, k, n_chunks, m), mask=m_mat, other=0.0)
        b_q = tl.load(q + o_g[:, None] * n_chunks * m + k * m + o_i[None, :], mask=m_vec, other=0.0)
        b_x = tl.sum(b_P * b_x[:, None, :], axis=2) + b_q

@triton.jit
def parallel_rnn_scan_fwd_kernel_apply(A, c, x_start, x_out, N, T, m, BT, n_chunks,
                                       M: tl.constexpr, BG: tl.constexpr):
    i_g, i_k = tl.program_id(0), tl.program_id(1)
    o_g = (i_g * BG + tl.arange(0, BG)).to(tl.int64)
    o_i = tl.arange(0, M)
    m_g = o_g < N
    m_i = o_i < m
    m_mat = m_g[:, None, None] & m_i[None, :, None] & m_i[None, None, :]
    m_vec = m_g[:, None] & m_i[None, :]
    b_x = tl.load(x_start + o_g[:, None] * n_chunks * m + i_k * m + o_i[None, :],
                  mask=m_vec, other=0.0)                                 # [BG, M]
    t0 = i_k * BT
    t1 = tl.minimum(t0 + BT, T)
    for t in range(t0, t1):
        b_A = tl.load(_block_ptrs(A, o_g, o_i, o_i, t, T, m), mask=m_mat, other=0.0)
        b_c = tl.load(c + o_g[:, None] * T * m + t * m + o_i[None, :], mask=m_vec, other=0.0)
        b_x = tl.sum(b_A * b_x[:, None, :], axis=2) + b_c
        tl.store(x_out + o_g[:, None] * T * m + t * m + o_i[None, :], b_x, mask=m_vec)


def _tiles(m: int, T: int):
    """(M, BG, BT): m padded to a power of two, groups per program (about 256 matrix entries
    per program), chunk length ~ sqrt(T) (balances the chunk passes against the carry pass)."""
    M = 1 << max(0, (m - 1).bit_length())
    BG = max(1, min(64, 256 // (M * M)))
    BT = max(16, 1 << max(0, (int(math.isqrt(T)) - 1).bit_length()))
    return M, BG, min(BT, T)


def parallel_rnn_scan_fwd(A, c, x0):
    """x [N, T, m]: launches the three kernels (module docstring)."""
    N, T, m = c.shape
    if m > MAX_M:
        raise ValueError(f"parallel_rnn's Triton scan holds groups of at most {MAX_M} coupled "
                         f"values; got m={m}")
    if c.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"parallel_rnn's Triton scan runs in float32 or float64; got {c.dtype}")
    A, c, x0 = A.contiguous(), c.contiguous(), x0.contiguous()
    M, BG, BT = _tiles(m, T)
    n_chunks = -(-T // BT)
    P = torch.empty(N, n_chunks, m, m, dtype=c.dtype, device=c.device)
    q = torch.empty(N, n_chunks, m, dtype=c.dtype, device=c.device)
    x_start = torch.empty(N, n_chunks, m, dtype=c.dtype, device=c.device)
    x = torch.empty_like(c)
    grid = (-(-N // BG), n_chunks)
    parallel_rnn_scan_fwd_kernel_chunk[grid](A, c, P, q, N, T, m, BT, n_chunks, M=M, BG=BG)
    parallel_rnn_scan_fwd_kernel_carry[(grid[0],)](P, q, x0, x_start, N, m, n_chunks, M=M, BG=BG)
    parallel_rnn_scan_fwd_kernel_apply[grid](A, c, x_start, x, N, T, m, BT, n_chunks, M=M, BG=BG)
    return x


def affine_scan(A: torch.Tensor, c: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """``scan_torch.affine_scan`` on the Triton kernels."""
    return parallel_rnn_scan_fwd(A, c, x0)


def affine_scan_reverse(A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``scan_torch.affine_scan_reverse`` on the Triton kernels."""
    return scan_torch.affine_scan_reverse(A, g, scan=affine_scan)
