"""Elman (tanh) cell in Triton. Gate (x), state (h); see flashseq.cells.elman.

Every argument is an fp32 register block [BB, BH]; unused slots are passed through.
"""
import triton
import triton.language as tl

from .activations import tanh


@triton.jit
def elman_fwd(wx0, wx1, wx2, wx3, rh0, rh1, rh2, rh3, s0, s1, s2, s3):
    """New state (h, -, -, -)."""
    return tanh(wx0 + rh0), s1, s2, s3


@triton.jit
def elman_bwd(wx0, wx1, wx2, wx3, rh0, rh1, rh2, rh3, s0, s1, s2, s3, d0, d1, d2, d3):
    """(d wx, d rh, d previous states) from d h; d h_prev excludes h_prev @ r."""
    h = tanh(wx0 + rh0)
    dx = d0 * (1.0 - h * h)
    zero = tl.zeros_like(d0)
    return dx, zero, zero, zero, dx, zero, zero, zero, zero, d1, d2, d3
