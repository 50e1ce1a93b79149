"""Elman / tanh RNN cell (torch.nn.RNN with nonlinearity='tanh'). Gate (x), state (h)."""
import torch

from .base import Cell


def elman_step(wx_t, rh_t, states):
    return (torch.tanh(wx_t[:, 0] + rh_t[:, 0]),)


def elman_partials(wx_t, rh_t, states):
    """``elman_step``'s results and analytic local derivatives (layouts: ``PartialsFn``,
    base.py)."""
    h = torch.tanh(wx_t[:, 0] + rh_t[:, 0])
    d_pre = (1 - h * h)[:, None, None]  # [B, 1, 1, NH, DH]
    return (h,), d_pre, d_pre, torch.zeros_like(d_pre)


ELMAN = Cell("elman", ("x",), ("h",), elman_step, doc="h = tanh(wx + rh)", partials=elman_partials)
