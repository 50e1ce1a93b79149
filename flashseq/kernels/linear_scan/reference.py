"""Ground truth for the chunkwise linear recurrences: each recurrence applied literally, one step
at a time (formulas in ``flashseq.kernels.linear_scan.functional``).

Pure PyTorch with no performance tricks, differentiable by autograd. States and arithmetic are
float64 for float64 inputs and float32 otherwise; outputs come back in q's dtype. Arguments are
those of the public ops, already validated, with ``scale`` a float; with ``cu_seqlens`` every
packed sequence runs on its own from its own initial state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(q):
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _per_sequence(run, tensors, initial_state, cu_seqlens):
    """Run ``run(tensors, initial_state) -> (o, final)`` on each packed sequence of B=1 inputs
    and put the results back together: o along T, final states along N."""
    if cu_seqlens is None:
        return run(tensors, initial_state)
    bounds = cu_seqlens.tolist()
    outs, finals = [], []
    for n, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        state = None
        if initial_state is not None:
            state = (tuple(s[n:n + 1] for s in initial_state) if isinstance(initial_state, tuple)
                     else initial_state[n:n + 1])
        o, final = run([t[:, lo:hi] for t in tensors], state)
        outs.append(o)
        finals.append(final)
    if isinstance(finals[0], tuple):
        final = tuple(torch.cat(parts, 0) for parts in zip(*finals))
    else:
        final = torch.cat(finals, 0)
    return torch.cat(outs, 1), final


def gla_reference(q, k, v, g, *, scale, initial_state=None, output_final_state=False,
                  cu_seqlens=None):
    """``S_t = exp(g_t)[:, None] * S_{t-1} + k_t^T v_t``, ``o_t = scale * q_t S_t``."""
    cd = _compute_dtype(q)

    def run(tensors, state):
        qs, ks, vs, gs = (t.to(cd) for t in tensors)
        B, T, H, K = qs.shape
        S = (qs.new_zeros(B, H, K, vs.shape[-1]) if state is None else state.to(cd))
        outs = []
        for t in range(T):
            S = gs[:, t].exp()[..., None] * S + ks[:, t, :, :, None] * vs[:, t, :, None, :]
            outs.append(scale * torch.einsum("bhk,bhkv->bhv", qs[:, t], S))
        return torch.stack(outs, 1), S

    o, final = _per_sequence(run, [q, k, v, g], initial_state, cu_seqlens)
    return o.to(q.dtype), (final if output_final_state else None)


def delta_rule_reference(q, k, v, beta, *, g=None, scale, initial_state=None,
                         output_final_state=False, cu_seqlens=None, num_householder=1):
    """``S' = exp(g_t) S_{t-1}``; then for each of the n_h Householder steps j
    ``S <- S + beta_tj k_tj^T (v_tj - k_tj S)``; ``o_t = scale * q_t S_t``."""
    cd = _compute_dtype(q)
    if num_householder == 1:  # give k, v, beta the n_h axis: [B, T, 1, H, .]
        k, v, beta = k.unsqueeze(2), v.unsqueeze(2), beta.unsqueeze(2)
    if g is None:
        g = beta.new_zeros(beta.shape[0], beta.shape[1], beta.shape[3])

    def run(tensors, state):
        qs, ks, vs, bs, gs = (t.to(cd) for t in tensors)
        B, T, H, K = qs.shape
        S = (qs.new_zeros(B, H, K, vs.shape[-1]) if state is None else state.to(cd))
        outs = []
        for t in range(T):
            S = gs[:, t].exp()[..., None, None] * S
            for j in range(ks.shape[2]):
                kt, vt, bt = ks[:, t, j], vs[:, t, j], bs[:, t, j]
                pred = torch.einsum("bhk,bhkv->bhv", kt, S)
                S = S + bt[..., None, None] * kt[..., :, None] * (vt - pred)[..., None, :]
            outs.append(scale * torch.einsum("bhk,bhkv->bhv", qs[:, t], S))
        return torch.stack(outs, 1), S

    o, final = _per_sequence(run, [q, k, v, beta, g], initial_state, cu_seqlens)
    return o.to(q.dtype), (final if output_final_state else None)


def mlstm_reference(q, k, v, i, f, *, scale, initial_state=None, output_final_state=False,
                    cu_seqlens=None, eps=1e-6):
    """xLSTM's mLSTM with its max-stabiliser m and normaliser n:
    ``lf = logsigmoid(f_t)``, ``m_t = max(lf + m_{t-1}, i_t)``,
    ``C_t = exp(lf + m_{t-1} - m_t) C_{t-1} + exp(i_t - m_t) k_t^T v_t``, n likewise with k_t,
    ``o_t = (scale q_t C_t) / (max(|scale q_t . n_t|, exp(-m_t)) + eps)``."""
    cd = _compute_dtype(q)

    def run(tensors, state):
        qs, ks, vs, is_, fs = (t.to(cd) for t in tensors)
        B, T, H, K = qs.shape
        if state is None:
            C = qs.new_zeros(B, H, K, vs.shape[-1])
            n = qs.new_zeros(B, H, K)
            m = qs.new_zeros(B, H)
        else:
            C, n, m = (s.to(cd) for s in state)
        outs = []
        for t in range(T):
            lf = F.logsigmoid(fs[:, t])
            m_new = torch.maximum(lf + m, is_[:, t])
            decay = (lf + m - m_new).exp()
            gain = (is_[:, t] - m_new).exp()
            kv = ks[:, t, :, :, None] * vs[:, t, :, None, :]
            C = decay[..., None, None] * C + gain[..., None, None] * kv
            n = decay[..., None] * n + gain[..., None] * ks[:, t]
            m = m_new
            sq = scale * qs[:, t]
            num = torch.einsum("bhk,bhkv->bhv", sq, C)
            den = torch.maximum((sq * n).sum(-1).abs(), (-m).exp()) + eps
            outs.append(num / den[..., None])
        return torch.stack(outs, 1), (C, n, m)

    o, final = _per_sequence(run, [q, k, v, i, f], initial_state, cu_seqlens)
    return o.to(q.dtype), (final if output_final_state else None)


__all__ = ["gla_reference", "delta_rule_reference", "mlstm_reference"]
