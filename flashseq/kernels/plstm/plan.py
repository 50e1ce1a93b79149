"""Chunk and tile sizes of the parallel pLSTM forms, chosen by a constrint model.

2D: a BX x BY tile (powers of two, 2..32, at most 256 nodes so the per-tile [n, n] gate block
stays small) costs, in multiply-adds per (batch row, head):
    coefficients  BX (BY + 1)^2 (BX BY + BX + BY)   -- the column sweep over the tile's inputs
    intra tile    (BX BY)^2 (K + V)                 -- q k^T and its product with v
    boundary      2 BX BY (BX + BY) K V             -- reading and writing the edge states
times B * H, plus a fixed cost per tile for the sequential walk over tiles (a handful of kernel
launches: ``STEP_COST[device]`` multiply-adds' worth); the objective is the sum over the
cdiv(X, BX) cdiv(Y, BY) tiles. 1D: a chunk of L steps (16..128) costs B H (L^2 (K + V) + 2 L K V)
plus the step cost. A tile wider than the (padded) grid is never chosen.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

# one sequential tile/chunk step, in multiply-adds: ~50 us of launches at ~4 GFLOP/s (CPU) or
# at ~50 TFLOP/s (GPU)
STEP_COST = {"cpu": 200_000, "cuda": 2_500_000_000}
POW2_2D = (2, 4, 8, 16, 32)
POW2_1D = (16, 32, 64, 128)


@dataclass(frozen=True)
class PLSTM2DPlan:
    """Tile of one ``plstm_2d`` call and its predicted cost (see the module docstring)."""

    BX: int
    BY: int
    cost: int


@dataclass(frozen=True)
class PLSTM1DPlan:
    """Chunk of one ``plstm_1d`` call and its predicted cost."""

    chunk: int
    cost: int


def _fits(sizes, extent):
    """Powers of two from ``sizes`` no larger than the next power of two >= extent."""
    cap = 1 << max(extent - 1, 0).bit_length()
    return [s for s in sizes if s <= max(cap, sizes[0])]


@functools.lru_cache(maxsize=256)
def plan_plstm_2d(X: int, Y: int, K: int, V: int, batch_heads: int = 1,
                  device: str = "cpu") -> PLSTM2DPlan:
    """The cheapest tile for an X x Y grid, key/value head dims K, V, B * H = batch_heads,
    device type "cpu" or "cuda" (others are costed as "cuda")."""
    import constrint as ci
    m = ci.Model()
    bx = m.int_var("BX", values=_fits(POW2_2D, X))
    by = m.int_var("BY", values=_fits(POW2_2D, Y))
    m.add(bx * by <= 256)
    n = bx * by
    per_tile = (bx * (by + 1) * (by + 1) * (n + bx + by) + n * n * (K + V)
                + 2 * n * (bx + by) * K * V)
    step = STEP_COST.get(device, STEP_COST["cuda"])
    m.minimize(ci.cdiv(X, bx) * ci.cdiv(Y, by) * (batch_heads * per_tile + step))
    sol = m.solve()
    if not sol:
        raise RuntimeError(f"no pLSTM 2D tile for X={X}, Y={Y}, K={K}, V={V} (status {sol.status})")
    return PLSTM2DPlan(BX=sol[bx], BY=sol[by], cost=sol.objective)


@functools.lru_cache(maxsize=256)
def plan_plstm_1d(T: int, K: int, V: int, batch_heads: int = 1, device: str = "cpu") -> PLSTM1DPlan:
    """The cheapest chunk for T steps, key/value head dims K, V, B * H = batch_heads."""
    import constrint as ci
    m = ci.Model()
    L = m.int_var("L", values=_fits(POW2_1D, T))
    step = STEP_COST.get(device, STEP_COST["cuda"])
    m.minimize(ci.cdiv(T, L) * (batch_heads * (L * L * (K + V) + 2 * L * K * V) + step))
    sol = m.solve()
    if not sol:
        raise RuntimeError(f"no pLSTM chunk for T={T}, K={K}, V={V} (status {sol.status})")
    return PLSTM1DPlan(chunk=sol[L], cost=sol.objective)
