"""Pointwise helpers shared by the Triton cell functions.

The interpreter (TRITON_INTERPRET=1) has no libdevice, so tanh and logsigmoid are written with
tl.exp / tl.log / tl.sigmoid only; the same code compiles for the GPU.
"""
import triton
import triton.language as tl


@triton.jit
def tanh(x):
    # tanh(x) = 2 sigmoid(2x) - 1: no libdevice needed, and exact to fp32 rounding near 0 in
    # absolute terms, which is what the norm-wise tolerance measures.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def logsigmoid(x):
    # min(x, 0) - log(1 + exp(-|x|)) never overflows.
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))
