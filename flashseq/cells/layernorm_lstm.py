"""LayerNorm LSTM (Ba, Kiros and Hinton 2016, "Layer Normalization", arXiv:1607.06450, section
on recurrent networks, the layer-normalised LSTM). Gates (i, f, g, o), states (h, c).

Placement, per row and per head (heads are independent recurrences; with one head this is the
paper's formulation over all 4*DH gate pre-activations):

    pre = LN(wx_t) + LN(h_prev @ r) + b          LN over the G*DH pre-activations of the head
    c   = sigmoid(f) * c_prev + sigmoid(i) * tanh(g)
    h   = sigmoid(o) * tanh(LN(c))               LN over the DH units of the head

The norms have unit gain and zero bias (no learnable parameters inside the cell); eps = 1e-5.
The paper's biases of the two gate norms add up to one per-unit bias, which is ``b`` here
(added after the norm, unlike the plain LSTM where ``b`` enters with ``h_prev @ r``); a bias in
``wx`` is removed up to its deviation from the head's mean by LN, so ``b`` is where a bias
belongs. The paper's gains are fixed at 1 (their usual initialisation); learnable gains would
need arguments of ``fused_rnn`` of their own.
"""
import torch

from .layernorm import NormCell, layer_norm, normalize_gates


def layernorm_lstm_step(wx_t, rh_t, states):
    """One step; ``rh_t`` is ``LN(h_prev @ r) + b`` (the reference loop builds it)."""
    _, c_prev = states
    pre = normalize_gates(wx_t) + rh_t  # [B, 4, NH, DH]
    i = torch.sigmoid(pre[:, 0])
    f = torch.sigmoid(pre[:, 1])
    g = torch.tanh(pre[:, 2])
    o = torch.sigmoid(pre[:, 3])
    c = f * c_prev + i * g
    h = o * torch.tanh(layer_norm(c, 1))
    return h, c


LAYERNORM_LSTM = NormCell(
    "layernorm_lstm", ("i", "f", "g", "o"), ("h", "c"), layernorm_lstm_step,
    doc="pre = LN(wx) + LN(h_prev @ r) + b, c = f*c + i*g, h = o*tanh(LN(c))",
    normalize_recurrent=normalize_gates)
