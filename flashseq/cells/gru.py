"""torch.nn.GRU's cell. Gates (r, z, n), state (h).

The reset gate multiplies the recurrent part of the candidate only (``r * rh_n``, with the
recurrent bias inside), exactly as torch.nn.GRU does, which is why the step receives ``wx_t``
and ``rh_t`` separately instead of their sum.
"""
import torch

from .base import Cell


def gru_step(wx_t, rh_t, states):
    (h_prev,) = states
    r = torch.sigmoid(wx_t[:, 0] + rh_t[:, 0])
    z = torch.sigmoid(wx_t[:, 1] + rh_t[:, 1])
    n = torch.tanh(wx_t[:, 2] + r * rh_t[:, 2])
    h = (1 - z) * n + z * h_prev
    return (h,)


def gru_partials(wx_t, rh_t, states):
    """``gru_step``'s results and analytic local derivatives (layouts: ``PartialsFn``,
    base.py)."""
    (h_prev,) = states
    r = torch.sigmoid(wx_t[:, 0] + rh_t[:, 0])
    z = torch.sigmoid(wx_t[:, 1] + rh_t[:, 1])
    n = torch.tanh(wx_t[:, 2] + r * rh_t[:, 2])
    h = (1 - z) * n + z * h_prev
    dn = (1 - z) * (1 - n * n)  # d h / d (argument of tanh)
    d_r = dn * rh_t[:, 2] * r * (1 - r)
    d_z = (h_prev - n) * z * (1 - z)
    d_wx = torch.stack([d_r, d_z, dn], 1).unsqueeze(1)       # [B, 1, 3, NH, DH]
    d_rh = torch.stack([d_r, d_z, dn * r], 1).unsqueeze(1)   # rh_n is scaled by r
    d_states = z.unsqueeze(1).unsqueeze(1)                   # [B, 1, 1, NH, DH]
    return (h,), d_wx, d_rh, d_states


GRU = Cell("gru", ("r", "z", "n"), ("h",), gru_step,
           doc="n = tanh(wx_n + r*rh_n), h = (1-z)*n + z*h_prev", partials=gru_partials)
