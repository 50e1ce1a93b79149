"""Elman / tanh RNN cell (torch.nn.RNN with nonlinearity='tanh'). Gate (x), state (h)."""
import torch

from .base import Cell


def elman_step(wx_t, rh_t, states):
    return (torch.tanh(wx_t[:, 0] + rh_t[:, 0]),)


ELMAN = Cell("elman", ("x",), ("h",), elman_step, doc="h = tanh(wx + rh)")
