"""The input projection ``x @ weight.T + bias`` of the modules on CPU, through oneDNN when it can.

Why: ``F.linear`` on CPU calls MKL's sgemm, and MKL takes a slow code path on AMD processors.
Measured on the 2-core AMD EPYC (Zen 5, AVX-512) dev box, 1 thread, float32, [M, K] @ [K, N]:
M=2048 K=512 N=2048 120 ms with F.linear vs 42 ms with oneDNN's ``mkldnn::_linear_pointwise``;
M=700 K=200 N=800 6.7 vs 1.6 ms. torch.nn.LSTM/GRU run their whole CPU recurrence, projection
included, in oneDNN, so a module that projects with F.linear loses most of its margin there.

``linear(x, weight, bias)`` equals ``F.linear`` and is differentiable in x, weight and bias. The
oneDNN path is taken only for plain float32 CPU tensors in eager mode (not under torch.compile,
export, jit tracing or autocast) when torch was built with oneDNN; everything else, and any
backward that builds a graph (``create_graph=True``), runs the F.linear / matmul formulas.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from flashseq import _jit


def _op():
    """torch.ops.mkldnn._linear_pointwise, or None when this torch build lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


_LINEAR_POINTWISE = _op()


def _tracing() -> bool:
    return (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()
            or getattr(torch.compiler, "is_exporting", lambda: False)())


# plain tensors only: a subclass (FakeTensor, a functional or DTensor wrapper) takes F.linear
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _forward_ad_active() -> bool:
    """Whether tangents can be flowing: a forward_ad dual level is open or a functorch transform
    (torch.func.jvp, vmap, grad) runs. Why: the oneDNN op has no forward derivative, so a dual x
    would come back with its tangent silently dropped; F.linear has one."""
    return fwAD._current_level >= 0 or torch._C._are_functorch_transforms_active()


def _fast_path_ok(x, weight, bias) -> bool:
    if _LINEAR_POINTWISE is None or _tracing() or _forward_ad_active():
        return False
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (all(type(t) in _PLAIN and t.device.type == "cpu" and t.dtype == torch.float32
                and t.layout == torch.strided for t in tensors)
            and x.dim() >= 1 and x.numel() > 0 and not torch.is_autocast_enabled("cpu"))


def _mm(a, b_t):
    """a [M, K] @ b_t.T, b_t [N, K] (a transposed view is fine), through oneDNN."""
    return _LINEAR_POINTWISE(a, b_t, None, "none", [], "")


def _blocked_weight_grad():
    """The compiled ``linear_weight_grad(x, dy) -> (dy.T @ x, dy.sum(0))`` when it runs its
    AVX-512 kernel on this CPU, else None. Why: oneDNN's linear contracts the contiguous axis of
    both operands, so ``dy.T @ x`` through it first copies dy [M, N] transposed (26 MB for an
    LSTM's gates at H=256, B*T=6400: the copy cost more than the product); the kernel reads dy
    as it is (csrc/cpu/weight_grad.h)."""
    if _jit.extension_error() is not None:
        return None
    ext = _jit.extension()
    return ext.linear_weight_grad if ext._linear_weight_grad_fast() else None


def _blocked_pays(rows: int, features: int) -> bool:
    """Whether the compiled weight gradient beats oneDNN's for x [rows, features]. Measured
    (1 thread, CPU time, paired, AMD EPYC with AVX-512; the same rule as the recurrent weight
    gradient in csrc/cpu/fused_rnn_backward.cpp): x [700, 200] -> 0.82 of oneDNN's time. Two
    shapes lost while the kernel's k-blocks were 256 KB and its transposes scalar, and are served
    since the blocks take half the L2 (the extension's ``_grad_gemm_max_rows``: 512 features from
    a 1 MB L2 on) and the transposes run 16 x 16 in zmm registers: [2048, 512] (1.12 then; the
    module LSTM I=H=512 B=16 T=128 fwd+bwd 0.963 of its time now, with the recurrent one) and
    [256, 256] (1.2 then; module LSTM I=H=256 B=1 T=256 0.989 now). Fewer rows than features
    stay with oneDNN (not measured since)."""
    if _jit.extension_error() is not None:
        return False
    return features <= _jit.extension()._grad_gemm_max_rows() and rows >= features


class _OneDnnLinear(torch.autograd.Function):
    """F.linear on 2-D x [M, K] with oneDNN GEMMs in both directions."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _LINEAR_POINTWISE(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph: differentiable formulas (double backward)
            dx = dy @ weight if need_x else None
            dw = dy.t() @ x if need_w else None
        else:
            dx = _mm(dy, weight.t()) if need_x else None   # dy [M, N] @ weight [N, K]
            blocked = _blocked_weight_grad() if need_w and _blocked_pays(*x.shape) else None
            if blocked is not None:  # dw and the column sums of dy in one pass over dy
                dw, db = blocked(x, dy)
                return dx, dw, db if need_b and ctx.has_bias else None
            dw = _mm(dy.t(), x.t()) if need_w else None    # dy.T [N, M] @ x [M, K]
        db = dy.sum(0) if need_b and ctx.has_bias else None
        return dx, dw, db


def linear(x, weight, bias=None):
    """``F.linear(x, weight, bias)``: x [..., K], weight [N, K], bias [N] or None -> [..., N]."""
    if not _fast_path_ok(x, weight, bias):
        return F.linear(x, weight, bias)
    x2 = x.reshape(-1, x.shape[-1])
    if not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad
                                           or (bias is not None and bias.requires_grad)):
        # no graph to record: the op itself (an autograd Function's apply costs ~10 us)
        out = _LINEAR_POINTWISE(x2, weight, bias, "none", [], "")
    else:
        out = _OneDnnLinear.apply(x2, weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0])
