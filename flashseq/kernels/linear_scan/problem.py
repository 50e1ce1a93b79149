"""Argument validation for the chunkwise linear recurrences and the description back ends read.

Every entry point (``chunk_*`` and ``fused_recurrent_*``) calls one ``validate_*`` function here;
it raises ``TypeError``/``ValueError`` naming the argument, its shape, dtype and device, and
returns a ``LinearProblem`` (sizes only, no tensors).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from flashseq.kernels._checks import FLOAT_DTYPES, check_device, describe
from flashseq.kernels._checks import check_float_tensor as _tensor
from flashseq.kernels._checks import check_scale as _check_scale
from flashseq.kernels._checks import check_shape as _shape

STATE_DTYPES = (torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


@dataclass(frozen=True)
class LinearProblem:
    """What a back end needs to accept or refuse a call."""

    op: str                  # "gla", "delta" or "mlstm"
    batch: int               # B
    steps: int               # T
    heads: int               # H
    k_dim: int               # K
    v_dim: int               # V
    num_seqs: int            # N: B, or len(cu_seqlens) - 1
    num_householder: int     # DeltaProduct steps per token (1 for gla and mlstm)
    dtype: torch.dtype       # of q, k, v
    device: torch.device
    has_gate: bool           # delta rule: g given
    varlen: bool

    @property
    def compute_dtype(self) -> torch.dtype:
        """States and accumulations: float64 for float64 inputs, else float32."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32


def _same_device(name, t, q):
    check_device(name, t, q.device, "q")


def _check_cu_seqlens(cu_seqlens, B, T, q):
    """Number of sequences N: B without cu_seqlens, else len(cu_seqlens) - 1."""
    if cu_seqlens is None:
        return B
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be an int32/int64 tensor [N+1] or None; "
                        f"got {type(cu_seqlens).__name__}")
    if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in INDEX_DTYPES or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be a 1-D int32/int64 tensor [N+1] with N >= 1; "
                         f"got {describe(cu_seqlens)}")
    if cu_seqlens.device.type != "cpu" and cu_seqlens.device != q.device:
        raise ValueError(f"cu_seqlens must be on the CPU or on q's device {q.device}; "
                         f"got {describe(cu_seqlens)}")
    if B != 1:
        raise ValueError(f"cu_seqlens packs N sequences along T and requires B = 1; q has "
                         f"B = {B} ({describe(q)})")
    values = cu_seqlens.tolist()
    if values[0] != 0 or values[-1] != T:
        raise ValueError(f"cu_seqlens must start at 0 and end at T = {T}; got {values[0]} ... "
                         f"{values[-1]}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"cu_seqlens must be strictly increasing (every sequence has >= 1 step); "
                         f"got {values if len(values) <= 16 else str(values[:16]) + ' ...'}")
    return len(values) - 1


def _check_state(name, t, expected, layout, q):
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a float32 tensor {layout} or None; got {type(t).__name__}")
    if t.dtype not in STATE_DTYPES:
        raise TypeError(f"{name} must be float32 (float64 allowed) {layout}; got {describe(t)}")
    _shape(name, t, expected, layout)
    _same_device(name, t, q)


def _check_qkv(q):
    _tensor("q", q, 4, "[B, T, H, K]")
    B, T, H, K = q.shape
    if B == 0 or T == 0 or H == 0 or K == 0:
        raise ValueError(f"q must have B, T, H, K >= 1; got {describe(q)}")
    if K > 256:
        raise ValueError(f"the key head dim K must be <= 256; got {describe(q)}")
    return B, T, H, K


def _check_kv_dtype(name, t, q):
    if t.dtype != q.dtype:
        raise TypeError(f"{name} must have q's dtype {q.dtype}; got {describe(t)}")
    _same_device(name, t, q)


def _v_dim(v, layout):
    V = v.shape[-1]
    if V == 0 or V > 256:
        raise ValueError(f"v's head dim V must be in 1..256 ({layout}); got {describe(v)}")
    return V


def _check_k_v(q, k, v):
    """k [B, T, H, K] (q's shape) and v [B, T, H, V] of one key per step; returns V."""
    B, T, H, _ = q.shape
    _tensor("k", k, 4, "[B, T, H, K]")
    _shape("k", k, q.shape, "[B, T, H, K] (q's shape)")
    _check_kv_dtype("k", k, q)
    _tensor("v", v, 4, "[B, T, H, V]")
    V = _v_dim(v, "[B, T, H, V]")
    _shape("v", v, (B, T, H, V), "[B, T, H, V]")
    _check_kv_dtype("v", v, q)
    return V


def validate_gla(q, k, v, g, scale, initial_state, cu_seqlens) -> LinearProblem:
    """Check ``chunk_gla``/``fused_recurrent_gla`` arguments (layouts in ``chunk_gla``)."""
    B, T, H, K = _check_qkv(q)
    V = _check_k_v(q, k, v)
    _tensor("g", g, 4, "[B, T, H, K]")
    _shape("g", g, q.shape, "[B, T, H, K] (q's shape)")
    _same_device("g", g, q)
    _check_scale(scale)
    N = _check_cu_seqlens(cu_seqlens, B, T, q)
    _check_state("initial_state", initial_state, (N, H, K, V), "[N, H, K, V]", q)
    return LinearProblem("gla", B, T, H, K, V, N, 1, q.dtype, q.device, True, cu_seqlens is not None)


def validate_delta(q, k, v, beta, g, scale, initial_state, cu_seqlens, num_householder):
    """Check ``chunk_delta_rule``/``fused_recurrent_delta_rule`` arguments."""
    if isinstance(num_householder, bool) or not isinstance(num_householder, int) or num_householder < 1:
        raise ValueError(f"num_householder must be an int >= 1; got {num_householder!r}")
    nh = num_householder
    B, T, H, K = _check_qkv(q)
    if nh == 1:
        kl, vl, bl = "[B, T, H, K]", "[B, T, H, V]", "[B, T, H]"
        _tensor("k", k, 4, kl)
        _tensor("v", v, 4, vl)
        _tensor("beta", beta, 3, bl)
        lead = (B, T)
    else:
        kl, vl, bl = (f"[B, T, n_h, H, K] (num_householder={nh})",
                      f"[B, T, n_h, H, V] (num_householder={nh})",
                      f"[B, T, n_h, H] (num_householder={nh})")
        _tensor("k", k, 5, kl)
        _tensor("v", v, 5, vl)
        _tensor("beta", beta, 4, bl)
        lead = (B, T, nh)
    V = _v_dim(v, vl)
    _shape("k", k, (*lead, H, K), kl)
    _check_kv_dtype("k", k, q)
    _shape("v", v, (*lead, H, V), vl)
    _check_kv_dtype("v", v, q)
    _shape("beta", beta, (*lead, H), bl)
    _same_device("beta", beta, q)
    if g is not None:
        _tensor("g", g, 3, "[B, T, H]")
        _shape("g", g, (B, T, H), "[B, T, H]")
        _same_device("g", g, q)
    _check_scale(scale)
    N = _check_cu_seqlens(cu_seqlens, B, T, q)
    _check_state("initial_state", initial_state, (N, H, K, V), "[N, H, K, V]", q)
    return LinearProblem("delta", B, T, H, K, V, N, nh, q.dtype, q.device, g is not None,
                         cu_seqlens is not None)


def validate_mlstm(q, k, v, i, f, scale, initial_state, cu_seqlens) -> LinearProblem:
    """Check ``chunk_mlstm``/``fused_recurrent_mlstm`` arguments."""
    B, T, H, K = _check_qkv(q)
    V = _check_k_v(q, k, v)
    for name, t in (("i", i), ("f", f)):
        _tensor(name, t, 3, "[B, T, H]")
        _shape(name, t, (B, T, H), "[B, T, H]")
        _same_device(name, t, q)
    _check_scale(scale)
    N = _check_cu_seqlens(cu_seqlens, B, T, q)
    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 3:
            raise TypeError("initial_state of the mLSTM must be a tuple (C [N, H, K, V], "
                            f"n [N, H, K], m [N, H]) or None; got {type(initial_state).__name__}")
        C0, n0, m0 = initial_state
        _check_state("initial_state[0] (C)", C0, (N, H, K, V), "[N, H, K, V]", q)
        _check_state("initial_state[1] (n)", n0, (N, H, K), "[N, H, K]", q)
        _check_state("initial_state[2] (m)", m0, (N, H), "[N, H]", q)
    return LinearProblem("mlstm", B, T, H, K, V, N, 1, q.dtype, q.device, True, cu_seqlens is not None)


def resolve_scale(scale, K) -> float:
    return K ** -0.5 if scale is None else float(scale)


__all__ = ["LinearProblem", "validate_gla", "validate_delta", "validate_mlstm", "resolve_scale",
           "describe", "FLOAT_DTYPES"]
