"""``backend="triton"`` of ``chunk_mlstm`` and ``fused_recurrent_mlstm``: the ``torch.library``
custom ops ``flashseq::mlstm_triton_fwd`` / ``flashseq::mlstm_triton_bwd`` (with fake
implementations) over the chunk kernels (``triton_chunk_mlstm.py``, ``triton_chunk_mlstm_bwd.py``)
or the step kernels (``triton_recurrent_mlstm.py``), under one autograd Function whose backward
turns dq, dk and the denominator's gradient into the gates' gradients (``mlstm_gate_grads``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .triton_ops import reverse_cumsum_per_sequence
from .triton_recurrent_mlstm import EPS_VALUE


def _empty(q):
    return q.new_empty(0, dtype=torch.float32)


@torch.library.custom_op("flashseq::mlstm_triton_fwd", mutates_args=())
def mlstm_triton_fwd(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, C0: Optional[Tensor],
                     n0: Optional[Tensor], m0: Optional[Tensor], cu_seqlens: Optional[Tensor],
                     scale: float, output_final_state: bool, chunk: bool, tiles: list[int]
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """mLSTM forward on the chunk (``chunk``, with ``tiles``) or step kernels: (o [B, T, H, V],
    m_t [B, T, H], qn_t [B, T, H], final C [N, H, K, V], n [N, H, K], m [N, H] fp32, or empty
    tensors unless ``output_final_state``)."""
    if chunk:
        from .triton_chunk_mlstm import mlstm_chunk_fwd
        o, ms, qn, final = mlstm_chunk_fwd(q, k, v, i, f, C0, n0, m0, scale, cu_seqlens,
                                           output_final_state, tuple(tiles))
    else:
        from .triton_recurrent_mlstm import mlstm_recurrent_fwd
        o, ms, qn, final = mlstm_recurrent_fwd(q, k, v, i, f, C0, n0, m0, scale, cu_seqlens,
                                               output_final_state)
    return (o, ms, qn) + tuple(s if s is not None else _empty(q) for s in final)


@mlstm_triton_fwd.register_fake
def _mlstm_triton_fwd_fake(q, k, v, i, f, C0, n0, m0, cu_seqlens, scale, output_final_state, chunk,
                           tiles):
    B, T, H, K = q.shape
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    V = v.shape[-1]
    shapes = ((N, H, K, V), (N, H, K), (N, H)) if output_final_state else ((0,),) * 3
    final = tuple(q.new_empty(s, dtype=torch.float32) for s in shapes)
    scalars = tuple(q.new_empty(B, T, H, dtype=torch.float32) for _ in range(2))
    return (torch.empty_like(v),) + scalars + final


@torch.library.custom_op("flashseq::mlstm_triton_bwd", mutates_args=())
def mlstm_triton_bwd(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, C0: Optional[Tensor],
                     n0: Optional[Tensor], m0: Optional[Tensor], ms: Tensor, rden: Tensor,
                     dqn: Tensor, do: Tensor, dCT: Optional[Tensor], dnT: Optional[Tensor],
                     cu_seqlens: Optional[Tensor], scale: float, chunk: bool, tiles: list[int]
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """mLSTM backward (states recomputed): (dq fp32, dk fp32, dv, dC0 fp32, dn0 fp32; the last two
    empty without an initial state)."""
    if chunk:
        from .triton_chunk_mlstm_bwd import mlstm_chunk_bwd
        dq, dk, dv, dC0, dn0 = mlstm_chunk_bwd(q, k, v, i, f, C0, n0, m0, ms, rden, dqn, do, dCT,
                                               dnT, scale, cu_seqlens, tuple(tiles))
    else:
        from .triton_recurrent_mlstm import mlstm_recurrent_bwd
        dq, dk, dv, dC0, dn0 = mlstm_recurrent_bwd(q, k, v, i, f, C0, n0, m0, ms, rden, dqn, do,
                                                   dCT, dnT, scale, cu_seqlens)
    return (dq, dk, dv, dC0 if dC0 is not None else _empty(q),
            dn0 if dn0 is not None else _empty(q))


@mlstm_triton_bwd.register_fake
def _mlstm_triton_bwd_fake(q, k, v, i, f, C0, n0, m0, ms, rden, dqn, do, dCT, dnT, cu_seqlens,
                           scale, chunk, tiles):
    dC0 = torch.empty_like(C0, dtype=torch.float32) if C0 is not None else _empty(q)
    dn0 = torch.empty_like(n0, dtype=torch.float32) if n0 is not None else _empty(q)
    return (torch.empty_like(q, dtype=torch.float32), torch.empty_like(k, dtype=torch.float32),
            torch.empty_like(v), dC0, dn0)


def carried_steps(ms, i, f, m0, cu_seqlens, exact: bool):
    """Where ``lf_t + m_{t-1}`` won the max of the stabiliser (bool [B, T, H]). The step kernels
    compute m_t as that max, so m_t != i_t says it exactly (``exact``); the chunk kernels form
    m_t as ``F_t + max(...)``, which rounds, so there it is decided by comparing the two terms."""
    if exact:
        return ms != i.float()
    prev = torch.cat([torch.zeros_like(ms[:, :1]), ms[:, :-1]], 1)
    if cu_seqlens is not None:
        starts = cu_seqlens[:-1].to(device=ms.device, dtype=torch.long)
        prev[0, starts] = 0.0 if m0 is None else m0
    elif m0 is not None:
        prev[:, 0] = m0
    return torch.nn.functional.logsigmoid(f.float()) + prev >= i.float()


def _ends(x, cu_seqlens, first: bool):
    """View of ``x`` [B, T, ...] at each sequence's first (or last) step: [N, ...]."""
    if cu_seqlens is None:
        return x[:, 0] if first else x[:, -1]
    idx = cu_seqlens[:-1] if first else cu_seqlens[1:] - 1
    return x[0, idx.to(device=x.device, dtype=torch.long)]


def _add_at_ends(x, values, cu_seqlens, first: bool):
    if cu_seqlens is None:
        x[:, 0 if first else -1] += values
    else:
        idx = cu_seqlens[:-1] if first else cu_seqlens[1:] - 1
        x[0, idx.to(device=x.device, dtype=torch.long)] += values


def carried_reverse_sum(d, link):
    """``G_t = d_t + link_t * G_{t+1}`` along dim 1 of [B, T, H] for a 0/1 ``link`` that is 0 at
    every sequence's last step: sums of d over runs of linked steps (callers pass float64)."""
    B, T, H = d.shape
    total = d.flip(1).cumsum(1).flip(1)                                   # sum_{u >= t} d_u
    steps = torch.arange(T, device=d.device).view(1, T, 1).expand(B, T, H)
    stop = torch.where(link, torch.full_like(steps, T), steps)
    end = stop.flip(1).cummin(1).values.flip(1)                           # first unlinked u >= t
    total = torch.cat([total, total.new_zeros(B, 1, H)], 1)
    return total[:, :T] - total.gather(1, end + 1)


def mlstm_gate_grads(q, k, f, i, dq, dk, dm_den, carried, dC0, dn0, C0, n0, final, dfinal,
                     cu_seqlens):
    """(di, df, dm0 or None) in float64 from the kernels' dq, dk and the stabiliser's path.

    Every weight of the state is ``exp(F_t - F_s + i_s - m_t)`` (F the cumulated log forget gate),
    so with ``A_t = q_t . dq_t`` and ``B_t = k_t . dk_t``: dF_t = A_t - B_t, di_t = B_t and
    m_t's direct gradient is -A_t plus the denominator's ``dm_den``; the final state adds
    <C_T, dC_T> + <n_T, dn_T> to F's and subtracts it from m's at each sequence's last step.
    m_t = max(lf_t + m_{t-1}, i_t) then carries m's gradient to lf_t and m_{t-1} where the first
    term won (``carried``, bool [B, T, H]), to i_t elsewhere."""
    A = (q.double() * dq.double()).sum(-1)
    Bk = (k.double() * dk.double()).sum(-1)
    dF = A - Bk
    dm = dm_den.double() - A
    di = Bk.clone()
    C_T, n_T, m_T = final
    dC_T, dn_T, dm_T = dfinal
    reads_end = 0.0
    if dC_T is not None:
        reads_end = reads_end + (C_T.double() * dC_T.double()).sum((-2, -1))
    if dn_T is not None:
        reads_end = reads_end + (n_T.double() * dn_T.double()).sum(-1)
    if not isinstance(reads_end, float):
        _add_at_ends(dF, reads_end, cu_seqlens, first=False)
        _add_at_ends(dm, -reads_end, cu_seqlens, first=False)
    if dm_T is not None:
        _add_at_ends(dm, dm_T.double(), cu_seqlens, first=False)
    dlf = reverse_cumsum_per_sequence(dF, cu_seqlens)
    link = torch.cat([carried[:, 1:], torch.zeros_like(carried[:, :1])], 1)
    if cu_seqlens is not None:
        last = (cu_seqlens[1:] - 1).to(device=link.device, dtype=torch.long)
        link[0, last] = False
    G = carried_reverse_sum(dm, link)
    dlf = dlf + torch.where(carried, G, 0.0)
    di = di + torch.where(carried, 0.0, G)
    df = dlf * torch.sigmoid(-f.double())
    dm0 = None
    if C0 is not None:
        dm0 = ((C0.double() * dC0.double()).sum((-2, -1)) + (n0.double() * dn0.double()).sum(-1)
               + torch.where(_ends(carried, cu_seqlens, True), _ends(G, cu_seqlens, True), 0.0))
    return di, df, dm0


class MLSTMTritonFunction(torch.autograd.Function):
    """Autograd of the Triton ``fused_recurrent_mlstm``: forward keeps its inputs, o, m_t, qn_t
    and the final state; backward recomputes the states in its kernels."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, scale, cu_seqlens, output_final_state, chunk,
                tiles):
        o, ms, qn, CT, nT, mT = mlstm_triton_fwd(q, k, v, i, f, C0, n0, m0, cu_seqlens, scale,
                                                 output_final_state, chunk, list(tiles))
        final = (CT, nT, mT) if output_final_state else (None, None, None)
        ctx.save_for_backward(q, k, v, i, f, C0, n0, m0, o, ms, qn, cu_seqlens, *final)
        ctx.scale, ctx.chunk, ctx.tiles = scale, chunk, list(tiles)
        ctx.set_materialize_grads(False)
        return (o,) + final

    @staticmethod
    def backward(ctx, do, dCT, dnT, dmT):
        q, k, v, i, f, C0, n0, m0, o, ms, qn, cu_seqlens, CT, nT, mT = ctx.saved_tensors
        do = torch.zeros_like(v) if do is None else do.contiguous()
        if dCT is not None or dnT is not None:
            dCT = torch.zeros_like(CT) if dCT is None else dCT.contiguous().float()
            dnT = torch.zeros_like(nT) if dnT is None else dnT.contiguous().float()
        floor = torch.exp(-ms)
        den = torch.maximum(qn.abs(), floor) + EPS_VALUE
        dden = -(do.float() * o.float()).sum(-1) / den
        by_qn = qn.abs() >= floor
        dqn = torch.where(by_qn, dden * torch.sign(qn), 0.0).contiguous()
        dm_den = torch.where(by_qn, 0.0, -dden * floor)
        dq, dk, dv, dC0, dn0 = mlstm_triton_bwd(q, k, v, i, f, C0, n0, m0, ms,
                                                (1.0 / den).contiguous(), dqn, do, dCT, dnT,
                                                cu_seqlens, ctx.scale, ctx.chunk, ctx.tiles)
        carried = carried_steps(ms, i, f, m0, cu_seqlens, exact=not ctx.chunk)
        di, df, dm0 = mlstm_gate_grads(q, k, f, i, dq, dk, dm_den, carried, dC0, dn0, C0, n0,
                                       (CT, nT, mT), (dCT, dnT, dmT), cu_seqlens)
        has_h0 = C0 is not None
        # gradients in argument order: q, k, v, i, f, C0, n0, m0, scale, cu_seqlens,
        # output_final_state, chunk, tiles
        return (dq.to(q.dtype), dk.to(k.dtype), dv, di.to(i.dtype), df.to(f.dtype),
                dC0 if has_h0 else None, dn0 if has_h0 else None,
                dm0.float() if has_h0 else None, None, None, None, None, None)


def run_mlstm(q, k, v, i, f, *, scale, initial_state, output_final_state, cu_seqlens, tiles=None):
    """``chunk_mlstm`` on the chunk kernels with ``tiles`` (BT, BK, BV, num_warps), or
    ``fused_recurrent_mlstm`` on the step kernels (``tiles`` None); arguments validated."""
    q, k, v, i, f = (t.contiguous() for t in (q, k, v, i, f))
    C0 = n0 = m0 = None
    if initial_state is not None:
        C0, n0, m0 = (s.float().contiguous() for s in initial_state)
    cu = None if cu_seqlens is None else cu_seqlens.to(device=q.device, dtype=torch.int64)
    o, CT, nT, mT = MLSTMTritonFunction.apply(q, k, v, i, f, C0, n0, m0, scale, cu,
                                              output_final_state, tiles is not None, tiles or ())
    return o, ((CT, nT, mT) if output_final_state else None)


__all__ = ["MLSTMTritonFunction", "run_mlstm", "mlstm_gate_grads", "carried_reverse_sum",
           "carried_steps"]
