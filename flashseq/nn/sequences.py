"""Moving between torch's sequence layouts and the batch-major padded layout the kernels use.

Every helper works on whole tensors with index arithmetic: there is no Python loop over rows or
over the steps of a ragged batch.
"""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence


def _live_mask(batch_sizes: torch.Tensor) -> torch.Tensor:
    """[B, T] bool on the CPU: whether sorted row b is still running at step t."""
    sizes = batch_sizes.cpu()
    return torch.arange(int(sizes[0])).unsqueeze(1) < sizes.unsqueeze(0)


def packed_row_index(batch_sizes: torch.Tensor, device, live=None) -> torch.Tensor:
    """[N] int64: where each row of PackedSequence.data sits in a batch-major [B * T] layout.

    PackedSequence.data is step-major (every live row of step 0, then of step 1, ...); row i
    of it is sorted row b at step t, and its flat batch-major position is b * T + t. Flat
    indices keep the padded tensors contiguous [B, T, F] and make both moves plain
    index_copy / index_select (no boolean masks, no transposed views to copy later).
    ``live``: ``_live_mask(batch_sizes)`` when the caller has it already.
    """
    live = _live_mask(batch_sizes) if live is None else live
    B, T = live.shape
    # the [T, B] grid of flat positions read step-major, keeping the live (t, b) pairs
    flat = torch.arange(B * T).view(B, T).t()
    return flat.masked_select(live.t()).to(device)


def packed_to_padded(data: torch.Tensor, batch_sizes: torch.Tensor):
    """Unpack a PackedSequence's data, keeping its sorted row order.

    Args:
        data: [N, F], the rows of every step, step-major (PackedSequence.data).
        batch_sizes: [T] int64 on the CPU, rows alive at each step, non-increasing.

    Returns:
        x: [B, T, F] contiguous, padded with zeros, rows in the packed (sorted) order,
            B = batch_sizes[0].
        lengths: [B] int64 on the CPU, each row's number of steps (non-increasing).
        index: [N] int64 on data's device, from ``packed_row_index`` (reused to repack).
    """
    live = _live_mask(batch_sizes)
    B, T = live.shape
    index = packed_row_index(batch_sizes, data.device, live)
    padded = data.new_zeros(B * T, data.shape[-1]).index_copy(0, index, data)
    return padded.view(B, T, -1), live.sum(1), index


def scatter_rows(rows: torch.Tensor, index: torch.Tensor, batch: int, steps: int) -> torch.Tensor:
    """rows [N, F] in packed order -> [B, T, F] contiguous, zeros where no row is."""
    return rows.new_zeros(batch * steps, rows.shape[-1]).index_copy(0, index, rows).view(batch, steps, -1)


def padded_to_packed(out: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The data of a PackedSequence from padded rows in sorted order.

    Args:
        out: [B, T, F] batch-major outputs, rows in the packed (sorted) order.
        index: [N] from ``packed_to_padded``.

    Returns:
        [N, F], step-major, the layout of PackedSequence.data.
    """
    return out.reshape(-1, out.shape[-1]).index_select(0, index)


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
