"""Triton pieces of the LayerNorm cells (flashseq/cells/layernorm*.py) for the extras kernels.

Blocks are fp32 [BB, DHP] with the head's DH units on the columns (padded to DHP; ``m_d`` [DHP]
marks the real ones). ``norm_gates`` normalises each row over the G*DH pre-activations of its
head (the G blocks together), ``norm_units`` over the DH units of one block; both have unit gain,
zero bias and eps 1e-5 as ``flashseq.cells.layernorm``. Their backward takes the normalised
values and 1/std the forward returns: ``dx = rstd * (dy - mean(dy) - y * mean(dy * y))``.
Padded lanes come out 0 so they never reach a sum or a dot.

``ln_lstm_fwd``/``ln_lstm_bwd`` are the LayerNorm LSTM's pointwise step (LN(c) before the
tanh); the LayerNorm GRU's step is the GRU's (``flashseq.cells.triton.gru``) on LN(wx).
"""
import triton
import triton.language as tl

from flashseq.cells.triton.activations import tanh

EPS = tl.constexpr(1e-5)  # a global a jit function may read must be a constexpr


@triton.jit
def _masked_sum(x, mk):
    return tl.sum(tl.where(mk, x, 0.0), axis=1)


@triton.jit
def norm_gates(x0, x1, x2, x3, m_d, count, G: tl.constexpr):
    """(y0..y3, rstd [BB]): the G blocks normalised together per row; y_g = 0 for g >= G.
    ``count`` = G * DH as fp32."""
    mk = m_d[None, :]
    tot = _masked_sum(x0, mk)
    if G > 1:
        tot += _masked_sum(x1, mk)
    if G > 2:
        tot += _masked_sum(x2, mk)
    if G > 3:
        tot += _masked_sum(x3, mk)
    mean = (tot / count)[:, None]
    c0 = tl.where(mk, x0 - mean, 0.0)
    c1 = tl.zeros_like(c0)
    c2 = tl.zeros_like(c0)
    c3 = tl.zeros_like(c0)
    sq = tl.sum(c0 * c0, axis=1)
    if G > 1:
        c1 = tl.where(mk, x1 - mean, 0.0)
        sq += tl.sum(c1 * c1, axis=1)
    if G > 2:
        c2 = tl.where(mk, x2 - mean, 0.0)
        sq += tl.sum(c2 * c2, axis=1)
    if G > 3:
        c3 = tl.where(mk, x3 - mean, 0.0)
        sq += tl.sum(c3 * c3, axis=1)
    rstd = 1.0 / tl.sqrt_rn(sq / count + EPS)
    rs = rstd[:, None]
    return c0 * rs, c1 * rs, c2 * rs, c3 * rs, rstd


@triton.jit
def norm_gates_bwd(y0, y1, y2, y3, dy0, dy1, dy2, dy3, rstd, m_d, count, G: tl.constexpr):
    """d x per gate block from d y, the normalised y and rstd of ``norm_gates``."""
    mk = m_d[None, :]
    s1 = _masked_sum(dy0, mk)
    s2 = _masked_sum(dy0 * y0, mk)
    if G > 1:
        s1 += _masked_sum(dy1, mk)
        s2 += _masked_sum(dy1 * y1, mk)
    if G > 2:
        s1 += _masked_sum(dy2, mk)
        s2 += _masked_sum(dy2 * y2, mk)
    if G > 3:
        s1 += _masked_sum(dy3, mk)
        s2 += _masked_sum(dy3 * y3, mk)
    m1 = (s1 / count)[:, None]
    m2 = (s2 / count)[:, None]
    rs = rstd[:, None]
    dx0 = tl.where(mk, rs * (dy0 - m1 - y0 * m2), 0.0)
    dx1 = tl.where(mk, rs * (dy1 - m1 - y1 * m2), 0.0)
    dx2 = tl.where(mk, rs * (dy2 - m1 - y2 * m2), 0.0)
    dx3 = tl.where(mk, rs * (dy3 - m1 - y3 * m2), 0.0)
    return dx0, dx1, dx2, dx3


@triton.jit
def norm_units(x, m_d, count):
    """(y, rstd): one block normalised per row over its DH units (``count`` = DH as fp32)."""
    mk = m_d[None, :]
    mean = (_masked_sum(x, mk) / count)[:, None]
    c = tl.where(mk, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt_rn(tl.sum(c * c, axis=1) / count + EPS)
    return c * rstd[:, None], rstd


@triton.jit
def norm_units_bwd(y, dy, rstd, m_d, count):
    mk = m_d[None, :]
    m1 = (_masked_sum(dy, mk) / count)[:, None]
    m2 = (_masked_sum(dy * y, mk) / count)[:, None]
    return tl.where(mk, rstd[:, None] * (dy - m1 - y * m2), 0.0)


@triton.jit
def ln_lstm_fwd(z0, z1, z2, z3, c_prev, m_d, count):
    """(h, c) of the LayerNorm LSTM from the pre-activations z = LN(wx) + LN(h_prev @ r) + b
    and c_prev."""
    i = tl.sigmoid(z0)
    f = tl.sigmoid(z1)
    g = tanh(z2)
    o = tl.sigmoid(z3)
    c = f * c_prev + i * g
    cn, _ = norm_units(c, m_d, count)
    return o * tanh(cn), c


@triton.jit
def ln_lstm_bwd(z0, z1, z2, z3, c_prev, d_h, d_c, m_d, count):
    """(d z_i, d z_f, d z_g, d z_o, d c_prev) from the pre-activations z and the gradients of
    the new (h, c); z = LN(wx) + rh, so d LN(wx) = d rh = d z."""
    i = tl.sigmoid(z0)
    f = tl.sigmoid(z1)
    g = tanh(z2)
    o = tl.sigmoid(z3)
    c = f * c_prev + i * g
    cn, rstd = norm_units(c, m_d, count)
    tc = tanh(cn)
    dc = d_c + norm_units_bwd(cn, d_h * o * (1.0 - tc * tc), rstd, m_d, count)
    di = dc * g * i * (1.0 - i)
    df = dc * c_prev * f * (1.0 - f)
    dg = dc * i * (1.0 - g * g)
    do = d_h * tc * o * (1.0 - o)
    return di, df, dg, do, dc * f
