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


GRU = Cell("gru", ("r", "z", "n"), ("h",), gru_step,
           doc="n = tanh(wx_n + r*rh_n), h = (1-z)*n + z*h_prev")
