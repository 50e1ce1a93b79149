"""torch.nn.LSTM's cell in Triton. Gates (i, f, g, o), states (h, c); see flashseq.cells.lstm.

Every argument is an fp32 register block [BB, BH]; unused gate/state slots are passed through.
"""
import triton
import triton.language as tl

from .activations import tanh


@triton.jit
def lstm_fwd(wx0, wx1, wx2, wx3, rh0, rh1, rh2, rh3, s0, s1, s2, s3):
    """New states (h, c, -, -) from the gate inputs and the previous states (h, c)."""
    i = tl.sigmoid(wx0 + rh0)
    f = tl.sigmoid(wx1 + rh1)
    g = tanh(wx2 + rh2)
    o = tl.sigmoid(wx3 + rh3)
    c = f * s1 + i * g
    h = o * tanh(c)
    return h, c, s2, s3


@triton.jit
def lstm_bwd(wx0, wx1, wx2, wx3, rh0, rh1, rh2, rh3, s0, s1, s2, s3, d0, d1, d2, d3):
    """Gradients (d wx per gate, d rh per gate, d previous states) from the gradients d0, d1 of
    the new (h, c). The h_prev -> h_prev @ r path is the kernel's business, so d h_prev = 0."""
    i = tl.sigmoid(wx0 + rh0)
    f = tl.sigmoid(wx1 + rh1)
    g = tanh(wx2 + rh2)
    o = tl.sigmoid(wx3 + rh3)
    c = f * s1 + i * g
    tc = tanh(c)
    dc = d1 + d0 * o * (1.0 - tc * tc)
    di = dc * g * i * (1.0 - i)
    df = dc * s1 * f * (1.0 - f)
    dg = dc * i * (1.0 - g * g)
    do = d0 * tc * o * (1.0 - o)
    zero = tl.zeros_like(d0)
    return di, df, dg, do, di, df, dg, do, zero, dc * f, d2, d3
