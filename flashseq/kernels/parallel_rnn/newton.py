"""Newton's method over the whole sequence and the adjoint backward (ParaRNN / DEER).

Forward: with the guess X (the states after every step), each iteration evaluates every step at
once, ``F_t = f(X_{t-1}, wx_t)`` and ``J_t = d f / d x_{t-1}``, and solves the linearised system
for the correction in residual form, ``d_t = J_t d_{t-1} + (F_t - X_t)``, ``d_{-1} = 0``, with one
parallel scan; ``X <- X + d``. It stops when ``max |d| <= tol``. After k iterations the first k
steps are exact (step t depends only on steps before it), so T iterations always suffice in exact
arithmetic; in practice a handful do (quadratic convergence).

Backward (no differentiation through the iterations): at the solution, the gradient with respect
to x_t obeys the linear adjoint recurrence ``lam_t = J_{t+1}^T lam_{t+1} + g_t`` (g_t: the
gradient arriving at the outputs of step t), solved by the same scan backwards in time; the
gradients of wx, r, b then follow step by step from the cell's partials, and the initial states
get ``J_0^T lam_0``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import linearize as lin


@dataclass
class ParallelRNNStats:
    """What one ``parallel_rnn`` call did; pass an instance as ``stats=`` to have it filled.

    iterations: Newton iterations of the forward pass (each is one scan).
    converged: whether ``max |correction| <= tol`` was reached within ``max_iters``.
    max_delta: max |correction| after each iteration.
    fell_back: True when the result came from the sequential ``fused_rnn`` instead.
    damped_iterations: iterations whose correction had to be damped (see ``newton_solve``).
    backend: the scan back end that ran ("reference" or "triton").
    tol, max_iters: the values used.
    """

    iterations: int = 0
    converged: bool = False
    max_delta: list = field(default_factory=list)
    fell_back: bool = False
    damped_iterations: int = 0
    backend: str = ""
    tol: float = 0.0
    max_iters: int = 0


# A correction larger than this (relative to 1 + max |state|) means the linearised recurrence
# blew up (products of Jacobians with norm > 1 over long spans, away from the solution).
BLOWUP = 1e4
# Halvings of J tried before a Picard step (J = 0: delta = residual, always finite).
DAMPING_STEPS = 3


def newton_solve(wx, r, b, states0, *, cell, structure, valid, max_iters, tol, scan, stats):
    """The states after every step, X [B, T, S, NH, DH], or None when Newton did not converge
    (or produced a non-finite value) within ``max_iters`` iterations. No autograd graph.

    Safeguards against divergence far from the solution (float32, long T, expanding cells):
    a correction that is non-finite or larger than ``BLOWUP`` is recomputed with the Jacobians
    damped (J/2, J/4, ..., then J = 0, a Picard step). Any J gives the same fixed point and
    keeps "k iterations make the first k steps exact", so damping never changes the answer,
    only the speed. h is kept within max(1, max |h_0|), a bound every supported cell's h obeys
    (LSTM h = o tanh(c), Elman tanh, GRU a convex combination of tanh and h_prev).
    """
    B, T, G, NH, DH = wx.shape
    S = states0.shape[0]
    # a copy, never a view of states0 (X is updated in place)
    X = states0.transpose(0, 1).unsqueeze(1).expand(B, T, S, NH, DH).clone(
        memory_format=torch.contiguous_format)
    h_bound = max(1.0, float(states0[0].abs().max()))
    chunk = chunk_steps(wx, S, structure)
    delta = torch.empty_like(X)
    for it in range(1, max_iters + 1):
        limit = BLOWUP * (1.0 + float(X.abs().max()))
        for damping in range(DAMPING_STEPS + 2):
            scale = 0.5 ** damping if damping <= DAMPING_STEPS else 0.0
            newton_correction(wx, r, b, states0, X, cell, structure, valid, scan, chunk, scale,
                              out=delta)
            change = float(delta.abs().max())
            if change <= limit:  # also False for NaN
                break
            stats.damped_iterations += damping == 0
        X += delta
        X[:, :, 0].clamp_(-h_bound, h_bound)
        stats.iterations = it
        stats.max_delta.append(change)
        if change != change or change == float("inf"):
            return None
        # after T iterations every step is exact up to rounding
        if change <= tol or it >= T:
            stats.converged = True
            return X
    return None


# CPU: elements of J per time chunk of the Newton correction (~4 MB in float32). Whole-sequence
# tensors cost more than their arithmetic there: every large allocation is fresh pages (page
# faults) and every pass over them streams from memory, while a chunk stays in cache.
CPU_CHUNK_ELEMENTS = 1 << 20
MIN_CHUNK_STEPS = 32


def chunk_steps(wx, S, structure):
    """Time steps per chunk of ``newton_correction``: all of them on a GPU (the scan kernels want
    the whole sequence), a cache-sized piece on the CPU."""
    B, T, G, NH, DH = wx.shape
    if wx.device.type != "cpu":
        return T
    m = S if structure == "diag" else S * DH
    groups = B * NH * DH if structure == "diag" else B * NH
    return min(T, max(MIN_CHUNK_STEPS, CPU_CHUNK_ELEMENTS // (groups * m * m)))


def newton_correction(wx, r, b, states0, X, cell, structure, valid, scan, chunk, scale, out):
    """The Newton correction of the guess X [B, T, S, NH, DH] into ``out`` (same shape):
    ``d_t = scale J_t d_{t-1} + (F_t - X_t)``, ``d_{-1} = 0``, with F and J evaluated at X.

    Computed in time chunks of ``chunk`` steps, each one parallel scan that starts from the
    previous chunk's last correction: the same linear recurrence, solved exactly, with the
    whole-sequence Jacobians never held at once.
    """
    B, T, G, NH, DH = wx.shape
    S = X.shape[2]
    carry = None
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        X_prev = lin.previous(X[:, :t1], states0) if t0 == 0 else X[:, t0 - 1:t1 - 1]
        v = None if valid is None else valid[:, t0:t1]
        F, _, d_rh, d_states = lin.evaluate(wx[:, t0:t1], r, b, X_prev, cell, structure, v)
        J = lin.jacobian(d_rh, d_states, r, structure, v)
        if scale != 1.0:
            J = J * scale
        residual = lin.to_groups(F.sub_(X[:, t0:t1]), structure)
        if carry is None:
            carry = residual.new_zeros(residual.shape[0], residual.shape[2])
        d = scan(J, residual, carry)
        carry = d[:, -1]
        out[:, t0:t1] = lin.from_groups(d, structure, B, S, NH, DH)
    return out


class ParallelRNNFunction(torch.autograd.Function):
    """Outputs from a converged Newton solution X; backward by the adjoint scan."""

    @staticmethod
    def forward(ctx, wx, r, b, states0, X, valid, cell, structure, scan_reverse):
        ctx.save_for_backward(wx, r, b, states0, X, valid)
        ctx.cell, ctx.structure, ctx.scan_reverse = cell, structure, scan_reverse
        h = X[:, :, 0]
        if valid is not None:
            h = torch.where(valid.unsqueeze(-1).unsqueeze(-1), h, torch.zeros_like(h))
        last = X[:, -1].transpose(0, 1)
        return h.contiguous(), last.contiguous()

    @staticmethod
    def backward(ctx, d_h, d_last):
        wx, r, b, states0, X, valid = ctx.saved_tensors
        cell, structure = ctx.cell, ctx.structure
        B, T, G, NH, DH = wx.shape
        S = states0.shape[0]
        g = torch.zeros_like(X)
        if d_h is not None:
            g[:, :, 0] = d_h if valid is None else d_h * valid.view(B, T, 1, 1)
        if d_last is not None:
            g[:, -1] += d_last.transpose(0, 1)
        d_wx = torch.empty_like(wx)
        d_r, d_b = torch.zeros_like(r), torch.zeros_like(b)
        # time chunks from the last to the first, as the forward's corrections (chunk_steps):
        # carry = J_{t1}^T lam_{t1}, what the later chunk's first step sends back to step t1 - 1;
        # after the first chunk it is J_0^T lam_0, the initial states' gradient
        chunk = chunk_steps(wx, S, structure)
        carry = None
        for t0 in reversed(range(0, T, chunk)):
            t1 = min(T, t0 + chunk)
            X_prev = lin.previous(X[:, :t1], states0) if t0 == 0 else X[:, t0 - 1:t1 - 1]
            v = None if valid is None else valid[:, t0:t1]
            _, d_wx_p, d_rh_p, d_states = lin.evaluate(wx[:, t0:t1], r, b, X_prev, cell,
                                                       structure, v)
            J = lin.jacobian(d_rh_p, d_states, r, structure, v)
            g_c = lin.to_groups(g[:, t0:t1], structure).clone()
            if carry is not None:
                g_c[:, -1] += carry
            lam_g = ctx.scan_reverse(J, g_c)                             # [N, t1 - t0, m]
            carry = (J[:, 0].transpose(-1, -2) @ lam_g[:, 0].unsqueeze(-1)).squeeze(-1)
            lam = lin.from_groups(lam_g, structure, B, S, NH, DH)       # [B, t1 - t0, S, NH, DH]
            if v is not None:
                lam = lam * v.view(B, t1 - t0, 1, 1, 1)
            # local gradients of each step: sum over the new states s'
            d_wx[:, t0:t1] = (lam.unsqueeze(3) * d_wx_p).sum(2)          # [B, t, G, NH, DH]
            d_rh = (lam.unsqueeze(3) * d_rh_p).sum(2)
            h_prev = X_prev[:, :, 0]
            if structure == "diag":
                d_r += torch.einsum("btne,btgne->gne", h_prev, d_rh)
            else:
                d_r += torch.einsum("btnd,btgne->gnde", h_prev, d_rh)
            d_b += d_rh.sum((0, 1))
        d_states0 = lin.from_groups(carry.unsqueeze(1), structure, B, S, NH, DH)[:, 0]
        d_states0 = d_states0.transpose(0, 1)
        # gradients in forward's argument order: wx, r, b, states0, X, valid, cell, structure, scan
        return d_wx, d_r, d_b, d_states0.contiguous(), None, None, None, None, None
