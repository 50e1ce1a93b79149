"""Linearisation of a whole sequence of cell steps around a guess, in the scan's group layout.

The joint state of one step is x_t = (s_t[0], ..., s_t[S-1]) (h first). Its layout as N groups of
m coupled values, the form the scans take:

- ``structure="diag"``: one group per (row, head, unit), m = S: unit e of head n only sees its
  own previous values, so its Jacobian is an S x S block (2 x 2 for LSTM's (h, c)).
- ``structure="block"``: one group per (row, head), m = S * DH, index ``s * DH + d``: head n sees
  its whole previous h through ``r[:, n]`` (DH x DH), so the Jacobian is (S DH) x (S DH).

``J_t = d x_t / d x_{t-1}`` comes from the cell's analytic partials (flashseq/cells):
``J[(s', e), (s, d)] = d_states[s', s, e] [d == e] + [s == 0] sum_g d_rh[s', g, e] r[g, d, e]``.
Steps at or past a row's length are the identity (J = I, x_t = x_{t-1}).
"""
from __future__ import annotations

import torch


def to_groups(x: torch.Tensor, structure: str) -> torch.Tensor:
    """[B, T, S, NH, DH] -> [N, T, m] (see the module docstring)."""
    B, T, S, NH, DH = x.shape
    if structure == "diag":
        return x.permute(0, 3, 4, 1, 2).reshape(B * NH * DH, T, S)
    return x.permute(0, 3, 1, 2, 4).reshape(B * NH, T, S * DH)


def from_groups(x: torch.Tensor, structure: str, B: int, S: int, NH: int, DH: int) -> torch.Tensor:
    """[N, T, m] -> [B, T, S, NH, DH]; the inverse of ``to_groups``."""
    T = x.shape[1]
    if structure == "diag":
        return x.reshape(B, NH, DH, T, S).permute(0, 3, 4, 1, 2)
    return x.reshape(B, NH, T, S, DH).permute(0, 2, 3, 1, 4)


def previous(X: torch.Tensor, states0: torch.Tensor) -> torch.Tensor:
    """The states entering every step: [B, T, S, NH, DH] from X (after each step) and states0
    [S, B, NH, DH]."""
    return torch.cat([states0.transpose(0, 1).unsqueeze(1), X[:, :-1]], 1)


def recurrent_input(h_prev: torch.Tensor, r: torch.Tensor, b: torch.Tensor, structure: str):
    """rh = h_prev @ r + b per gate: h_prev [B, T, NH, DH] -> [B, T, G, NH, DH]."""
    if structure == "diag":
        return h_prev.unsqueeze(2) * r + b
    return torch.einsum("btnd,gnde->btgne", h_prev, r) + b


def evaluate(wx, r, b, X_prev, cell, structure, valid):
    """One cell step at every t from X_prev [B, T, S, NH, DH] (all steps at once).

    Returns ``(F, d_wx, d_rh, d_states)``: F [B, T, S, NH, DH] the states after each step (the
    previous ones where ``valid`` [B, T] bool is False), and the cell's partials reshaped to
    [B, T, ...] (layouts in flashseq/cells/base.py).
    """
    B, T, G, NH, DH = wx.shape
    S = X_prev.shape[2]
    if valid is not None:
        # padding may hold anything (NaN included); it must not reach a value or a derivative
        wx = torch.where(valid.view(B, T, 1, 1, 1), wx, torch.zeros_like(wx))
    rh = recurrent_input(X_prev[:, :, 0], r, b, structure)
    flat = lambda t: t.reshape(B * T, *t.shape[2:])  # noqa: E731
    new, d_wx, d_rh, d_states = cell.partials(flat(wx), flat(rh), list(flat(X_prev).unbind(1)))
    F = torch.stack(new, 1).view(B, T, S, NH, DH)
    if valid is not None:
        F = torch.where(valid.view(B, T, 1, 1, 1), F, X_prev)
    unflat = lambda t: t.reshape(B, T, *t.shape[1:])  # noqa: E731
    return F, unflat(d_wx), unflat(d_rh), unflat(d_states)


def jacobian(d_rh, d_states, r, structure, valid):
    """J [N, T, m, m] in group layout (module docstring) from the partials [B, T, ...]."""
    B, T, S, G, NH, DH = d_rh.shape
    if structure == "diag":
        # [B, T, S', NH, DH]: the path through rh reaches only the h column (s = 0)
        through_r = (d_rh * r).sum(3)
        J = d_states.clone()  # [B, T, S', S, NH, DH]
        J[:, :, :, 0] += through_r
        J = J.permute(0, 4, 5, 1, 2, 3)  # [B, NH, DH, T, S', S]
        if valid is not None:
            eye = torch.eye(S, dtype=J.dtype, device=J.device)
            J = torch.where(valid.view(B, 1, 1, T, 1, 1), J, eye)
        return J.reshape(B * NH * DH, T, S, S)
    # block, built in place in the group layout [B, NH, T, S', e, S, d] (rows (s', e), columns
    # (s, d)): one einsum for the path through r, no permuted copy of the full J afterwards
    m = S * DH
    J = d_rh.new_empty(B, NH, T, S, DH, S, DH)
    J[:, :, :, :, :, 1:].zero_()
    through_r = torch.einsum("btsgne,gnde->btsned", d_rh, r)  # [B, T, S', NH, e, d]
    J[:, :, :, :, :, 0].copy_(through_r.permute(0, 3, 1, 2, 4, 5))
    diag = torch.diagonal(J, dim1=4, dim2=6)        # view [B, NH, T, S', S, DH]
    diag += d_states.permute(0, 4, 1, 2, 3, 5)
    J = J.view(B, NH, T, m, m)
    if valid is not None:
        eye = torch.eye(m, dtype=J.dtype, device=J.device)
        J = torch.where(valid.view(B, 1, T, 1, 1), J, eye)
    return J.reshape(B * NH, T, m, m)
