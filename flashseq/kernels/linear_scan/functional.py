"""Public entry points of the chunkwise linear recurrences (``flashseq.ops.chunk_*`` and their
recurrent twins ``flashseq.ops.fused_recurrent_*``).

``chunk_gla``'s docstring is the one place the layouts are defined; the others point there.
"""
from __future__ import annotations

from . import backends, chunk_torch, reference
from .problem import resolve_scale, validate_delta, validate_gla, validate_mlstm


def _run(op, backend, problem, recurrent, caller, args, kwargs):
    name = backends.choose(backend, problem, recurrent, caller)
    if name == "triton":
        # imported here: its custom ops import torch._dynamo (and so triton)
        from . import triton_ops
        return triton_ops.run(op, recurrent, *args, **kwargs)
    fn = {("gla", "reference"): reference.gla_reference,
          ("delta", "reference"): reference.delta_rule_reference,
          ("mlstm", "reference"): reference.mlstm_reference,
          ("gla", "torch"): chunk_torch.gla_chunk,
          ("delta", "torch"): chunk_torch.delta_rule_chunk,
          ("mlstm", "torch"): chunk_torch.mlstm_chunk}[(op, name)]
    return fn(*args, **kwargs)


def chunk_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
              cu_seqlens=None, backend="auto"):
    """Gated linear attention, computed chunkwise:
    ``S_t = exp(g_t)[:, None] * S_{t-1} + k_t^T v_t``, ``o_t = scale * q_t S_t``.

    This docstring defines the layouts of every op of the family (``chunk_*``,
    ``fused_recurrent_*``); they are those of flash-linear-attention.

    Args:
        q: [B, T, H, K] float16/bfloat16/float32/float64. Queries; B batch, T steps, H heads,
            K key head dim (1..256).
        k: [B, T, H, K], q's dtype and device. Keys.
        v: [B, T, H, V], q's dtype and device. Values; V value head dim (1..256).
        g: [B, T, H, K], any float dtype, q's device. Log forget gate per key channel (<= 0,
            e.g. ``logsigmoid(x)``; not checked: values are data).
        scale: float. Default: None, ``K ** -0.5``.
        initial_state: [N, H, K, V] float32 (float64 with float64 inputs) or None. The state
            before the first step of each sequence (N = B, or the number of packed sequences).
            Default: None, zeros.
        output_final_state: bool. Return the state after each sequence's last step. Default: False.
        cu_seqlens: [N+1] int32/int64 (CPU or q's device) or None. With B = 1, the T steps hold N
            packed sequences, sequence n covering steps cu_seqlens[n] .. cu_seqlens[n+1]-1
            (strictly increasing, from 0 to T); each starts from its own initial_state[n].
            Default: None, the B rows are the sequences.
        backend: "auto", "torch" (chunkwise PyTorch), "reference" (step loop) or "triton".
            Default: "auto" (see ``flashseq.kernels.linear_scan.backends``).

    Returns:
        o: [B, T, H, V], q's dtype.
        final_state: [N, H, K, V] float32 (float64 for float64 inputs), or None unless
            output_final_state.

    Differentiable with respect to q, k, v, g and initial_state.

    Examples:
        >>> import torch, torch.nn.functional as F, flashseq
        >>> q, k, g = torch.randn(3, 2, 10, 4, 16).unbind(0)   # B=2, T=10, H=4, K=16
        >>> v = torch.randn(2, 10, 4, 32)
        >>> o, S = flashseq.ops.chunk_gla(q, k, v, F.logsigmoid(g), output_final_state=True)
        >>> o.shape, S.shape
        (torch.Size([2, 10, 4, 32]), torch.Size([2, 4, 16, 32]))
    """
    problem = validate_gla(q, k, v, g, scale, initial_state, cu_seqlens)
    kwargs = dict(scale=resolve_scale(scale, problem.k_dim), initial_state=initial_state,
                  output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    return _run("gla", backend, problem, False, "chunk_gla", (q, k, v, g), kwargs)


def fused_recurrent_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
                        cu_seqlens=None, backend="auto"):
    """``chunk_gla`` computed step by step (for decoding); same arguments, layouts and results."""
    problem = validate_gla(q, k, v, g, scale, initial_state, cu_seqlens)
    kwargs = dict(scale=resolve_scale(scale, problem.k_dim), initial_state=initial_state,
                  output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    return _run("gla", backend, problem, True, "fused_recurrent_gla", (q, k, v, g), kwargs)


def chunk_delta_rule(q, k, v, beta, *, g=None, scale=None, initial_state=None,
                     output_final_state=False, cu_seqlens=None, num_householder=1,
                     backend="auto"):
    """The (gated) delta rule, computed chunkwise through its WY representation:
    ``S' = exp(g_t) S_{t-1}``, ``S_t = S' + beta_t k_t^T (v_t - k_t S')``, ``o_t = scale * q_t S_t``.

    Layouts and the shared arguments (scale, initial_state, output_final_state, cu_seqlens,
    backend) as in ``chunk_gla``.

    Args:
        q: [B, T, H, K]. k: [B, T, H, K] (callers normalise it, e.g. L2 per head). v: [B, T, H, V].
        beta: [B, T, H], any float dtype. Write strength; [0, 2] allows negative eigenvalues of
            the transition (not checked: values are data).
        g: [B, T, H] or None. Log decay (<= 0), the gated delta rule. Default: None, no decay.
        num_householder: n_h >= 1 (DeltaProduct). For n_h > 1, k is [B, T, n_h, H, K], v
            [B, T, n_h, H, V] and beta [B, T, n_h, H]: per step the decay is applied once, then
            the n_h updates in order, then o_t is read. Default: 1.

    Returns:
        o: [B, T, H, V], q's dtype; final_state: [N, H, K, V] float32 or None.

    Differentiable with respect to q, k, v, beta, g and initial_state.
    """
    problem = validate_delta(q, k, v, beta, g, scale, initial_state, cu_seqlens, num_householder)
    kwargs = dict(g=g, scale=resolve_scale(scale, problem.k_dim), initial_state=initial_state,
                  output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                  num_householder=num_householder)
    return _run("delta", backend, problem, False, "chunk_delta_rule", (q, k, v, beta), kwargs)


def fused_recurrent_delta_rule(q, k, v, beta, *, g=None, scale=None, initial_state=None,
                               output_final_state=False, cu_seqlens=None, num_householder=1,
                               backend="auto"):
    """``chunk_delta_rule`` computed step by step; same arguments, layouts and results."""
    problem = validate_delta(q, k, v, beta, g, scale, initial_state, cu_seqlens, num_householder)
    kwargs = dict(g=g, scale=resolve_scale(scale, problem.k_dim), initial_state=initial_state,
                  output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                  num_householder=num_householder)
    return _run("delta", backend, problem, True, "fused_recurrent_delta_rule", (q, k, v, beta), kwargs)


def chunk_mlstm(q, k, v, i, f, *, scale=None, initial_state=None, output_final_state=False,
                cu_seqlens=None, backend="auto"):
    """xLSTM's mLSTM (matrix memory, exponential input gate, max-stabiliser m, normaliser n),
    computed chunkwise: ``lf = logsigmoid(f_t)``, ``m_t = max(lf + m_{t-1}, i_t)``,
    ``C_t = exp(lf + m_{t-1} - m_t) C_{t-1} + exp(i_t - m_t) k_t^T v_t``, n likewise with k_t,
    ``o_t = (scale q_t C_t) / (max(|scale q_t . n_t|, exp(-m_t)) + 1e-6)``.

    Layouts and the shared arguments as in ``chunk_gla``.

    Args:
        q, k: [B, T, H, K]. v: [B, T, H, V].
        i, f: [B, T, H], any float dtype. Input and forget gate pre-activations.
        initial_state: tuple (C [N, H, K, V], n [N, H, K], m [N, H]), float32, or None (all
            zeros, m = 0 too). Default: None.

    Returns:
        o: [B, T, H, V], q's dtype; final_state: (C, n, m) float32 or None.

    Differentiable with respect to q, k, v, i, f and the three initial states, exactly (the
    stabiliser m included).
    """
    problem = validate_mlstm(q, k, v, i, f, scale, initial_state, cu_seqlens)
    kwargs = dict(scale=resolve_scale(scale, problem.k_dim),
                  initial_state=None if initial_state is None else tuple(initial_state),
                  output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    return _run("mlstm", backend, problem, False, "chunk_mlstm", (q, k, v, i, f), kwargs)


def fused_recurrent_mlstm(q, k, v, i, f, *, scale=None, initial_state=None,
                          output_final_state=False, cu_seqlens=None, backend="auto"):
    """``chunk_mlstm`` computed step by step; same arguments, layouts and results."""
    problem = validate_mlstm(q, k, v, i, f, scale, initial_state, cu_seqlens)
    kwargs = dict(scale=resolve_scale(scale, problem.k_dim),
                  initial_state=None if initial_state is None else tuple(initial_state),
                  output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    return _run("mlstm", backend, problem, True, "fused_recurrent_mlstm", (q, k, v, i, f), kwargs)


__all__ = ["chunk_gla", "fused_recurrent_gla", "chunk_delta_rule", "fused_recurrent_delta_rule",
           "chunk_mlstm", "fused_recurrent_mlstm"]
