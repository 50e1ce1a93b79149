"""Parallel-in-time nonlinear recurrences: Newton iterations over the whole sequence, each a
parallel scan of affine maps (ParaRNN / DEER). Same cells, layouts and results as ``fused_rnn``."""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from . import scan_torch
from .newton import ParallelRNNFunction, ParallelRNNStats, newton_solve
from .problem import validate


def _scans(backend: str, device: torch.device):
    """(name, forward scan, reverse scan) of the chosen scan back end."""
    if backend == "auto":
        backend = "triton" if device.type == "cuda" else "reference"
    if backend == "reference":
        return "reference", scan_torch.affine_scan, scan_torch.affine_scan_reverse
    reason = triton_unavailable_reason(device)
    if reason:
        raise NotImplementedError(f"parallel_rnn backend 'triton' cannot run this call: {reason}")
    from . import triton_scan  # lazily: importing flashseq never imports triton
    return "triton", triton_scan.affine_scan, triton_scan.affine_scan_reverse


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton scan cannot run on ``device``, or None."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1":
        return None
    return ("triton runs on CUDA tensors, and on CPU tensors only under TRITON_INTERPRET=1; "
            f"got {device.type}")


def parallel_rnn(wx, r, b, states=None, *, cell, structure, lengths=None, max_iters=None,
                 tol=None, backend="auto", stats=None):
    """``fused_rnn``'s recurrence computed by Newton iterations over the whole sequence.

    Each iteration linearises every step at the current guess, ``x_t ~ J_t x_{t-1} + c_t``
    (x_t = all the cell's states of step t, J_t their analytic Jacobian), and solves that linear
    recurrence for all t at once with a parallel scan of affine maps. Gradients come from the
    adjoint linear recurrence at the solution, solved by the same scan backwards in time (no
    differentiation through the iterations).

    Args:
        wx: [B, T, G, NH, DH] float16/bfloat16/float32/float64; as ``fused_rnn`` (whose
            docstring defines every layout). float16/bfloat16 run Newton in float32.
        r: ``structure="diag"``: [G, NH, DH], unit e of head n receives ``h_prev[:, n, e] *
            r[g, n, e]`` (``fused_rnn`` with ``torch.diag_embed(r)``); ``structure="block"``:
            [G, NH, DH, DH] with DH <= 16, exactly ``fused_rnn``'s ``r``.
        b: [G, NH, DH]. states: [S, B, NH, DH] or None (zeros). cell: "lstm", "gru", "slstm"
            or "elman" (the LayerNorm cells: not yet). lengths: [B] or None, as ``fused_rnn``.
        structure: "diag" or "block" (required).
        max_iters: Newton iterations allowed, >= 1. Default: None, min(T, 64).
        tol: stop when max |Newton correction| <= tol. Default: None, 1e-9 in float64 and 1e-5
            otherwise.
        backend: scan back end, "auto" (Triton on CUDA, PyTorch elsewhere), "reference" (PyTorch,
            any dtype) or "triton" (CUDA, or CPU under ``TRITON_INTERPRET=1``). Default: "auto".
        stats: a ``ParallelRNNStats`` to fill (iterations, convergence, fallback), or None.

    Returns:
        (h [B, T, NH, DH], last_states [S, B, NH, DH]) as ``fused_rnn``.

    If Newton does not converge within ``max_iters`` (or meets a non-finite value), one
    ``RuntimeWarning`` says so and the result comes from the sequential ``fused_rnn`` instead:
    never a silently wrong answer.

    Raises:
        TypeError / ValueError: an argument of the wrong type, shape, dtype or device (dense
            ``r`` with ``structure="diag"``, DH > 16 with "block", ``max_iters <= 0``, ...).
        NotImplementedError: ``backend="triton"`` where Triton cannot run.

    Examples:
        >>> import torch, flashseq
        >>> wx = torch.randn(2, 50, 4, 3, 8, dtype=torch.float64)   # LSTM, 3 heads of 8
        >>> r = torch.randn(4, 3, 8, dtype=torch.float64) * 0.5         # one weight per unit
        >>> b = torch.zeros(4, 3, 8, dtype=torch.float64)
        >>> h, last = flashseq.ops.parallel_rnn(wx, r, b, cell="lstm", structure="diag")
        >>> ref, _ = flashseq.ops.fused_rnn(wx, torch.diag_embed(r), b, cell="lstm",
        ...                                 backend="reference")
        >>> bool((h - ref).abs().max() < 1e-12)
        True
    """
    cell_obj, max_iters, tol = validate(wx, r, b, states, cell, structure, lengths, max_iters,
                                        tol, backend)
    if stats is not None and not isinstance(stats, ParallelRNNStats):
        raise TypeError(f"stats must be a ParallelRNNStats or None; got {type(stats).__name__}")
    stats = stats if stats is not None else ParallelRNNStats()
    name, scan, scan_reverse = _scans(backend, wx.device)
    stats.backend, stats.tol, stats.max_iters = name, tol, max_iters
    B, T, G, NH, DH = wx.shape
    if states is None:
        states = wx.new_zeros(cell_obj.num_states, B, NH, DH)
    valid = None
    if lengths is not None:
        lengths = lengths.to(device=wx.device, dtype=torch.int64)
        valid = torch.arange(T, device=wx.device) < lengths.unsqueeze(1)  # [B, T]
    compute = torch.float64 if wx.dtype == torch.float64 else torch.float32
    args = [t.to(compute) for t in (wx, r, b, states)]
    with torch.no_grad():
        X = newton_solve(*args, cell=cell_obj, structure=structure, valid=valid,
                         max_iters=max_iters, tol=tol, scan=scan, stats=stats)
    if X is None:
        stats.fell_back = True
        warnings.warn(f"flashseq.ops.parallel_rnn: Newton did not converge in {stats.iterations} "
                      f"iteration(s) (max |correction| {stats.max_delta[-1]:.3g} > tol {tol:.3g}; "
                      f"cell {cell_obj.name!r}, T={T}, {wx.dtype}); computing this call "
                      "sequentially with fused_rnn instead", RuntimeWarning, stacklevel=2)
        from flashseq.kernels.fused_rnn import fused_rnn
        dense = torch.diag_embed(r) if structure == "diag" else r
        return fused_rnn(wx, dense, b, states, cell=cell_obj.name, lengths=lengths)
    h, last = ParallelRNNFunction.apply(*args, X, valid, cell_obj, structure, scan_reverse)
    return h.to(wx.dtype), last.to(wx.dtype)


__all__ = ["parallel_rnn", "ParallelRNNStats"]
