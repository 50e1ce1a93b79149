"""``backend="triton"`` of the chunkwise linear recurrences: which ops have kernels, their
autograd Functions, and the calls the entry points make.

Served so far: ``chunk_gla`` (``triton_chunk.py``, ``triton_chunk_bwd.py``) and
``fused_recurrent_gla`` (``triton_recurrent.py``), wrapped as the ``torch.library`` custom ops
``flashseq::gla_triton_fwd`` and ``flashseq::gla_triton_bwd`` with fake implementations (so
``torch.compile`` traces through them) under one autograd Function; ``chunk_mlstm`` and
``fused_recurrent_mlstm`` (``triton_chunk_mlstm.py``, ``triton_chunk_mlstm_bwd.py``,
``triton_recurrent_mlstm.py``; custom ops and autograd in ``triton_ops_mlstm.py``);
``fused_recurrent_delta_rule`` and ``chunk_delta_rule`` (``triton_recurrent_delta.py``,
``triton_chunk_delta.py``, ``triton_chunk_delta_bwd.py``; ``triton_ops_delta.py``). Triton
is imported only when a call runs, so importing flashseq never imports it.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

# the plan's domains stop at the tiles these kernels compile to without spills (some kernels
# narrow them further: triton_chunk_bwd's dq/dk, the delta rule's state passes and dA kernel)
from .plan import MAX_TILES, MIN_WARPS


@functools.lru_cache(maxsize=256)
def _cached_plan(op, batch, steps, heads, k_dim, v_dim, dtype, gpu):
    from .plan import plan_linear_scan
    return plan_linear_scan(op, batch, steps, heads, k_dim, v_dim, dtype, gpu)


def chunk_tiles(op, q, v, chunk_size=None):
    """(BT, BK, BV, num_warps) of the chunk kernels: the plan's for the device's GPU (on CPU,
    under the interpreter, the H100 entry stands in). ``chunk_size`` overrides BT (tests)."""
    B, T, H, K = q.shape
    BT, BK, BV, W = _planned_tiles(op, B, T, H, K, v.shape[-1], q.dtype, q.device)
    return (chunk_size or BT, BK, BV, W)


@torch.compiler.assume_constant_result
def _planned_tiles(op, batch, steps, heads, k_dim, v_dim, dtype, device):
    # a constant to torch.compile: it runs the solver once while tracing instead of tracing it
    from flashseq.kernels.fused_rnn.triton_function import gpu_spec
    return capped_tiles(_cached_plan(op, batch, steps, heads, k_dim, v_dim, dtype,
                                     gpu_spec(device)))


def capped_tiles(plan):
    """(BT, BK, BV, num_warps) of a ``LinearScanPlan``: its own (its domains stop at
    ``MAX_TILES`` and ``MIN_WARPS``); the caps stay as a guard."""
    return (min(plan.BT, MAX_TILES["BT"]), min(plan.BK, MAX_TILES["BK"]),
            min(plan.BV, MAX_TILES["BV"]), max(plan.num_warps, MIN_WARPS))


def reverse_cumsum_per_sequence(x, cu_seqlens):
    """sum_{s >= t} x_s within each sequence, along dim 1 of [B, T, ...] (fp32 or wider)."""
    if cu_seqlens is None:
        return x.flip(1).cumsum(1).flip(1)
    bounds = cu_seqlens.tolist()
    parts = [x[:, lo:hi].flip(1).cumsum(1).flip(1) for lo, hi in zip(bounds, bounds[1:])]
    return torch.cat(parts, 1)


def per_step(values, cu_seqlens, B, T):
    """[N, ...] per sequence -> [B, T, ...]: each step gets its sequence's row."""
    if cu_seqlens is None:
        return values[:, None].expand(B, T, *values.shape[1:])
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(device=values.device, dtype=torch.long)
    return values.repeat_interleave(lengths, dim=0)[None]


@torch.library.custom_op("flashseq::gla_triton_fwd", mutates_args=())
def gla_triton_fwd(q: Tensor, k: Tensor, v: Tensor, g: Tensor, h0: Optional[Tensor],
                   cu_seqlens: Optional[Tensor], scale: float, output_final_state: bool,
                   chunk: bool, tiles: list[int]) -> tuple[Tensor, Tensor]:
    """GLA forward on the chunk (``chunk``) or step kernels: (o [B, T, H, V], final state
    [N, H, K, V] fp32, or an empty tensor unless ``output_final_state``)."""
    if chunk:
        from .triton_chunk import gla_chunk_fwd
        o, ht = gla_chunk_fwd(q, k, v, g, h0, scale, cu_seqlens, output_final_state, tuple(tiles))
    else:
        from .triton_recurrent import gla_recurrent_fwd
        o, ht = gla_recurrent_fwd(q, k, v, g, h0, scale, cu_seqlens, output_final_state)
    return o, (ht if ht is not None else q.new_empty(0, dtype=torch.float32))


@gla_triton_fwd.register_fake
def _gla_triton_fwd_fake(q, k, v, g, h0, cu_seqlens, scale, output_final_state, chunk, tiles):
    B, _, H, K = q.shape
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    ht = (q.new_empty(N, H, K, v.shape[-1], dtype=torch.float32) if output_final_state
          else q.new_empty(0, dtype=torch.float32))
    return torch.empty_like(v), ht


@torch.library.custom_op("flashseq::gla_triton_bwd", mutates_args=())
def gla_triton_bwd(q: Tensor, k: Tensor, v: Tensor, g: Tensor, h0: Optional[Tensor], do: Tensor,
                   dht: Optional[Tensor], cu_seqlens: Optional[Tensor], scale: float, chunk: bool,
                   tiles: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """GLA backward (states recomputed): (dq fp32, dk fp32, dv, dh0 fp32 or an empty tensor)."""
    if chunk:
        from .triton_chunk_bwd import gla_chunk_bwd
        dq, dk, dv, dh0 = gla_chunk_bwd(q, k, v, g, h0, do, dht, scale, cu_seqlens, tuple(tiles))
    else:
        from .triton_recurrent import gla_recurrent_bwd
        dq, dk, dv, dh0 = gla_recurrent_bwd(q, k, v, g, h0, do, dht, scale, cu_seqlens)
    return dq, dk, dv, (dh0 if dh0 is not None else q.new_empty(0, dtype=torch.float32))


@gla_triton_bwd.register_fake
def _gla_triton_bwd_fake(q, k, v, g, h0, do, dht, cu_seqlens, scale, chunk, tiles):
    dh0 = (torch.empty_like(h0, dtype=torch.float32) if h0 is not None
           else q.new_empty(0, dtype=torch.float32))
    return (torch.empty_like(q, dtype=torch.float32), torch.empty_like(k, dtype=torch.float32),
            torch.empty_like(v), dh0)


class GLATritonFunction(torch.autograd.Function):
    """Autograd of the Triton GLA (chunk or step kernels, through the custom ops above): forward
    keeps its inputs and the final state; backward recomputes the states in its kernels and
    gets the gate's gradient from dq and dk."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale, cu_seqlens, output_final_state, chunk, tiles):
        o, ht = gla_triton_fwd(q, k, v, g, h0, cu_seqlens, scale, output_final_state, chunk,
                               list(tiles))
        ht = ht if output_final_state else None
        ctx.save_for_backward(q, k, v, g, h0, ht, cu_seqlens)
        ctx.scale, ctx.chunk, ctx.tiles = scale, chunk, list(tiles)
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0, ht, cu_seqlens = ctx.saved_tensors
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dht = None if dht is None else dht.contiguous().float()
        dq, dk, dv, dh0 = gla_triton_bwd(q, k, v, g, h0, do, dht, cu_seqlens, ctx.scale,
                                         ctx.chunk, ctx.tiles)
        dg = reverse_cumsum_per_sequence(q.float() * dq - k.float() * dk, cu_seqlens)
        if dht is not None:
            dg = dg + per_step((ht * dht).sum(-1), cu_seqlens, *q.shape[:2])
        dh0 = dh0 if h0 is not None else None
        # gradients in argument order: q, k, v, g, h0, scale, cu_seqlens, output_final_state,
        # chunk, tiles
        return (dq.to(q.dtype), dk.to(k.dtype), dv, dg.to(g.dtype), dh0, None, None, None, None,
                None)


def _prepare(tensors, initial_state, cu_seqlens, device):
    tensors = [t.contiguous() for t in tensors]
    h0 = None if initial_state is None else initial_state.float().contiguous()
    cu = None if cu_seqlens is None else cu_seqlens.to(device=device, dtype=torch.int64)
    return tensors, h0, cu


def run(op: str, recurrent: bool, *args, scale, initial_state=None, output_final_state=False,
        cu_seqlens=None, chunk_size=None, **kwargs):
    """The Triton computation of one public op (arguments already validated); ``chunk_size``
    overrides the plan's chunk (tests)."""
    if op == "gla" and recurrent:
        (q, k, v, g), h0, cu = _prepare(args, initial_state, cu_seqlens, args[0].device)
        o, ht = GLATritonFunction.apply(q, k, v, g, h0, scale, cu, output_final_state, False, ())
        return o, (ht if output_final_state else None)
    if op == "gla":
        (q, k, v, g), h0, cu = _prepare(args, initial_state, cu_seqlens, args[0].device)
        tiles = chunk_tiles("gla", q, v, chunk_size)
        o, ht = GLATritonFunction.apply(q, k, v, g, h0, scale, cu, output_final_state, True, tiles)
        return o, (ht if output_final_state else None)
    if op == "mlstm":
        from .triton_ops_mlstm import run_mlstm
        tiles = None if recurrent else chunk_tiles("mlstm", args[0], args[2], chunk_size)
        return run_mlstm(*args, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens, tiles=tiles)
    if op == "delta" and recurrent:
        from .triton_ops_delta import run_delta_recurrent
        return run_delta_recurrent(*args, scale=scale, initial_state=initial_state,
                                   output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                                   **kwargs)
    if op == "delta":
        from .triton_ops_delta import run_delta_chunk
        return run_delta_chunk(*args, scale=scale, initial_state=initial_state,
                               output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                               tiles=chunk_tiles("delta", args[0], args[2], chunk_size), **kwargs)
    raise NotImplementedError(f"no Triton kernel for {op!r} ({'recurrent' if recurrent else 'chunk'})")
