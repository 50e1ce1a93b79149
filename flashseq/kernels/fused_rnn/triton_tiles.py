"""Interim tile choice for the Triton ``fused_rnn`` kernels (until ``plan.py`` serves them).

Two paths:
- ``"fused"``: persistent kernels, one program per (batch tile, head), the head's weights
  G * DHP * DHP on chip for all T steps. Chosen when they fit ``max_onchip_bytes``.
- ``"stepwise"``: one launch per step, the head split into BH-unit column tiles, weights streamed
  in BK-row chunks; any DH and any batch fit (per-program footprint is G * BK * BH elements).

Without a CUDA device (TRITON_INTERPRET=1) there is no GPUSpec; the H100 entry stands in so that
the interpreter runs the same path a GPU would (documented default, not a measurement).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from flashseq.hardware import GPUSpec, detect

MIN_DOT = 16  # tl.dot's smallest tile side


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass(frozen=True)
class TritonTiles:
    """Which kernel runs and its compile-time tile sizes.

    path: "fused" or "stepwise"; BB batch rows per program; DHP the padded head size (fused);
    BH units per program and BK reduction chunk (stepwise); reason: why this path.
    """

    path: str
    BB: int
    DHP: int
    BH: int
    BK: int
    num_warps: int
    onchip_bytes: int
    max_onchip_bytes: int
    reason: str


def default_onchip_bytes(gpu: GPUSpec) -> int:
    # A quarter of one block's register file for the loop-invariant weights: the rest holds the
    # G gate accumulators, S states and dot operands of a [BB, DHP] tile without spilling.
    # First guess; to be replaced by the plan/autotuner once measured on a GPU.
    return gpu.registers_per_block * 4 // 4


def _choose_tiles(cell, batch: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                  max_onchip_bytes: int | None = None) -> TritonTiles:
    """Tiles for ``cell`` at this batch/head size/dtype; ``max_onchip_bytes`` overrides the
    budget for the fused path's on-chip weights (a tiny value forces the stepwise path)."""
    gpu = detect(device) if device.type == "cuda" else None
    gpu = gpu or GPUSpec.from_name("h100")
    budget = default_onchip_bytes(gpu) if max_onchip_bytes is None else int(max_onchip_bytes)
    elem = torch.finfo(dtype).bits // 8
    G = cell.num_gates
    DHP = max(MIN_DOT, next_pow2(head_dim))
    # batch tile: one tile covers small batches; 16 rows keep the register tile small for big heads
    BB = min(max(MIN_DOT, next_pow2(batch)), 64 if DHP <= 64 else 32 if DHP <= 128 else 16)
    weights = G * DHP * DHP * elem
    if weights <= budget:
        return TritonTiles("fused", BB, DHP, DHP, DHP, 4 if DHP <= 64 else 8, weights, budget,
                           f"the head's weights ({weights} B) fit the on-chip budget ({budget} B)")
    BH = BK = min(DHP, 64)
    while G * BH * BK * elem > budget and BH > MIN_DOT:
        BH //= 2
        BK = BH
    return TritonTiles("stepwise", min(BB, 32), DHP, BH, BK, 4, G * BH * BK * elem, budget,
                       f"the head's weights ({weights} B) exceed the on-chip budget ({budget} B): "
                       f"one launch per step over {BH}-unit column tiles")
