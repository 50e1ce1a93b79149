"""xLSTM's sLSTM cell: exponential input gate, normaliser n and stabiliser m.

Gates (i, f, z, o), states (h, c, n, m). With x~ = wx_x + rh_x:
``lf = logsigmoid(f~)``, ``m = max(lf + m_prev, i~)``, ``i = exp(i~ - m)``,
``f = exp(lf + m_prev - m)``, ``c = f*c_prev + i*tanh(z~)``, ``n = f*n_prev + i``,
``h = sigmoid(o~) * c / n``.

At a tie in the max the whole gradient goes to ``lf + m_prev`` (a fixed sub-gradient that
every kernel reproduces; ``torch.maximum`` would split it in halves).
"""
import torch
import torch.nn.functional as F

from .base import Cell


def slstm_step(wx_t, rh_t, states):
    _, c_prev, n_prev, m_prev = states
    pre = wx_t + rh_t  # [B, 4, NH, DH]
    i_tilde, f_tilde, z_tilde, o_tilde = pre.unbind(1)
    lf_m = F.logsigmoid(f_tilde) + m_prev
    m = torch.where(lf_m >= i_tilde, lf_m, i_tilde)
    i = torch.exp(i_tilde - m)
    f = torch.exp(lf_m - m)
    c = f * c_prev + i * torch.tanh(z_tilde)
    n = f * n_prev + i
    h = torch.sigmoid(o_tilde) * c / n
    return h, c, n, m


SLSTM = Cell("slstm", ("i", "f", "z", "o"), ("h", "c", "n", "m"), slstm_step,
             doc="exponential gating with normaliser n and stabiliser m")
