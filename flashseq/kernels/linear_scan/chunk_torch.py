"""``backend="torch"``: the chunkwise algorithm in plain PyTorch (CPU, or any device).

T is cut into chunks of BT steps. Within a chunk everything is a batched matrix product over all
chunks at once (the intra-chunk part); a short Python loop over the NT chunks carries the state
from one chunk to the next (the inter-chunk part). Gates are cumulated in log space in the
compute dtype (float32, float64 for float64 inputs), and every exponential is of a difference that
is <= 0, so no factor overflows whatever the gates are:

gla     ``b = cumsum(g)`` per chunk; the intra-chunk scores ``sum_k q_rk k_sk exp(b_rk - b_sk)`` are
        formed exactly from a [BT, BT, K] block (hence the small default chunk of 16);
delta   the WY/UT representation: with ``L[r, s] = beta_r exp(G_r - G_s) k_r . k_s`` (s < r) and
        ``T = (I + L)^-1`` (one triangular solve per chunk), the pseudo-values of a chunk are
        ``u = T (beta v) - T (beta exp(G) k) S_0``;
mlstm   the stabiliser of every step is ``m_r = F_r + max(m_0, cummax_s<=r(i_s - F_s))`` (F the
        cumulated log forget gate), so every weight ``exp(F_r - F_s + i_s - m_r)`` is <= 1.

Differentiable by autograd (it is ordinary PyTorch). DeltaProduct runs the delta rule over the
T * n_h Householder steps, decay on the first of each token's steps, reading every n_h-th output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .varlen import pad_batch, unpad

DEFAULT_CHUNK = {"gla": 16, "delta": 64, "mlstm": 64}


def _compute_dtype(q):
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _chunks(x, chunk):
    """[N, NT*BT, H, ...] -> [N, H, NT, BT, ...]."""
    N, TP, H = x.shape[:3]
    x = x.reshape(N, TP // chunk, chunk, H, *x.shape[3:])
    return x.movedim(3, 1)


def _unchunk(x):
    """[N, H, NT, BT, D] -> [N, NT*BT, H, D]."""
    N, H, NT, BT, D = x.shape
    return x.movedim(1, 3).reshape(N, NT * BT, H, D)


def _masks(chunk, device):
    idx = torch.arange(chunk, device=device)
    return idx[:, None] >= idx[None, :], idx[:, None] > idx[None, :]   # inclusive, strict


def _initial(state, shape, dtype, device):
    return torch.zeros(shape, dtype=dtype, device=device) if state is None else state.to(dtype)


def gla_chunk(q, k, v, g, *, scale, initial_state=None, output_final_state=False,
              cu_seqlens=None, chunk_size=None):
    """``chunk_gla`` (arguments and results as documented there)."""
    BT = chunk_size or DEFAULT_CHUNK["gla"]
    cd = _compute_dtype(q)
    (qp, kp, vp, gp), layout = pad_batch([t.to(cd) for t in (q, k, v, g)], [0.0] * 4, BT, cu_seqlens)
    qc, kc, vc, gc = (_chunks(t, BT) for t in (qp, kp, vp, gp))   # [N, H, NT, BT, .]
    N, H, NT, _, K = qc.shape
    incl, _ = _masks(BT, q.device)
    b = gc.cumsum(3)                                                  # [N, H, NT, BT, K]
    diff = b[..., :, None, :] - b[..., None, :, :]                    # [.., BT(r), BT(s), K]
    decay = torch.where(incl[..., None], diff, diff.new_tensor(float("-inf"))).exp()
    scores = torch.einsum("...rk,...sk,...rsk->...rs", qc, kc, decay)
    o_intra = scores @ vc                                             # [N, H, NT, BT, V]
    q_in = qc * b.exp()                                               # reads S_0 of its chunk
    b_last = b[..., -1:, :]                                           # [N, H, NT, 1, K]
    k_out = kc * (b_last - b).exp()                                   # writes S_end
    S = _initial(initial_state, (N, H, K, vc.shape[-1]), cd, q.device)
    starts = []
    # unbind once: indexing chunk n in the loop would make autograd write a full-size gradient
    # per chunk (quadratic in NT)
    for keep, k_n, v_n in zip(b_last[..., 0, :, None].exp().unbind(2), k_out.unbind(2), vc.unbind(2)):
        starts.append(S)
        S = keep * S + k_n.transpose(-1, -2) @ v_n
    o_inter = q_in @ torch.stack(starts, 2)
    o = unpad(_unchunk(scale * (o_inter + o_intra)), layout)
    return o.to(q.dtype), (S if output_final_state else None)


def _householder_steps(q, k, v, beta, g, nh):
    """DeltaProduct as a delta rule over T * n_h steps: ([B, T*nh, H, .] tensors, decay on the
    first step of each token, q only on the last)."""
    B, T, _, H, _ = k.shape
    flat = [t.reshape(B, T * nh, *t.shape[3:]) for t in (k, v, beta)]
    g_steps = torch.zeros(B, T, nh, H, dtype=g.dtype, device=g.device)
    g_steps = torch.cat([g.unsqueeze(2), g_steps[:, :, 1:]], 2).reshape(B, T * nh, H)
    q_steps = torch.cat([torch.zeros_like(q).unsqueeze(2).expand(-1, -1, nh - 1, -1, -1),
                         q.unsqueeze(2)], 2).reshape(B, T * nh, H, q.shape[-1])
    return q_steps, *flat, g_steps


def delta_rule_chunk(q, k, v, beta, *, g=None, scale, initial_state=None,
                     output_final_state=False, cu_seqlens=None, num_householder=1,
                     chunk_size=None):
    """``chunk_delta_rule`` (arguments and results as documented there)."""
    BT = chunk_size or DEFAULT_CHUNK["delta"]
    cd = _compute_dtype(q)
    B, T, H = q.shape[:3]
    nh = num_householder
    out_dtype = q.dtype
    g = torch.zeros(B, T, H, dtype=cd, device=q.device) if g is None else g.to(cd)
    q, k, v, beta = (t.to(cd) for t in (q, k, v, beta))
    if nh > 1:
        q, k, v, beta, g = _householder_steps(q, k, v, beta, g, nh)
        if cu_seqlens is not None:
            cu_seqlens = cu_seqlens * nh
    (qp, kp, vp, bp, gp), layout = pad_batch([q, k, v, beta, g], [0.0] * 5, BT, cu_seqlens)
    qc, kc, vc = (_chunks(t, BT) for t in (qp, kp, vp))               # [N, H, NT, BT, .]
    bc, gc = (_chunks(t.unsqueeze(-1), BT)[..., 0] for t in (bp, gp))  # [N, H, NT, BT]
    N, H, NT, _, K = qc.shape
    incl, strict = _masks(BT, q.device)
    G = gc.cumsum(-1)
    diff = G[..., :, None] - G[..., None, :]
    neg_inf = diff.new_tensor(float("-inf"))
    L = bc[..., :, None] * torch.where(strict, diff, neg_inf).exp() * (kc @ kc.transpose(-1, -2))
    eye = torch.eye(BT, dtype=cd, device=q.device)
    Tinv = torch.linalg.solve_triangular(eye + L, eye.expand_as(L), upper=False, unitriangular=True)
    u_v = Tinv @ (bc[..., None] * vc)                                 # [N, H, NT, BT, V]
    w = Tinv @ ((bc * G.exp())[..., None] * kc)                       # [N, H, NT, BT, K]
    attn = torch.where(incl, diff, neg_inf).exp() * (qc @ kc.transpose(-1, -2))
    q_in = qc * G.exp()[..., None]
    k_out = kc * (G[..., -1:] - G).exp()[..., None]
    S = _initial(initial_state, (N, H, K, vc.shape[-1]), cd, q.device)
    outs = []
    per_chunk = (t.unbind(2) for t in (u_v, w, q_in, attn, G[..., -1, None, None].exp(), k_out))
    for u_n, w_n, q_n, a_n, keep, k_n in zip(*per_chunk):
        u = u_n - w_n @ S
        outs.append(q_n @ S + a_n @ u)
        S = keep * S + k_n.transpose(-1, -2) @ u
    o = unpad(_unchunk(scale * torch.stack(outs, 2)), layout)
    if nh > 1:
        o = o.reshape(o.shape[0], -1, nh, H, o.shape[-1])[:, :, -1]
    return o.to(out_dtype), (S if output_final_state else None)


def mlstm_chunk(q, k, v, i, f, *, scale, initial_state=None, output_final_state=False,
                cu_seqlens=None, chunk_size=None, eps=1e-6):
    """``chunk_mlstm`` (arguments and results as documented there)."""
    BT = chunk_size or DEFAULT_CHUNK["mlstm"]
    cd = _compute_dtype(q)
    lf = F.logsigmoid(f.to(cd))
    tensors = [t.to(cd) for t in (q, k, v, i)] + [lf]
    # padding: input gate -inf (no write), log forget gate 0 (no decay)
    (qp, kp, vp, ip, lfp), layout = pad_batch(tensors, [0.0, 0.0, 0.0, float("-inf"), 0.0], BT,
                                              cu_seqlens)
    qc, kc, vc = (_chunks(t, BT) for t in (qp, kp, vp))
    ic, lfc = (_chunks(t.unsqueeze(-1), BT)[..., 0] for t in (ip, lfp))  # [N, H, NT, BT]
    N, H, NT, _, K = qc.shape
    V = vc.shape[-1]
    incl, _ = _masks(BT, q.device)
    Fc = lfc.cumsum(-1)
    best_in = (ic - Fc).cummax(-1).values             # max_{s<=r} (i_s - F_s) within the chunk
    scores = scale * (qc @ kc.transpose(-1, -2))      # [N, H, NT, BT, BT]
    log_w = Fc[..., :, None] - Fc[..., None, :] + ic[..., None, :]
    if initial_state is None:
        C = torch.zeros(N, H, K, V, dtype=cd, device=q.device)
        n_vec = torch.zeros(N, H, K, dtype=cd, device=q.device)
        m = torch.zeros(N, H, dtype=cd, device=q.device)
    else:
        C, n_vec, m = (s.to(cd) for s in initial_state)
    outs = []
    neg_inf = Fc.new_tensor(float("-inf"))
    per_chunk = (t.unbind(2) for t in (Fc, best_in, log_w, scores, qc, kc, vc, ic))
    for F_r, best_r, log_w_r, scores_r, q_r, k_r, v_r, i_r in zip(*per_chunk):
        m_r = F_r + torch.maximum(m[..., None], best_r)                 # [N, H, BT]
        carry = (F_r + m[..., None] - m_r).exp()                        # <= 1
        D = torch.where(incl, log_w_r - m_r[..., None], neg_inf).exp()  # [N, H, BT, BT]
        Ds = D * scores_r
        sq = scale * q_r
        num = carry[..., None] * (sq @ C) + Ds @ v_r
        qn = carry * (sq @ n_vec[..., None])[..., 0] + Ds.sum(-1)
        den = torch.maximum(qn.abs(), (-m_r).exp()) + eps
        outs.append(num / den[..., None])
        m_end = m_r[..., -1]
        w_end = (F_r[..., -1:] - F_r + i_r - m_end[..., None]).exp()    # [N, H, BT]
        k_w = k_r * w_end[..., None]
        keep = (F_r[..., -1] + m - m_end).exp()
        C = keep[..., None, None] * C + k_w.transpose(-1, -2) @ v_r
        n_vec = keep[..., None] * n_vec + k_w.sum(-2)
        m = m_end
    o = unpad(_unchunk(torch.stack(outs, 2)), layout)
    return o.to(q.dtype), ((C, n_vec, m) if output_final_state else None)


__all__ = ["gla_chunk", "delta_rule_chunk", "mlstm_chunk", "DEFAULT_CHUNK"]
