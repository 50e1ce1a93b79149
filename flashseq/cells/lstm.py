"""torch.nn.LSTM's cell. Gates (i, f, g, o), states (h, c)."""
import torch

from .base import Cell


def lstm_step(wx_t, rh_t, states):
    _, c_prev = states
    pre = wx_t + rh_t  # [B, 4, NH, DH]
    i = torch.sigmoid(pre[:, 0])
    f = torch.sigmoid(pre[:, 1])
    g = torch.tanh(pre[:, 2])
    o = torch.sigmoid(pre[:, 3])
    c = f * c_prev + i * g
    h = o * torch.tanh(c)
    return h, c


LSTM = Cell("lstm", ("i", "f", "g", "o"), ("h", "c"), lstm_step,
            doc="c = f*c + i*g, h = o*tanh(c); i, f, o sigmoid, g tanh")
