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


# Up to this group size, compose and apply run as broadcast multiply-adds (m = 1: one product);
# from m = 2 on, bmm measured as fast or faster on the CPU.
ELEMENTWISE_M = 1


def _apply(A, x, c=None):
    """A [..., m, m] applied to x [..., m], plus c [..., m] when given."""
    m = A.shape[-1]
    if m <= ELEMENTWISE_M:
        out = A[..., 0] * x[..., :1] if c is None else torch.addcmul(c, A[..., 0], x[..., :1])
        for k in range(1, m):
            out = out.addcmul_(A[..., k], x[..., k:k + 1])
        return out
    batch = A.shape[:-2]
    A3, x3 = _batched(A), x.reshape(-1, m, 1)
    if c is None:
        return torch.bmm(A3, x3).view(*batch, m)
    return torch.baddbmm(c.reshape(-1, m, 1), A3, x3).view(*batch, m)


def _batched(A):
    """A [..., m, m] as [batch, m, m], a view whenever the batch dims allow (bmm takes strided
    batches; only the last two dims must be dense)."""
    return A.reshape(-1, A.shape[-2], A.shape[-1])


def _compose(A_after, A_before):
    """A_after @ A_before over [..., m, m]."""
    m = A_after.shape[-1]
    if m <= ELEMENTWISE_M:
        out = A_after[..., :, :1] * A_before[..., :1, :]
        for k in range(1, m):
            out = out.addcmul_(A_after[..., :, k:k + 1], A_before[..., k:k + 1, :])
        return out
    return torch.bmm(_batched(A_after), _batched(A_before)).view(A_after.shape)


def affine_scan(A: torch.Tensor, c: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """x [N, T, m] with ``x_t = A[:, t] x_{t-1} + c[:, t]`` and ``x_{-1} = x0``."""
    N, T, m = c.shape
    if T == 1:
        return _apply(A[:, 0], x0, c[:, 0]).unsqueeze(1)
    pairs = T // 2
    # even/odd steps as strided views of the input (no copies of the matrices: on a shared CPU,
    # memory traffic costs more than the products)
    A_pairs = A[:, :2 * pairs].unflatten(1, (pairs, 2))
    c_pairs = c[:, :2 * pairs].unflatten(1, (pairs, 2))
    A_even, A_odd = A_pairs[:, :, 0], A_pairs[:, :, 1]
    # (A_odd, c_odd) after (A_even, c_even): maps x_{2k-1} to x_{2k+1}
    x_odd = affine_scan(_compose(A_odd, A_even), _apply(A_odd, c_pairs[:, :, 0], c_pairs[:, :, 1]),
                        x0)
    x = torch.empty_like(c)
    x_pairs = x[:, :2 * pairs].unflatten(1, (pairs, 2))
    x_pairs[:, :, 1] = x_odd
    # x_{2k} = A_{2k} x_{2k-1} + c_{2k}, with x_{-1} = x0
    x[:, 0] = _apply(A[:, 0], x0, c[:, 0])
    evens = (T + 1) // 2
    if evens > 1:
        x[:, 2::2] = _apply(A[:, 2::2], x_odd[:, :evens - 1], c[:, 2::2])
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
