"""The "beyond torch.nn" keyword arguments of ``fused_rnn``: their validation and their masks.

Every random mask is drawn here, in the entry point, before any back end runs, so a back end
receives plain tensors and the same generator state gives the same masks whichever back end
runs the call. Order and shapes (each drawn only when its probability is > 0, each as
``torch.rand(shape, dtype=torch.float32, device=wx.device, generator=generator)``, float32
whatever wx's dtype so the masks do not depend on it):

1. dropconnect ``[G, NH, DH, DH]`` (r's shape): a weight is kept where ``u >= p``; kept weights
   are scaled by ``1 / (1 - p)`` (inverted dropout). One mask for the whole sequence.
2. variational_dropout ``[B, NH, DH]``: ``h_{t-1}`` entering the recurrence (``h_{t-1} @ r``)
   is kept where ``u >= p`` and scaled by ``1 / (1 - p)``. One mask per sequence (row), the same
   at every step. The states themselves (and the output h) are not masked.
3. zoneout ``[T, S, B, NH, DH]``: state s of row b keeps its previous value at step t where
   ``u < p_h`` (s = 0, h) or ``u < p_c`` (s >= 1: c of the LSTM, c, n, m of the sLSTM). Not
   scaled. The kept h is also that step's output.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Extras:
    """The masks and flags a back end serving the extras receives (None where unused).

    dropconnect: [G, NH, DH, DH] wx's dtype, 0 or 1/(1-p), multiplies r.
    variational: [B, NH, DH] wx's dtype, 0 or 1/(1-p), multiplies h_{t-1} before ``@ r``.
    zoneout: [T, S, B, NH, DH] bool, True where the state keeps its previous value.
    reset: [B, T] bool on wx's device, True where the states return to their initial value
        before step t.
    return_all_states: also return every step's states [T, S, B, NH, DH].
    """

    dropconnect: Optional[torch.Tensor] = None
    variational: Optional[torch.Tensor] = None
    zoneout: Optional[torch.Tensor] = None
    reset: Optional[torch.Tensor] = None
    return_all_states: bool = False


def check_probability(name: str, p, upper_closed: bool) -> float:
    """``p`` as a float in [0, 1] (``upper_closed``) or [0, 1); TypeError / ValueError naming
    ``name`` otherwise."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a float probability; got {type(p).__name__} {p!r}")
    p = float(p)
    if not (0.0 <= p <= 1.0 if upper_closed else 0.0 <= p < 1.0):
        allowed = "[0, 1]" if upper_closed else "[0, 1) (p = 1 would drop everything)"
        raise ValueError(f"{name} must lie in {allowed}; got {p!r}")
    return p


def check_regularisers(owner: str, dropconnect, variational_dropout, zoneout, num_states: int):
    """The three regularisers checked: ``(dropconnect, variational_dropout, (p_h, p_c))`` as
    floats. ``num_states`` is the cell's state count (1: h only, so p_c must be 0); ``owner``
    names the cell or module in that error. Shared by ``fused_rnn`` and the nn modules'
    constructors so both accept and reject the same values."""
    p_dc = check_probability("dropconnect", dropconnect, upper_closed=False)
    p_var = check_probability("variational_dropout", variational_dropout, upper_closed=False)
    if not isinstance(zoneout, (tuple, list)) or len(zoneout) != 2:
        raise TypeError(f"zoneout must be a pair (p_h, p_c) of probabilities in [0, 1]; got "
                        f"{type(zoneout).__name__} {zoneout!r}")
    p_h = check_probability("zoneout[0] (p_h)", zoneout[0], upper_closed=True)
    p_c = check_probability("zoneout[1] (p_c)", zoneout[1], upper_closed=True)
    if p_c > 0 and num_states == 1:
        raise ValueError(f"zoneout[1] (p_c) = {p_c} but {owner} has no state besides h; use "
                         "zoneout=(p_h, 0.0)")
    return p_dc, p_var, (p_h, p_c)


def validate_extras(wx, cell, *, dropconnect, variational_dropout, zoneout, generator, reset,
                    return_all_states):
    """Check the extra keyword arguments against ``wx`` [B, T, G, NH, DH] and ``cell``.

    Returns ``(p_dropconnect, p_variational, (p_h, p_c), names)`` with ``names`` the tuple of
    the extras this call uses (what a back end must serve), in a fixed order. Raises
    ``TypeError``/``ValueError`` naming the argument.
    """
    B, T = wx.shape[:2]
    p_dc, p_var, (p_zh, p_zc) = check_regularisers(
        f"cell {cell.name!r} (states {cell.state_names})", dropconnect, variational_dropout,
        zoneout, cell.num_states)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None; got "
                            f"{type(generator).__name__}")
        gen_device = torch.device(generator.device)
        if gen_device.type != wx.device.type or (
                gen_device.index is not None and wx.device.index is not None
                and gen_device.index != wx.device.index):
            raise ValueError(f"generator must be on wx's device {wx.device} (the masks are drawn "
                             f"there); got a generator on {gen_device}")
    if reset is not None:
        if not isinstance(reset, torch.Tensor):
            raise TypeError(f"reset must be a bool torch.Tensor [B, T] or None; got "
                            f"{type(reset).__name__}")
        if reset.dtype != torch.bool:
            raise TypeError(f"reset must have dtype torch.bool ([B, T]); got shape "
                            f"{tuple(reset.shape)}, dtype {reset.dtype}")
        if tuple(reset.shape) != (B, T):
            raise ValueError(f"reset must have shape [B, T] = {(B, T)}; got shape "
                             f"{tuple(reset.shape)}, dtype {reset.dtype}")
        if reset.device.type != "cpu" and reset.device != wx.device:
            raise ValueError(f"reset must be on the CPU or on wx's device {wx.device}; got "
                             f"device {reset.device}")
    if not isinstance(return_all_states, bool):
        raise TypeError(f"return_all_states must be a bool; got {type(return_all_states).__name__}")
    names = tuple(name for name, used in (
        ("dropconnect", p_dc > 0), ("variational_dropout", p_var > 0),
        ("zoneout", p_zh > 0 or p_zc > 0), ("reset", reset is not None),
        ("return_all_states", return_all_states)) if used)
    return p_dc, p_var, (p_zh, p_zc), names


def _uniform(shape, wx, generator):
    return torch.rand(shape, dtype=torch.float32, device=wx.device, generator=generator)


def draw_extras(wx, r, cell, p_dc, p_var, zoneout, generator, reset, return_all_states) -> Extras:
    """Draw the masks in the order and shapes of this module's docstring."""
    B, T, _, NH, DH = wx.shape
    extras = Extras(return_all_states=return_all_states)
    if p_dc > 0:
        keep = _uniform(r.shape, wx, generator) >= p_dc
        extras.dropconnect = keep.to(wx.dtype) / (1.0 - p_dc)
    if p_var > 0:
        keep = _uniform((B, NH, DH), wx, generator) >= p_var
        extras.variational = keep.to(wx.dtype) / (1.0 - p_var)
    p_h, p_c = zoneout
    if p_h > 0 or p_c > 0:
        S = cell.num_states
        u = _uniform((T, S, B, NH, DH), wx, generator)
        p = torch.tensor([p_h] + [p_c] * (S - 1), dtype=torch.float32, device=wx.device)
        extras.zoneout = u < p.view(1, S, 1, 1, 1)
    if reset is not None:
        extras.reset = reset.to(device=wx.device)
    return extras
