"""Argument checks shared by the modules: constructor arguments and the forward's input
(messages name the argument and the allowed values)."""
from __future__ import annotations

import numbers

import torch

from flashseq.kernels.fused_rnn.backends import BACKEND_NAMES

from .errors import RNNInputError, RNNInputTypeError


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}; got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value}")
    return int(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False); got {type(value).__name__} {value!r}")
    return value


def check_dropout(dropout) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout <= 1:
        raise ValueError("dropout must be a number in [0, 1], the probability of zeroing an element "
                         f"of each layer's output except the last; got {dropout!r}")
    return float(dropout)


def check_backend(backend) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {list(BACKEND_NAMES)}; got {type(backend).__name__}")
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend={backend!r} is not known; allowed: {list(BACKEND_NAMES)}")
    return backend


def check_heads(hidden_size: int, num_heads) -> int:
    num_heads = check_int("num_heads", num_heads, 1)
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}); "
                         f"allowed num_heads: the divisors of {hidden_size}")
    return num_heads


def describe(t) -> str:
    """A value for an error message: a tensor's shape, dtype and device, else its type."""
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def sequence_input(kind: str, input, input_size: int, weight: torch.Tensor, batch_first: bool):
    """Checks a module's ``input`` and returns ``(x, batched)``: x a [B, T, input_size] view
    (the unbatched [T, input_size] gains B = 1), batched whether ``input`` had a batch axis.

    ``input`` is [T, B, input_size] ([B, T, input_size] with batch_first) or [T, input_size],
    with ``weight``'s dtype and device, at least one step and one row; anything else raises
    RNNInputTypeError (not a tensor; also a TypeError) or RNNInputError naming the module ``kind``.
    """
    if not isinstance(input, torch.Tensor):
        raise RNNInputTypeError(f"{kind}: input must be a torch.Tensor [T, B, input_size] or "
                                f"[T, input_size] (PackedSequence is not supported); got "
                                f"{type(input).__name__}")
    if input.dim() not in (2, 3) or input.shape[-1] != input_size:
        raise RNNInputError(f"{kind}: input must be [T, B, input_size] ([B, T, input_size] "
                            f"with batch_first) or [T, input_size] with input_size="
                            f"{input_size}; got {describe(input)}")
    if input.dtype != weight.dtype or input.device != weight.device:
        raise RNNInputError(f"{kind}: input must have the parameters' dtype {weight.dtype} "
                            f"and device {weight.device}; got {describe(input)}")
    batched = input.dim() == 3
    x = input if batched else input.unsqueeze(0 if batch_first else 1)
    x = x if batch_first else x.transpose(0, 1)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise RNNInputError(f"{kind}: input must have at least one time step and one row; "
                            f"got {describe(input)}")
    return x, batched
