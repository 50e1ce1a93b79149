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


def lstm_partials(wx_t, rh_t, states):
    """``lstm_step``'s results and analytic local derivatives (layouts: ``PartialsFn``,
    base.py)."""
    _, c_prev = states
    pre = wx_t + rh_t
    i = torch.sigmoid(pre[:, 0])
    f = torch.sigmoid(pre[:, 1])
    g = torch.tanh(pre[:, 2])
    o = torch.sigmoid(pre[:, 3])
    c = f * c_prev + i * g
    tc = torch.tanh(c)
    h = o * tc
    # d c / d pre per gate (o does not reach c)
    dc = torch.stack([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g),
                      torch.zeros_like(o)], 1)
    dh_dc = o * (1 - tc * tc)
    dh = dh_dc.unsqueeze(1) * dc
    dh[:, 3] = tc * o * (1 - o)
    d_pre = torch.stack([dh, dc], 1)  # [B, 2, 4, NH, DH]; wx and rh enter only as their sum
    zero = torch.zeros_like(f)
    d_states = torch.stack([torch.stack([zero, dh_dc * f], 1),  # dh / d(h_prev, c_prev)
                            torch.stack([zero, f], 1)], 1)       # dc / d(h_prev, c_prev)
    return (h, c), d_pre, d_pre, d_states


LSTM = Cell("lstm", ("i", "f", "g", "o"), ("h", "c"), lstm_step,
            doc="c = f*c + i*g, h = o*tanh(c); i, f, o sigmoid, g tanh", partials=lstm_partials)
