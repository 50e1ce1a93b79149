"""The "beyond torch.nn" options of the recurrent modules: their checks and the per-call
keyword arguments they become for ``flashseq.ops.fused_rnn``.

Constructor (kept on the module): ``dropconnect``, ``variational_dropout`` and ``zoneout``
probabilities, applied in training mode only. Forward (per call): ``reset`` [B, T] bool and the
``generator`` the masks are drawn from. The masks' shapes, order and semantics are fused_rnn's
(flashseq/kernels/fused_rnn/extras.py); a module with several layers or two directions makes one
fused_rnn call per layer and direction, in the order layer 0 forward, layer 0 reverse, layer 1
forward, ..., each drawing its own masks from the same generator, so one generator state gives
the whole forward's masks.

``reset[b, t] = True`` means a new sequence starts at step t of row b: the forward direction
sets the states back to their initial value (``hx``, else zeros) before step t, and the reverse
direction, which meets the steps in the opposite order, before step t - 1. A module given a
reset at step k therefore returns what two separate calls on the steps before and from k would
(each starting from ``hx``), in every layer and both directions.

``return_all_states=True`` (forward, per call) also returns every step's states of every layer
and direction, in hx's structure (LSTM: ``(h_all, c_all)``; GRU/RNN: ``h_all``), each
[num_layers * num_directions, T, B, H] ([.., B, T, H] with batch_first; [.., T, H] unbatched):
entry t is the state after the step at time position t, for the reverse direction too (which
reaches position t after T - 1, ..., t + 1), so the forward direction's last entry and the
reverse direction's first one are h_n / c_n. Each comes from fused_rnn's ``all_states`` and
keeps its gradient. Past a row's length (PackedSequence) fused_rnn carries each direction's
last states on, so those positions hold that row's final states (h_n, c_n of the layer and
direction), not zeros; a PackedSequence's rows come back in its original (unsorted) order,
padded to its longest length, laid out as for a padded input (batch_first or not).
"""
from __future__ import annotations

import torch

from flashseq.kernels.fused_rnn.extras import check_regularisers  # noqa: F401 (the modules' check)

from . import sequences
from .errors import RNNInputError, RNNInputTypeError

OFF = (0.0, 0.0, (0.0, 0.0))  # (dropconnect, variational_dropout, zoneout) that change nothing


def regularisers(module) -> tuple:
    """The module's (dropconnect, variational_dropout, zoneout), ``OFF`` in eval mode or for a
    module pickled before it had them."""
    if not module.training:
        return OFF
    return (getattr(module, "dropconnect", 0.0), getattr(module, "variational_dropout", 0.0),
            tuple(getattr(module, "zoneout", (0.0, 0.0))))


def regularisers_repr(module) -> list[str]:
    """``name=value`` for each regulariser that is not off (for ``extra_repr``)."""
    parts = []
    for name, off in zip(("dropconnect", "variational_dropout", "zoneout"), OFF):
        value = getattr(module, name, off)
        if tuple(value) != off if isinstance(value, (tuple, list)) else value != off:
            parts.append(f"{name}={value!r}")
    return parts


def check_generator(kind: str, generator, device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise RNNInputTypeError(f"{kind}: generator must be a torch.Generator or None; got "
                                f"{type(generator).__name__}")
    if torch.device(generator.device).type != torch.device(device).type:
        raise RNNInputError(f"{kind}: generator must be on the input's device {device} (the "
                            f"masks are drawn there); got a generator on {generator.device}")


def check_reset(kind: str, reset, batch: int, steps: int, batched: bool, device):
    """``reset`` as a [B, T] bool tensor, or None.

    Accepted: [B, T] bool for batched input (whatever batch_first says; for a PackedSequence B
    is the batch size and T the longest length, rows in the original, unsorted order), [T] for
    unbatched input; on the CPU or the input's device. Raises RNNInputTypeError (wrong type or
    dtype, also a TypeError) / RNNInputError (a ValueError) naming ``reset``.
    """
    if reset is None:
        return None
    if not isinstance(reset, torch.Tensor):
        raise RNNInputTypeError(f"{kind}: reset must be a bool torch.Tensor [B, T] or None; got "
                                f"{type(reset).__name__}")
    if reset.dtype != torch.bool:
        raise RNNInputTypeError(f"{kind}: reset must have dtype torch.bool; got shape "
                                f"{tuple(reset.shape)}, dtype {reset.dtype}")
    expected = (batch, steps) if batched else (steps,)
    if tuple(reset.shape) != expected:
        doc = "[B, T]" if batched else "[T] (unbatched input)"
        raise RNNInputError(f"{kind}: reset must have shape {doc} = {expected}; got shape "
                            f"{tuple(reset.shape)}")
    if reset.device.type != "cpu" and reset.device != torch.device(device):
        raise RNNInputError(f"{kind}: reset must be on the CPU or the input's device {device}; "
                            f"got device {reset.device}")
    return reset if batched else reset.unsqueeze(0)


def reverse_reset(reset: torch.Tensor, lengths, reverse_index) -> torch.Tensor:
    """The reset mask of the reverse direction, in its own (reversed) step order.

    A sequence starting at step t means the reverse direction, which runs t-1 after t, must
    start afresh at t - 1: the mask moves one step back (a reset at a row's step 0 says nothing
    to it), then takes the reverse direction's order (``sequences.reverse_time``; with
    ``lengths`` only each row's valid steps are reversed).
    """
    shifted = torch.zeros_like(reset)
    shifted[:, :-1] = reset[:, 1:]
    if lengths is not None:  # a flag past a row's end must not move into its valid steps
        steps = torch.arange(reset.shape[1], device=reset.device)
        shifted &= steps.unsqueeze(0) < lengths.to(reset.device).unsqueeze(1) - 1
    if reverse_index is not None:
        reverse_index = reverse_index.to(reset.device)
    return sequences.reverse_time(shifted.unsqueeze(-1), reverse_index).squeeze(-1)


def fused_kwargs(regs: tuple, reset, generator) -> dict:
    """fused_rnn keyword arguments for one layer and direction: only those in use, so a call
    without any is exactly the plain call."""
    p_dc, p_var, zone = regs
    kwargs = {}
    if p_dc > 0:
        kwargs["dropconnect"] = p_dc
    if p_var > 0:
        kwargs["variational_dropout"] = p_var
    if zone[0] > 0 or zone[1] > 0:
        kwargs["zoneout"] = zone
    if reset is not None:
        kwargs["reset"] = reset
    if kwargs and generator is not None:
        kwargs["generator"] = generator
    return kwargs


def direction_all_states(every: torch.Tensor, reverse_index, reverse: bool) -> torch.Tensor:
    """fused_rnn's ``all_states`` [T, S, B, NH, DH] of one layer and direction as [S, B, T, H]
    indexed by time position: the reverse direction's steps (run on each row's valid steps
    reversed by ``reverse_index``, see ``sequences.reversal_index``) are put back in place."""
    T, S, B = every.shape[:3]
    rows = every.permute(2, 0, 1, 3, 4).reshape(B, T, -1)  # [B, T, S * H]
    if reverse:
        rows = sequences.reverse_time(rows, reverse_index)
    return rows.view(B, T, S, -1).permute(2, 0, 1, 3)


def all_states_layout(per_direction: list, batch_first: bool, batched: bool,
                      unsorted_indices=None) -> list:
    """The S tensors a module returns for ``return_all_states=True``.

    per_direction: [S, B, T, H] per layer and direction (layer 0 forward, layer 0 reverse, ...),
    rows in the kernels' order; ``unsorted_indices`` (a PackedSequence's) puts them back in the
    caller's order. Returns S tensors [L*D, T, B, H] ([L*D, B, T, H] with batch_first,
    [L*D, T, H] unbatched)."""
    every = torch.stack(per_direction, dim=1)  # [S, L*D, B, T, H]
    if unsorted_indices is not None:
        every = every.index_select(2, unsorted_indices.to(every.device))
    if not batched:
        every = every.squeeze(2)
    elif not batch_first:
        every = every.transpose(2, 3)
    return [s.contiguous() for s in every.unbind(0)]
