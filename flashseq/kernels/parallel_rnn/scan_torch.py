"""Reference parallel scan of affine maps, pure PyTorch, any floating dtype (float64 included).

Solves ``x_t = A_t x_{t-1} + c_t`` for every t at once by odd-even reduction (the up- and
down-sweep of Blelloch's scan written as a recursion): neighbouring maps are composed pairwise,
``(A_{2k+1} A_{2k}, A_{2k+1} c_{2k} + c_{2k+1})``, the half-length problem is solved for the odd
steps, and the even steps follow in one batched step each. Depth ~2 log2(T) batched operations,
work O(T) matrix products (no log T factor as in Hillis-Steele).

Layout: ``A`` [N, T, m, m], ``c`` [N, T, m], ``x0`` [N, m] (N independent groups of m coupled
values). ``m == 1`` (diagonal structure of one-state cells) runs elementwise.
"""
from __future__ import annotations

import torch


def _apply(A, x):
    """A [..., m, m] applied to x [..., m]."""
    if A.shape[-1] == 1:
        return A[..., 0] * x
    return (A @ x.unsqueeze(-1)).squeeze(-1)


def _compose(A_after, A_before):
    if A_after.shape[-1] == 1:
        return A_after * A_before
    return A_after @ A_before


def affine_scan(A: torch.Tensor, c: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """x [N, T, m] with ``x_t = A[:, t] x_{t-1} + c[:, t]`` and ``x_{-1} = x0``."""
    T = c.shape[1]
    if T == 1:
        return (_apply(A[:, 0], x0) + c[:, 0]).unsqueeze(1)
    pairs = T // 2
    A_even, A_odd = A[:, 0:2 * pairs:2], A[:, 1:2 * pairs:2]
    c_even, c_odd = c[:, 0:2 * pairs:2], c[:, 1:2 * pairs:2]
    # (A_odd, c_odd) after (A_even, c_even): maps x_{2k-1} to x_{2k+1}
    x_odd = affine_scan(_compose(A_odd, A_even), _apply(A_odd, c_even) + c_odd, x0)
    evens = (T + 1) // 2
    prev = torch.cat([x0.unsqueeze(1), x_odd[:, :evens - 1]], 1)  # x_{2k-1}
    x_even = _apply(A[:, 0::2], prev) + c[:, 0::2]
    x = torch.stack([x_even[:, :pairs], x_odd], 2).flatten(1, 2)
    if evens > pairs:
        x = torch.cat([x, x_even[:, pairs:]], 1)
    return x


def affine_scan_reverse(A: torch.Tensor, g: torch.Tensor, scan=None) -> torch.Tensor:
    """The adjoint recurrence: lam [N, T, m] with ``lam_t = A[:, t+1]^T lam_{t+1} + g[:, t]`` and
    ``lam_{T-1} = g[:, T-1]`` (``A[:, 0]`` is not used), solved by ``scan`` (a forward scan with
    ``affine_scan``'s contract; Default: None, ``affine_scan``) on the time-reversed maps."""
    scan = affine_scan if scan is None else scan
    At = A.transpose(-1, -2)
    # reversed time k = T-1-t: lam_k = At[T-k] lam_{k-1} + g[T-1-k]; the k=0 map never acts
    # (lam_{-1} = 0)
    A_rev = torch.cat([At[:, 1:], torch.zeros_like(At[:, :1])], 1).flip(1)
    return scan(A_rev, g.flip(1), torch.zeros_like(g[:, 0])).flip(1)
