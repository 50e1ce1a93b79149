"""Linear-recurrence token mixers: gated linear attention, (gated) DeltaNet and mLSTM layers.

Each layer maps ``x [B, T, d_model] -> y [B, T, d_model]`` (batch first) through
q/k/v (and gate) projections, an optional short causal depthwise convolution on q, k, v, the
chunkwise recurrence of ``flashseq.ops`` (``chunk_gla``, ``chunk_delta_rule``, ``chunk_mlstm``),
a per-head RMS norm of the output, a SiLU output gate and an output projection.

Decoding: ``y_t, cache = layer.step(x_t, cache)`` runs one token ``[B, d_model]`` with the
recurrent twin (``fused_recurrent_*``); a loop of ``step`` equals ``forward`` on the whole
sequence. ``forward(x, cache=..., return_cache=True)`` continues from a cache and returns the new
one, so a prompt can be run in one call and then extended step by step.

A cache is a dict: ``"state"`` (the recurrence's float32 state, ``[B, H, K, V]``, for the mLSTM
the tuple ``(C, n, m)``) and ``"conv"`` (``[B, conv_size - 1, channels]``, the last inputs of the
convolution, or None without one).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flashseq.kernels.linear_scan import functional as ops

from . import checks


def _fp32_up(t):
    """Gates are computed in float32 (float64 stays float64)."""
    return t if t.dtype == torch.float64 else t.float()


class _LinearRecurrentLayer(nn.Module):
    """Shared parts: projections, short convolution, output norm and gate, cache handling."""

    op_chunk = None
    op_recurrent = None

    def __init__(self, d_model, num_heads, head_k_dim, head_v_dim, conv_size, backend, norm_eps,
                 device, dtype):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.d_model = checks.check_int("d_model", d_model, 1)
        self.num_heads = checks.check_int("num_heads", num_heads, 1)
        self.head_k_dim = checks.check_int("head_k_dim", head_k_dim, 1)
        self.head_v_dim = checks.check_int("head_v_dim", head_v_dim, 1)
        self.conv_size = checks.check_int("conv_size", conv_size, 0)
        if not isinstance(backend, str) or backend not in ("auto", "reference", "torch", "triton"):
            raise ValueError(f"backend must be 'auto', 'reference', 'torch' or 'triton'; got {backend!r}")
        self.backend = backend
        self.norm_eps = float(norm_eps)
        H, K, V = self.num_heads, self.head_k_dim, self.head_v_dim
        self.q_proj = nn.Linear(d_model, H * K, bias=False, **factory)
        self.k_proj = nn.Linear(d_model, H * K, bias=False, **factory)
        self.v_proj = nn.Linear(d_model, H * V, bias=False, **factory)
        self.gate_proj = nn.Linear(d_model, H * V, bias=False, **factory)
        self.o_proj = nn.Linear(H * V, d_model, bias=False, **factory)
        self.norm_weight = nn.Parameter(torch.ones(V, **factory))
        self.conv = None
        if self.conv_size > 1:
            channels = H * (2 * K + V)
            self.conv = nn.Conv1d(channels, channels, self.conv_size, groups=channels,
                                  padding=0, bias=False, **factory)

    # -- pieces -------------------------------------------------------------------------------
    def _short_conv(self, qkv, conv_cache):
        """Causal depthwise convolution + SiLU over [B, T, C]; returns (out, new conv cache)."""
        if self.conv is None:
            return qkv, None
        B, T, C = qkv.shape
        if conv_cache is None:
            conv_cache = qkv.new_zeros(B, self.conv_size - 1, C)
        full = torch.cat([conv_cache.to(qkv.dtype), qkv], 1)            # [B, W-1+T, C]
        out = self.conv(full.transpose(1, 2)).transpose(1, 2)            # [B, T, C]
        return F.silu(out), full[:, -(self.conv_size - 1):]

    def _qkv(self, x, conv_cache):
        H, K, V = self.num_heads, self.head_k_dim, self.head_v_dim
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], -1)
        qkv, conv_cache = self._short_conv(qkv, conv_cache)
        q, k, v = qkv.split([H * K, H * K, H * V], -1)
        B, T = x.shape[:2]
        return (q.reshape(B, T, H, K), k.reshape(B, T, H, K), v.reshape(B, T, H, V), conv_cache)

    def _output(self, x, o):
        """Per-head RMS norm, SiLU gate from x, output projection: [B, T, H, V] -> [B, T, d]."""
        o32 = _fp32_up(o)
        o32 = o32 * torch.rsqrt(o32.pow(2).mean(-1, keepdim=True) + self.norm_eps)
        o = (o32.to(x.dtype) * self.norm_weight).reshape(*x.shape[:2], -1)
        return self.o_proj(o * F.silu(self.gate_proj(x)))

    def _check_input(self, x, ndim):
        if not isinstance(x, torch.Tensor) or x.dim() != ndim or x.shape[-1] != self.d_model:
            layout = "[B, T, d_model]" if ndim == 3 else "[B, d_model]"
            got = (f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, torch.Tensor)
                   else type(x).__name__)
            raise ValueError(f"x must be {layout} with d_model = {self.d_model}; got {got}")

    def _recurrence(self, fn, x, q, k, v, state):
        raise NotImplementedError

    # -- public -------------------------------------------------------------------------------
    def forward(self, x, cache=None, return_cache=False):
        """x: [B, T, d_model] -> y: [B, T, d_model]; with ``return_cache`` -> (y, cache).
        ``cache`` (from ``step`` or an earlier call) continues a sequence. Default: None."""
        self._check_input(x, 3)
        cache = cache or {}
        q, k, v, conv_cache = self._qkv(x, cache.get("conv"))
        o, state = self._recurrence(type(self).op_chunk, x, q, k, v, cache.get("state"))
        y = self._output(x, o)
        return (y, {"state": state, "conv": conv_cache}) if return_cache else y

    def step(self, x_t, cache=None):
        """One decoding step: x_t [B, d_model] -> (y_t [B, d_model], cache). ``cache`` None
        starts a sequence."""
        self._check_input(x_t, 2)
        x = x_t[:, None]
        cache = cache or {}
        q, k, v, conv_cache = self._qkv(x, cache.get("conv"))
        o, state = self._recurrence(type(self).op_recurrent, x, q, k, v, cache.get("state"))
        return self._output(x, o)[:, 0], {"state": state, "conv": conv_cache}

    def extra_repr(self):
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_k_dim={self.head_k_dim}, "
                f"head_v_dim={self.head_v_dim}, conv_size={self.conv_size}")


class GatedLinearAttention(_LinearRecurrentLayer):
    """Gated linear attention (GLA) layer: per-channel forget gates
    ``g = logsigmoid(x W_g) / gate_normalizer`` on ``chunk_gla``.

    Args:
        d_model: features of x. num_heads: H. Default: 4.
        head_k_dim, head_v_dim: K and V per head. Default: d_model / num_heads each (or 16).
        conv_size: short causal convolution width on q, k, v; 0 or 1 = none. Default: 4.
        gate_normalizer: divides the log gates (keeps a fresh layer's memory long). Default: 16.
        backend: of the ops. Default: "auto". norm_eps: of the output RMS norm. Default: 1e-5.
        device, dtype: of the parameters.
    """

    op_chunk = staticmethod(ops.chunk_gla)
    op_recurrent = staticmethod(ops.fused_recurrent_gla)

    def __init__(self, d_model, num_heads=4, head_k_dim=None, head_v_dim=None, conv_size=4,
                 gate_normalizer=16.0, backend="auto", norm_eps=1e-5, device=None, dtype=None):
        dk = head_k_dim or max(1, d_model // num_heads)
        dv = head_v_dim or max(1, d_model // num_heads)
        super().__init__(d_model, num_heads, dk, dv, conv_size, backend, norm_eps, device, dtype)
        self.gate_normalizer = float(gate_normalizer)
        self.gk_proj = nn.Linear(d_model, num_heads * dk, bias=True, device=device, dtype=dtype)

    def _recurrence(self, fn, x, q, k, v, state):
        g = F.logsigmoid(_fp32_up(self.gk_proj(x))).reshape(q.shape) / self.gate_normalizer
        return fn(q, k, v, g, initial_state=state, output_final_state=True, backend=self.backend)


class DeltaNet(_LinearRecurrentLayer):
    """(Gated) DeltaNet layer: L2-normalised q and k, ``beta = sigmoid(x W_b)`` (times 2 with
    ``allow_neg_eigval``), and with ``gated`` a per-head decay ``g = logsigmoid(x W_a)``;
    ``chunk_delta_rule``. Arguments as ``GatedLinearAttention`` plus ``gated`` (Default: True)
    and ``allow_neg_eigval`` (beta in [0, 2]; Default: False)."""

    op_chunk = staticmethod(ops.chunk_delta_rule)
    op_recurrent = staticmethod(ops.fused_recurrent_delta_rule)

    def __init__(self, d_model, num_heads=4, head_k_dim=None, head_v_dim=None, conv_size=4,
                 gated=True, allow_neg_eigval=False, backend="auto", norm_eps=1e-5, device=None,
                 dtype=None):
        dk = head_k_dim or max(1, d_model // num_heads)
        dv = head_v_dim or max(1, d_model // num_heads)
        super().__init__(d_model, num_heads, dk, dv, conv_size, backend, norm_eps, device, dtype)
        self.gated = checks.check_bool("gated", gated)
        self.allow_neg_eigval = checks.check_bool("allow_neg_eigval", allow_neg_eigval)
        self.b_proj = nn.Linear(d_model, num_heads, bias=True, device=device, dtype=dtype)
        self.a_proj = (nn.Linear(d_model, num_heads, bias=True, device=device, dtype=dtype)
                       if self.gated else None)
        if self.gated:
            with torch.no_grad():   # decay near 1 at the start: logsigmoid(4) = -0.018
                self.a_proj.bias.fill_(4.0)

    def _recurrence(self, fn, x, q, k, v, state):
        q, k = (F.normalize(_fp32_up(t), dim=-1).to(v.dtype) for t in (q, k))
        beta = torch.sigmoid(_fp32_up(self.b_proj(x))) * (2.0 if self.allow_neg_eigval else 1.0)
        g = F.logsigmoid(_fp32_up(self.a_proj(x))) if self.gated else None
        return fn(q, k, v, beta, g=g, initial_state=state, output_final_state=True,
                  backend=self.backend)


class mLSTMLayer(_LinearRecurrentLayer):  # noqa: N801 (the model's published name)
    """xLSTM's mLSTM layer: per-head input and forget gate pre-activations from x, ``chunk_mlstm``
    (max-stabiliser and normaliser). Arguments as ``GatedLinearAttention`` (no
    gate_normalizer). The forget-gate bias runs from 3 to 6 over the heads, as in xLSTM."""

    op_chunk = staticmethod(ops.chunk_mlstm)
    op_recurrent = staticmethod(ops.fused_recurrent_mlstm)

    def __init__(self, d_model, num_heads=4, head_k_dim=None, head_v_dim=None, conv_size=4,
                 backend="auto", norm_eps=1e-5, device=None, dtype=None):
        dk = head_k_dim or max(1, d_model // num_heads)
        dv = head_v_dim or max(1, d_model // num_heads)
        super().__init__(d_model, num_heads, dk, dv, conv_size, backend, norm_eps, device, dtype)
        self.igate = nn.Linear(d_model, num_heads, bias=True, device=device, dtype=dtype)
        self.fgate = nn.Linear(d_model, num_heads, bias=True, device=device, dtype=dtype)
        with torch.no_grad():
            self.igate.bias.zero_()
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, num_heads))

    def _recurrence(self, fn, x, q, k, v, state):
        i, f = _fp32_up(self.igate(x)), _fp32_up(self.fgate(x))
        return fn(q, k, v, i, f, initial_state=state, output_final_state=True, backend=self.backend)


__all__ = ["GatedLinearAttention", "DeltaNet", "mLSTMLayer"]
