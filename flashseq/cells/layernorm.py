"""What the LayerNorm cells share: the normalisation and the cell type that carries it.

``layer_norm(x, dims)`` normalises over the trailing ``dims`` axes with unit gain and zero bias
(no learnable parameters; eps 1e-5 as ``torch.nn.LayerNorm``). ``NormCell`` is a ``Cell`` whose
recurrent part is normalised before the recurrent bias is added: the reference loop computes
``rh_t = normalize_recurrent(h_prev @ r) + b`` for it instead of ``h_prev @ r + b``, so that
``b`` plays the part of the bias the paper adds after the norms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .base import Cell

EPS = 1e-5


def layer_norm(x: torch.Tensor, dims: int) -> torch.Tensor:
    """``x`` normalised to zero mean and unit (biased) variance over its last ``dims`` axes."""
    axes = tuple(range(-dims, 0))
    mean = x.mean(dim=axes, keepdim=True)
    var = (x - mean).square().mean(dim=axes, keepdim=True)
    return (x - mean) * torch.rsqrt(var + EPS)


def normalize_gates(x: torch.Tensor) -> torch.Tensor:
    """[B, G, NH, DH] gate pre-activations normalised per row and head over all G*DH values
    together (each head is an independent recurrence, so it gets its own statistics)."""
    return layer_norm(x.transpose(1, 2), 2).transpose(1, 2)


@dataclass(frozen=True)
class NormCell(Cell):
    """A cell whose recurrent pre-activations ``h_prev @ r`` [B, G, NH, DH] pass through
    ``normalize_recurrent`` before the recurrent bias ``b`` is added."""

    normalize_recurrent: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
