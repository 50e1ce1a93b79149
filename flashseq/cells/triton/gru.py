"""torch.nn.GRU's cell in Triton. Gates (r, z, n), state (h); see flashseq.cells.gru.

The reset gate multiplies rh_n only, so d wx_n and d rh_n differ (RH_GRAD_DIFFERS).
Every argument is an fp32 register block [BB, BH]; unused slots are passed through.
"""
import triton
import triton.language as tl

from .activations import tanh


@triton.jit
def gru_fwd(wx0, wx1, wx2, wx3, rh0, rh1, rh2, rh3, s0, s1, s2, s3):
    """New state (h, -, -, -) from the gate inputs and the previous h."""
    r = tl.sigmoid(wx0 + rh0)
    z = tl.sigmoid(wx1 + rh1)
    n = tanh(wx2 + r * rh2)
    h = (1.0 - z) * n + z * s0
    return h, s1, s2, s3


@triton.jit
def gru_bwd(wx0, wx1, wx2, wx3, rh0, rh1, rh2, rh3, s0, s1, s2, s3, d0, d1, d2, d3):
    """(d wx per gate, d rh per gate, d previous states) from d h; d h_prev excludes h_prev @ r."""
    r = tl.sigmoid(wx0 + rh0)
    z = tl.sigmoid(wx1 + rh1)
    n = tanh(wx2 + r * rh2)
    dn = d0 * (1.0 - z) * (1.0 - n * n)
    dz = d0 * (s0 - n) * z * (1.0 - z)
    dr = dn * rh2 * r * (1.0 - r)
    zero = tl.zeros_like(d0)
    return dr, dz, dn, zero, dr, dz, dn * r, zero, d0 * z, d1, d2, d3
