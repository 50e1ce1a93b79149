"""Packed (cu_seqlens) and ragged-T inputs to and from a padded ``[N, NT * BT, ...]`` batch.

The chunkwise paths work on whole chunks of every sequence. Each sequence is padded at its end
with steps that leave the state unchanged (zero key, zero value, zero log-decay, zero beta, and
for the mLSTM an input gate of -inf), so the state after the padding is the state after the
sequence's last real step. Gathers by index, so autograd carries gradients both ways.

The padded length is the longest sequence's, so ``cu_seqlens`` is read on the host
(``tolist``): free when it is a CPU tensor, which the entry points accept, and a device-to-host
read that waits for the stream when it is a CUDA one (the entry points' validation reads it
too, to check that it starts at 0, ends at T and increases; the Triton launchers' chunk table,
``triton_chunk.chunk_layout``, once more per pass).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def padded_length(length: int, chunk: int) -> int:
    return -(-length // chunk) * chunk


def pad_batch(tensors, pad_values, chunk, cu_seqlens):
    """[B, T, ...] tensors -> [N, TP, ...] with TP a multiple of ``chunk``.

    ``pad_values[j]`` fills the padding of ``tensors[j]``. Returns (padded list, layout), the
    layout being what ``unpad`` needs.
    """
    if cu_seqlens is None:
        T = tensors[0].shape[1]
        TP = padded_length(T, chunk)
        out = []
        for t, value in zip(tensors, pad_values):
            if TP == T:
                out.append(t)
                continue
            pad = [0, 0] * (t.dim() - 2) + [0, TP - T]
            out.append(F.pad(t, pad, value=value))
        return out, (None, T, TP)
    bounds = cu_seqlens.tolist()
    T = bounds[-1]
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    TP = padded_length(max(lengths), chunk)
    # index T points at one appended padding step
    index = torch.full((len(lengths), TP), T, dtype=torch.long)
    for n, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        index[n, :hi - lo] = torch.arange(lo, hi)
    index = index.to(tensors[0].device)
    out = []
    for t, value in zip(tensors, pad_values):
        row = t.new_full((1, 1, *t.shape[2:]), value)
        flat = torch.cat([t, row], dim=1)[0]        # [T + 1, ...]
        out.append(flat[index])                    # [N, TP, ...]
    positions = torch.cat([torch.arange(n * TP, n * TP + length) for n, length in enumerate(lengths)])
    return out, (positions.to(tensors[0].device), T, TP)


def unpad(o, layout):
    """Inverse of ``pad_batch`` for an output [N, TP, ...] -> [B, T, ...]."""
    positions, T, TP = layout
    if positions is None:
        return o[:, :T]
    return o.reshape(o.shape[0] * TP, *o.shape[2:])[positions].unsqueeze(0)


__all__ = ["pad_batch", "unpad", "padded_length"]
