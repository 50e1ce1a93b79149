"""LayerNorm GRU. Gates (r, z, n), state (h).

The norm is placed as in the layer-normalised LSTM of Ba, Kiros and Hinton 2016 ("Layer
Normalization", arXiv:1607.06450, section on recurrent networks): the input part and the
recurrent part of the gate pre-activations are normalised separately, per row and per head over
all G*DH values of the head, and the bias ``b`` is added after the norm. The reset gate scales
the normalised recurrent candidate with its bias, as torch.nn.GRU scales ``W_hn h + b_hn``:

    a = LN(wx_t),  u = LN(h_prev @ r) + b
    r = sigmoid(a_r + u_r),  z = sigmoid(a_z + u_z),  n = tanh(a_n + r * u_n)
    h = (1 - z) * n + z * h_prev

A GRU has no cell state, so there is no third norm. Unit gain, zero bias, eps = 1e-5 (see
layernorm_lstm.py for why).
"""
import torch

from .layernorm import NormCell, normalize_gates


def layernorm_gru_step(wx_t, rh_t, states):
    """One step; ``rh_t`` is ``LN(h_prev @ r) + b`` (the reference loop builds it)."""
    (h_prev,) = states
    a = normalize_gates(wx_t)
    r = torch.sigmoid(a[:, 0] + rh_t[:, 0])
    z = torch.sigmoid(a[:, 1] + rh_t[:, 1])
    n = torch.tanh(a[:, 2] + r * rh_t[:, 2])
    h = (1 - z) * n + z * h_prev
    return (h,)


LAYERNORM_GRU = NormCell(
    "layernorm_gru", ("r", "z", "n"), ("h",), layernorm_gru_step,
    doc="a = LN(wx), u = LN(h_prev @ r) + b, n = tanh(a_n + r*u_n), h = (1-z)*n + z*h_prev",
    normalize_recurrent=normalize_gates)
