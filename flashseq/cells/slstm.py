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


def slstm_partials(wx_t, rh_t, states):
    """``slstm_step``'s results and analytic local derivatives (layouts: ``PartialsFn``,
    base.py), with the same tie rule in the max as ``slstm_step``."""
    _, c_prev, n_prev, m_prev = states
    pre = wx_t + rh_t
    i_tilde, f_tilde, z_tilde, o_tilde = pre.unbind(1)
    lf_m = F.logsigmoid(f_tilde) + m_prev
    took_f = (lf_m >= i_tilde).to(pre.dtype)  # 1 where m = lf + m_prev, 0 where m = i~
    took_i = 1 - took_f
    m = torch.where(lf_m >= i_tilde, lf_m, i_tilde)
    i = torch.exp(i_tilde - m)
    f = torch.exp(lf_m - m)
    tz = torch.tanh(z_tilde)
    c = f * c_prev + i * tz
    n = f * n_prev + i
    so = torch.sigmoid(o_tilde)
    h = so * c / n
    zero = torch.zeros_like(f)
    dlf = torch.sigmoid(-f_tilde)  # d logsigmoid(f~) / d f~
    # d(m, i, f) / d(i~, f~, m_prev): m follows whichever side of the max it took
    dm = (took_i, took_f * dlf, took_f)
    di = (i * took_f, -i * dm[1], -i * took_f)
    df = (-f * took_i, f * dlf * took_i, f * took_i)
    dc = [c_prev * a + tz * b for a, b in zip(df, di)]
    dn = [n_prev * a + b for a, b in zip(df, di)]
    dh = [so * (a - c * b / n) / n for a, b in zip(dc, dn)]
    # columns: gates (i~, f~, z~, o~)
    d_pre = torch.stack([
        torch.stack([dh[0], dh[1], so * i * (1 - tz * tz) / n, h * (1 - so)], 1),
        torch.stack([dc[0], dc[1], i * (1 - tz * tz), zero], 1),
        torch.stack([dn[0], dn[1], zero, zero], 1),
        torch.stack([dm[0], dm[1], zero, zero], 1)], 1)  # [B, 4, 4, NH, DH]
    # columns: previous states (h, c, n, m); h_prev reaches the step only through rh
    d_states = torch.stack([
        torch.stack([zero, so * f / n, -h * f / n, dh[2]], 1),
        torch.stack([zero, f, zero, dc[2]], 1),
        torch.stack([zero, zero, f, dn[2]], 1),
        torch.stack([zero, zero, zero, dm[2]], 1)], 1)  # [B, 4, 4, NH, DH]
    return (h, c, n, m), d_pre, d_pre, d_states


SLSTM = Cell("slstm", ("i", "f", "z", "o"), ("h", "c", "n", "m"), slstm_step,
             doc="exponential gating with normaliser n and stabiliser m", partials=slstm_partials)
