"""Moving between torch's sequence layouts and the batch-major padded layout the kernels use.

Every helper works on whole tensors with index arithmetic: there is no Python loop over rows or
over the steps of a ragged batch.
"""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence


def packed_valid_mask(batch_sizes: torch.Tensor, device) -> torch.Tensor:
    """[T, B] bool: True where sorted row b has a step t (b < batch_sizes[t])."""
    rows = torch.arange(int(batch_sizes[0]))
    return (rows.unsqueeze(0) < batch_sizes.cpu().unsqueeze(1)).to(device)


def packed_to_padded(data: torch.Tensor, batch_sizes: torch.Tensor):
    """Unpack a PackedSequence's data, keeping its sorted row order.

    Args:
        data: [N, F], the rows of every step, step-major (PackedSequence.data).
        batch_sizes: [T] int64 on the CPU, rows alive at each step, non-increasing.

    Returns:
        x: [B, T, F] padded with zeros, rows in the packed (sorted) order, B = batch_sizes[0].
        lengths: [B] int64 on the CPU, each row's number of steps (non-increasing).
        mask: [T, B] bool on data's device, the valid steps (reused by ``padded_to_packed``).
    """
    mask = packed_valid_mask(batch_sizes, data.device)
    T, B = mask.shape
    padded = data.new_zeros(T, B, data.shape[-1]).masked_scatter(mask.unsqueeze(-1), data)
    lengths = (batch_sizes.cpu().unsqueeze(0) > torch.arange(B).unsqueeze(1)).sum(1)
    return padded.transpose(0, 1), lengths, mask


def padded_to_packed(out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The data of a PackedSequence from padded rows in sorted order.

    Args:
        out: [B, T, F] batch-major outputs, rows in the packed (sorted) order.
        mask: [T, B] bool from ``packed_to_padded``.

    Returns:
        [N, F], step-major, N = mask.sum(), the layout of PackedSequence.data.
    """
    return out.transpose(0, 1)[mask]


def repack(data: torch.Tensor, like: PackedSequence) -> PackedSequence:
    """A PackedSequence holding ``data`` [N, F] with ``like``'s batch_sizes and row orders."""
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def reversal_index(lengths: torch.Tensor | None, batch: int, steps: int, device):
    """[B, T] int64 time index that reverses each row's valid prefix and keeps its padding in
    place (applying it twice gives the identity), or None for "flip the whole time axis"."""
    if lengths is None:
        return None
    t = torch.arange(steps, device=device).unsqueeze(0)          # [1, T]
    n = lengths.to(device=device, dtype=torch.int64).unsqueeze(1)  # [B, 1]
    return torch.where(t < n, n - 1 - t, t).expand(batch, steps)


def reverse_time(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """x [B, T, F] with each row's valid steps in reverse order (see ``reversal_index``)."""
    if index is None:
        return x.flip(1)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))
