"""Constructor argument checks shared by the modules (messages name the argument and the
allowed values)."""
from __future__ import annotations

import numbers

from flashseq.kernels.fused_rnn.backends import BACKEND_NAMES


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
