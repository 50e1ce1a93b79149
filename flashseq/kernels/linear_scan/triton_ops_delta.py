"""``backend="triton"`` of the delta rule (gated, DeltaProduct).

``fused_recurrent_delta_rule``: the ``torch.library`` custom ops ``flashseq::delta_triton_fwd``
/ ``flashseq::delta_triton_bwd`` (with fake implementations) over the step kernels of
``triton_recurrent_delta.py``, under one autograd Function whose backward also forms the
decay's gradient from dq and the kernels' ``v . du``.

``chunk_delta_rule``: ``flashseq::delta_chunk_triton_fwd`` / ``flashseq::delta_chunk_triton_bwd``
(fake implementations too) over the WY chunk kernels of ``triton_chunk_delta.py`` and
``triton_chunk_delta_bwd.py``; their backward returns every gradient, the decay's included.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .triton_ops import per_step, reverse_cumsum_per_sequence


def _empty(q):
    return q.new_empty(0, dtype=torch.float32)


@torch.library.custom_op("flashseq::delta_triton_fwd", mutates_args=())
def delta_triton_fwd(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Optional[Tensor],
                     h0: Optional[Tensor], cu_seqlens: Optional[Tensor], scale: float,
                     output_final_state: bool, num_householder: int
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Delta rule forward on the step kernels: (o [B, T, H, V], u [B, T, n_h, H, V] fp32, final
    state [N, H, K, V] fp32 or an empty tensor unless ``output_final_state``)."""
    from .triton_recurrent_delta import delta_recurrent_fwd
    o, u, ht = delta_recurrent_fwd(q, k, v, beta, g, h0, scale, cu_seqlens, output_final_state,
                                   num_householder)
    return o, u, (ht if ht is not None else _empty(q))


@delta_triton_fwd.register_fake
def _delta_triton_fwd_fake(q, k, v, beta, g, h0, cu_seqlens, scale, output_final_state,
                           num_householder):
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    ht = (q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else _empty(q))
    return (q.new_empty(B, T, H, V, dtype=v.dtype),
            q.new_empty(B, T, num_householder, H, V, dtype=torch.float32), ht)


@torch.library.custom_op("flashseq::delta_triton_bwd", mutates_args=())
def delta_triton_bwd(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Optional[Tensor],
                     h0: Optional[Tensor], u: Tensor, do: Tensor, dht: Optional[Tensor],
                     cu_seqlens: Optional[Tensor], scale: float, num_householder: int
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Delta rule backward (states recomputed): (dq, dk, dv, dbeta, v . du per Householder step,
    dh0 or an empty tensor), all fp32, dk/dv/dbeta with the n_h axis."""
    from .triton_recurrent_delta import delta_recurrent_bwd
    dq, dk, dv, db, r, dh0 = delta_recurrent_bwd(q, k, v, beta, g, h0, u, do, dht, scale,
                                                 cu_seqlens, num_householder)
    return dq, dk, dv, db, r, (dh0 if dh0 is not None else _empty(q))


@delta_triton_bwd.register_fake
def _delta_triton_bwd_fake(q, k, v, beta, g, h0, u, do, dht, cu_seqlens, scale, num_householder):
    B, T, H, K = q.shape
    nh = num_householder
    f32 = dict(dtype=torch.float32)
    dh0 = torch.empty_like(h0, **f32) if h0 is not None else _empty(q)
    return (torch.empty_like(q, **f32), q.new_empty(B, T, nh, H, K, **f32),
            q.new_empty(B, T, nh, H, v.shape[-1], **f32), q.new_empty(B, T, nh, H, **f32),
            q.new_empty(B, T, nh, H, **f32), dh0)


class DeltaTritonFunction(torch.autograd.Function):
    """Autograd of the Triton ``fused_recurrent_delta_rule``: forward keeps its inputs, the
    pseudo-values u and the final state; backward recomputes the states in its kernels."""

    @staticmethod
    def forward(ctx, q, k, v, beta, g, h0, scale, cu_seqlens, output_final_state, nh):
        o, u, ht = delta_triton_fwd(q, k, v, beta, g, h0, cu_seqlens, scale, output_final_state,
                                    nh)
        ht = ht if output_final_state else None
        ctx.save_for_backward(q, k, v, beta, g, h0, u, ht, cu_seqlens)
        ctx.scale, ctx.nh = scale, nh
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, g, h0, u, ht, cu_seqlens = ctx.saved_tensors
        B, T, H, _ = q.shape
        do = torch.zeros(B, T, H, v.shape[-1], dtype=v.dtype, device=v.device) if do is None \
            else do.contiguous()
        dht = None if dht is None else dht.contiguous().float()
        dq, dk, dv, db, r, dh0 = delta_triton_bwd(q, k, v, beta, g, h0, u, do, dht, cu_seqlens,
                                                  ctx.scale, ctx.nh)
        dg = None
        if g is not None:
            dg = reverse_cumsum_per_sequence((q.float() * dq).sum(-1) - r.sum(2), cu_seqlens)
            if dht is not None:
                dg = dg + per_step((ht * dht).sum((-2, -1)), cu_seqlens, B, T)
            dg = dg.to(g.dtype)
        # gradients in argument order: q, k, v, beta, g, h0, scale, cu_seqlens,
        # output_final_state, nh; k, v, beta lose the n_h axis when the caller's had none
        return (dq.to(q.dtype), dk.reshape(k.shape).to(k.dtype), dv.reshape(v.shape).to(v.dtype),
                db.reshape(beta.shape).to(beta.dtype), dg, dh0 if h0 is not None else None,
                None, None, None, None)


def run_delta_recurrent(q, k, v, beta, *, g=None, scale, initial_state=None,
                        output_final_state=False, cu_seqlens=None, num_householder=1):
    """``fused_recurrent_delta_rule`` on the step kernels (arguments validated)."""
    q, k, v, beta = (t.contiguous() for t in (q, k, v, beta))
    g = None if g is None else g.contiguous()
    h0 = None if initial_state is None else initial_state.float().contiguous()
    cu = None if cu_seqlens is None else cu_seqlens.to(device=q.device, dtype=torch.int64)
    o, ht = DeltaTritonFunction.apply(q, k, v, beta, g, h0, scale, cu, output_final_state,
                                      num_householder)
    return o, (ht if output_final_state else None)




# ---- chunkwise: ``chunk_delta_rule`` on the WY kernels (triton_chunk_delta*.py) ----

@torch.library.custom_op("flashseq::delta_chunk_triton_fwd", mutates_args=())
def delta_chunk_triton_fwd(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Optional[Tensor],
                           h0: Optional[Tensor], cu_seqlens: Optional[Tensor], scale: float,
                           output_final_state: bool, tiles: list[int]) -> tuple[Tensor, Tensor]:
    """Chunkwise delta rule forward, one Householder step per row of the [B, T, H, .] inputs:
    (o [B, T, H, V], final state [N, H, K, V] fp32 or an empty tensor)."""
    from .triton_chunk_delta import delta_chunk_fwd
    o, ht = delta_chunk_fwd(q, k, v, beta, g, h0, scale, cu_seqlens, output_final_state,
                            tuple(tiles))
    return o, (ht if ht is not None else _empty(q))


@delta_chunk_triton_fwd.register_fake
def _delta_chunk_triton_fwd_fake(q, k, v, beta, g, h0, cu_seqlens, scale, output_final_state,
                                 tiles):
    B, _, H, K = q.shape
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    ht = (q.new_empty(N, H, K, v.shape[-1], dtype=torch.float32) if output_final_state
          else _empty(q))
    return torch.empty_like(v), ht


@torch.library.custom_op("flashseq::delta_chunk_triton_bwd", mutates_args=())
def delta_chunk_triton_bwd(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Optional[Tensor],
                           h0: Optional[Tensor], do: Tensor, dht: Optional[Tensor],
                           cu_seqlens: Optional[Tensor], scale: float, tiles: list[int]
                           ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Chunkwise delta rule backward (chunk states recomputed): (dq, dk, dv, dbeta, dg or an
    empty tensor, dh0 or an empty tensor), all fp32."""
    from .triton_chunk_delta_bwd import delta_chunk_bwd
    dq, dk, dv, db, dg, dh0 = delta_chunk_bwd(q, k, v, beta, g, h0, do, dht, scale, cu_seqlens,
                                              tuple(tiles))
    return (dq, dk, dv, db, dg if dg is not None else _empty(q),
            dh0 if dh0 is not None else _empty(q))


@delta_chunk_triton_bwd.register_fake
def _delta_chunk_triton_bwd_fake(q, k, v, beta, g, h0, do, dht, cu_seqlens, scale, tiles):
    f32 = dict(dtype=torch.float32)
    return (torch.empty_like(q, **f32), torch.empty_like(k, **f32), torch.empty_like(v, **f32),
            torch.empty_like(beta, **f32),
            torch.empty_like(g, **f32) if g is not None else _empty(q),
            torch.empty_like(h0, **f32) if h0 is not None else _empty(q))


class DeltaChunkTritonFunction(torch.autograd.Function):
    """Autograd of the Triton ``chunk_delta_rule``: forward keeps only its inputs; backward
    runs the WY and state passes again in its kernels."""

    @staticmethod
    def forward(ctx, q, k, v, beta, g, h0, scale, cu_seqlens, output_final_state, tiles):
        o, ht = delta_chunk_triton_fwd(q, k, v, beta, g, h0, cu_seqlens, scale,
                                       output_final_state, list(tiles))
        ctx.save_for_backward(q, k, v, beta, g, h0, cu_seqlens)
        ctx.scale, ctx.tiles = scale, list(tiles)
        ctx.set_materialize_grads(False)
        return o, (ht if output_final_state else None)

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, g, h0, cu_seqlens = ctx.saved_tensors
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dht = None if dht is None else dht.contiguous().float()
        dq, dk, dv, db, dg, dh0 = delta_chunk_triton_bwd(q, k, v, beta, g, h0, do, dht,
                                                         cu_seqlens, ctx.scale, ctx.tiles)
        # gradients in argument order: q, k, v, beta, g, h0, scale, cu_seqlens,
        # output_final_state, tiles
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), db.to(beta.dtype),
                dg.to(g.dtype) if g is not None else None, dh0 if h0 is not None else None,
                None, None, None, None)


def run_delta_chunk(q, k, v, beta, *, g=None, scale, initial_state=None,
                    output_final_state=False, cu_seqlens=None, num_householder=1, tiles):
    """``chunk_delta_rule`` on the chunk kernels (arguments validated). DeltaProduct runs as a
    delta rule over T * n_h steps (decay on each token's first, query on its last step), as
    ``chunk_torch.delta_rule_chunk`` does; autograd carries the gradients through that layout."""
    nh = num_householder
    if nh > 1:
        from .chunk_torch import _householder_steps
        g_in = g if g is not None else q.new_zeros(q.shape[:3])
        q, k, v, beta, g_steps = _householder_steps(q, k, v, beta, g_in, nh)
        g = g_steps if g is not None else None
        if cu_seqlens is not None:
            cu_seqlens = cu_seqlens * nh
    q, k, v, beta = (t.contiguous() for t in (q, k, v, beta))
    g = None if g is None else g.contiguous()
    h0 = None if initial_state is None else initial_state.float().contiguous()
    cu = None if cu_seqlens is None else cu_seqlens.to(device=q.device, dtype=torch.int64)
    o, ht = DeltaChunkTritonFunction.apply(q, k, v, beta, g, h0, scale, cu, output_final_state,
                                           tuple(tiles))
    if nh > 1:
        o = o.reshape(o.shape[0], -1, nh, *o.shape[2:])[:, :, -1]
    return o, (ht if output_final_state else None)


__all__ = ["DeltaTritonFunction", "run_delta_recurrent", "DeltaChunkTritonFunction",
           "run_delta_chunk"]
