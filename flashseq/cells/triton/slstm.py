"""xLSTM's sLSTM cell in Triton. Gates (i, f, z, o), states (h, c, n, m); see flashseq.cells.slstm.

At a tie in m = max(lf + m_prev, i~) the gradient goes to lf + m_prev, as in the reference.
Every argument is an fp32 register block [BB, BH].
"""
import triton
import triton.language as tl

from .activations import logsigmoid, tanh


@triton.jit
def slstm_fwd(wx0, wx1, wx2, wx3, rh0, rh1, rh2, rh3, s0, s1, s2, s3):
    """New states (h, c, n, m) from the gate inputs and the previous (h, c, n, m)."""
    it = wx0 + rh0
    lfm = logsigmoid(wx1 + rh1) + s3
    m = tl.where(lfm >= it, lfm, it)
    i = tl.exp(it - m)
    f = tl.exp(lfm - m)
    c = f * s1 + i * tanh(wx2 + rh2)
    n = f * s2 + i
    h = tl.sigmoid(wx3 + rh3) * c / n
    return h, c, n, m


@triton.jit
def slstm_bwd(wx0, wx1, wx2, wx3, rh0, rh1, rh2, rh3, s0, s1, s2, s3, d0, d1, d2, d3):
    """(d wx per gate, d rh per gate, d previous states) from d (h, c, n, m), exact through m."""
    it = wx0 + rh0
    ft = wx1 + rh1
    lfm = logsigmoid(ft) + s3
    take_lf = lfm >= it
    m = tl.where(take_lf, lfm, it)
    i = tl.exp(it - m)
    f = tl.exp(lfm - m)
    z = tanh(wx2 + rh2)
    o = tl.sigmoid(wx3 + rh3)
    c = f * s1 + i * z
    n = f * s2 + i
    dc = d1 + d0 * o / n
    dn = d2 - d0 * o * c / (n * n)
    do = d0 * (c / n) * o * (1.0 - o)
    dz = dc * i * (1.0 - z * z)
    di_exp = (dc * z + dn) * i          # d loss / d (it - m) through i
    df_exp = (dc * s1 + dn * s2) * f    # d loss / d (lfm - m) through f
    dm = d3 - di_exp - df_exp
    dit = di_exp + tl.where(take_lf, 0.0, dm)
    dlfm = df_exp + tl.where(take_lf, dm, 0.0)
    dft = dlfm * tl.sigmoid(-ft)
    zero = tl.zeros_like(d0)
    return dit, dft, dz, do, dit, dft, dz, do, zero, dc * f, dn * f, dlfm
