"""P-mode and D-mode transition gates for the 2D grid (``plstm_2d``'s [out (r, d), in (l, u)]).

P-mode keeps propagation stable by making the transitions (sub)stochastic: for each incoming
edge, the absolute values of what it passes on to the two outgoing edges sum to at most 1. The
number of grid paths between two nodes grows combinatorially, but the state mass crossing any
anti-diagonal can then only shrink, so long-range propagation neither explodes nor (with decay
1) vanishes.

D-mode instead restricts the grid to a multitree: one of the two "turning" transitions is
zero, so between two nodes there is at most one path, and bounded (tanh) gates make the
propagation a product along that single path.
"""
from __future__ import annotations

import torch


def p_mode_2d(orientation: torch.Tensor, decay: torch.Tensor | None = None) -> torch.Tensor:
    """Column-substochastic transitions from ``orientation`` [...] in [0, 1] (the share every
    incoming state passes to the r edge; the rest goes to d) and ``decay`` [...] in [0, 1]
    (default 1): T[r, :] = decay * orientation, T[d, :] = decay * (1 - orientation).
    Returns [..., 2, 2]; every column's absolute sum is ``decay``."""
    to_r = orientation if decay is None else decay * orientation
    to_d = (1 - orientation) if decay is None else decay * (1 - orientation)
    return torch.stack([to_r, to_d], dim=-1)[..., :, None].expand(*to_r.shape, 2, 2)


def d_mode_2d(straight_r: torch.Tensor, straight_d: torch.Tensor, turn: torch.Tensor,
              chirality: str = "L") -> torch.Tensor:
    """Multitree transitions from pre-activations [...]: T[r, l] = tanh(straight_r),
    T[d, u] = tanh(straight_d) and one turn, tanh(turn): chirality "L" turns r edges down
    (T[d, l]; T[r, u] = 0), "R" turns d edges right (T[r, u]; T[d, l] = 0). Returns [..., 2, 2]."""
    if chirality not in ("L", "R"):
        raise ValueError(f"chirality must be 'L' or 'R'; got {chirality!r}")
    zero = torch.zeros_like(turn)
    t_turn = torch.tanh(turn)
    rl, du = torch.tanh(straight_r), torch.tanh(straight_d)
    ru, dl = (zero, t_turn) if chirality == "L" else (t_turn, zero)
    return torch.stack([torch.stack([rl, ru], dim=-1), torch.stack([dl, du], dim=-1)], dim=-2)
