"""Argument checks of ``parallel_rnn`` (shapes as ``fused_rnn``'s, r by structure)."""
from __future__ import annotations

import torch

from flashseq.cells import get_cell
from flashseq.kernels._checks import check_float_dtype, check_like
from flashseq.kernels._checks import check_tensor as _tensor
from flashseq.kernels._checks import describe as _describe

STRUCTURES = ("diag", "block")
BACKENDS = ("auto", "reference", "triton")
MAX_BLOCK_DH = 16
# Default convergence threshold on max |Newton correction|, by the dtype Newton runs in. Newton
# converges quadratically, so what remains after a correction of this size is far below it.
DEFAULT_TOL = {torch.float64: 1e-9, torch.float32: 1e-5}
DEFAULT_MAX_ITERS = 64


def _like(name, t, wx, shape, doc):
    check_like(name, t, wx, "wx", shape, doc)


def validate(wx, r, b, states, cell, structure, lengths, max_iters, tol, backend):
    """Check every argument; returns (cell, max_iters, tol) with the defaults filled in."""
    if not isinstance(structure, str) or structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {list(STRUCTURES)}; got {structure!r}")
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}; got {backend!r}")
    cell = get_cell(cell)
    if cell.partials is None:
        raise ValueError(f"cell={cell.name!r} has no analytic Jacobian for parallel_rnn; allowed: "
                         "'lstm', 'gru', 'slstm', 'elman' (use fused_rnn for it)")
    G, S = cell.num_gates, cell.num_states
    _tensor("wx", wx, 5, "[B, T, G, NH, DH]")
    check_float_dtype("wx", wx)
    B, T, G_wx, NH, DH = wx.shape
    if G_wx != G:
        raise ValueError(f"wx's gate axis (dim 2) must be {G} for cell {cell.name!r} "
                         f"(gates {cell.gate_names}); got {_describe(wx)}")
    if min(B, T, NH, DH) == 0:
        raise ValueError(f"wx [B, T, G, NH, DH] needs B, T, NH, DH >= 1; got {_describe(wx)}")
    if not isinstance(r, torch.Tensor):
        raise TypeError(f"r must be a torch.Tensor; got {type(r).__name__}")
    if structure == "diag":
        if r.dim() == 4:
            raise ValueError(f"r is dense [G, NH, DH, DH] ({_describe(r)}) but structure='diag' "
                             "takes the per-unit recurrent weights r [G, NH, DH]; pass "
                             "structure='block' for dense per-head blocks")
        _tensor("r", r, 3, "[G, NH, DH] (structure='diag')")
        _like("r", r, wx, (G, NH, DH), "[G, NH, DH]")
    else:
        _tensor("r", r, 4, "[G, NH, DH, DH] (structure='block')")
        _like("r", r, wx, (G, NH, DH, DH), "[G, NH, DH, DH]")
        if DH > MAX_BLOCK_DH:
            raise ValueError(f"structure='block' needs DH <= {MAX_BLOCK_DH} (the Jacobians are "
                             f"(S*DH)^2 per head and step); got DH={DH} from r {_describe(r)}; "
                             "use more heads, structure='diag' or fused_rnn")
    _tensor("b", b, 3, "[G, NH, DH]")
    _like("b", b, wx, (G, NH, DH), "[G, NH, DH]")
    if states is not None:
        _tensor("states", states, 4, "[S, B, NH, DH]")
        _like("states", states, wx, (S, B, NH, DH), f"[S, B, NH, DH] with S={S} {cell.state_names}")
    if lengths is not None:
        _tensor("lengths", lengths, 1, "[B] int64")
        if lengths.dtype not in (torch.int64, torch.int32):
            raise TypeError("lengths must be an int64 (or int32) tensor [B]; "
                            f"got {_describe(lengths)}")
        if lengths.shape[0] != B:
            raise ValueError(f"lengths must have shape [B] = ({B},); got {_describe(lengths)}")
        if lengths.device.type != "cpu" and lengths.device != wx.device:
            raise ValueError("lengths must be on the CPU or on wx's device; "
                             f"got {_describe(lengths)}")
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > T:
            raise ValueError(f"lengths must lie in 0..T = 0..{T}; got values in {lo}..{hi}")
    if max_iters is None:
        max_iters = min(T, DEFAULT_MAX_ITERS)
    elif isinstance(max_iters, bool) or not isinstance(max_iters, int):
        raise TypeError(f"max_iters must be an int >= 1 or None; got {type(max_iters).__name__}")
    elif max_iters <= 0:
        raise ValueError(f"max_iters must be >= 1 (Newton iterations); got {max_iters}")
    compute = torch.float64 if wx.dtype == torch.float64 else torch.float32
    if tol is None:
        tol = DEFAULT_TOL[compute]
    elif isinstance(tol, bool) or not isinstance(tol, (int, float)):
        raise TypeError(f"tol must be a float > 0 or None; got {type(tol).__name__}")
    elif not tol > 0:
        raise ValueError(f"tol must be > 0 (a bound on max |Newton correction|); got {tol}")
    return cell, max_iters, float(tol)
