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


# --- the Triton 2D kernel (``triton_2d.py``) ----------------------------------------------------
# One program per (V block, batch row x head) walks every tile, so a tile's work is sequential
# and its live fp32 blocks must fit one program's registers. Live at the peak (the intra-tile
# step): the source coefficients MS [NP, NP] and q k^T [NP, NP], q and k [NP, BK], v and o
# [NP, BV], MB [NP, NB], LB [NB, NB], LS [NB, NP]; in the column sweep four [BY, NB + NP] blocks.
# NP = max(16, BX BY), NB = max(16, pow2(BX + BY)). On CUDA BY is 16 or 32 so every product of
# the sweep is a tl.dot (>= 16 on each side); tiles hold at most 64 nodes.
# The estimate UNDER-COUNTS the real kernel (fp32 "ieee" dots run on FMA units and hold whole
# operand rows per thread): at K = V = 64, bf16, the planned 4 x 16 tile (BV 32, 8 warps)
# predicts 124 registers but ptxas gives 255 plus 880 B (sm_90) / 1584 B (sm_80) of stack;
# 1 x 16 with BV 16 and 8 warps is the only measured tile without spills (250 registers).
# tests/kernels/test_plstm_triton_compile.py records this.
TRITON_WARPS = 8
TRITON_MAX_REGISTERS = 255
TRITON_BASE_REGISTERS = 24
TRITON_BX = (1, 2, 4, 8)
TRITON_BY = {"cuda": (16, 32), "cpu": (2, 4, 8, 16, 32)}
TRITON_MAX_NODES = 64
TRITON_BV = 32


@dataclass(frozen=True)
class PLSTM2DTritonPlan:
    """Tile of one Triton ``plstm_2d`` call, its predicted registers per thread (8 warps) and
    cost in multiply-adds (see ``plan_plstm_2d_triton``)."""

    BX: int
    BY: int
    BV: int
    num_warps: int
    registers_per_thread: int
    cost: int


def _pow2_at_least(n: int, low: int) -> int:
    return max(low, 1 << max(n - 1, 0).bit_length())


def triton_2d_registers(BX: int, BY: int, K: int, BV: int = TRITON_BV,
                        num_warps: int = TRITON_WARPS) -> int:
    """Predicted fp32 registers per thread of the Triton 2D kernel (the live blocks listed
    above, spread over 32 * num_warps threads, plus addresses and counters)."""
    NP, NB, BK = _pow2_at_least(BX * BY, 16), _pow2_at_least(BX + BY, 16), _pow2_at_least(K, 16)
    sweep = 4 * BY * (NB + NP)
    peak = 2 * NP * NP + 2 * NP * BK + 2 * NP * BV + NP * NB + NB * NB + NB * NP
    return TRITON_BASE_REGISTERS + -(-max(peak, sweep + NP * NP + NP * NB) // (32 * num_warps))


@functools.lru_cache(maxsize=256)
def plan_plstm_2d_triton(X: int, Y: int, K: int, V: int, batch_heads: int = 1,
                         device: str = "cuda") -> PLSTM2DTritonPlan:
    """The cheapest tile of the Triton 2D kernel whose live blocks fit the registers.

    A constrint model over BX, BY and the padded sizes NP >= BX BY, NB >= BX + BY (powers of two
    >= 16): registers per thread (``triton_2d_registers``, 8 warps) <= 255; cost per tile and
    program: the column sweep BX (BY^2 + 2 NP BY) (NB + NP), the intra-tile products
    NP^2 (K + BV) and the boundary read/update NB (NP + NB) K BV multiply-adds, plus
    ``STEP_COST`` for the tile's dependent steps; times the cdiv(X, BX) cdiv(Y, BY) tiles.
    ``device`` "cuda" keeps BY in {16, 32}; "cpu" (the interpreter) allows 2..32."""
    import constrint as ci
    kind = "cpu" if device == "cpu" else "cuda"
    BK, BV = _pow2_at_least(K, 16), TRITON_BV
    m = ci.Model()
    bx = m.int_var("BX", values=_fits(TRITON_BX, X))
    by = m.int_var("BY", values=_fits(TRITON_BY[kind], Y))
    n_p = m.int_var("NP", values=[16, 32, 64])
    n_b = m.int_var("NB", values=[16, 32, 64])
    m.add(bx * by <= TRITON_MAX_NODES)
    m.add(n_p >= bx * by)
    m.add(n_b >= bx + by)
    budget = (TRITON_MAX_REGISTERS - TRITON_BASE_REGISTERS) * 32 * TRITON_WARPS
    m.add(2 * n_p * n_p + 2 * BK * n_p + 2 * BV * n_p + n_p * n_b + n_b * n_b + n_b * n_p
          <= budget)
    m.add(4 * by * (n_b + n_p) + n_p * n_p + n_p * n_b <= budget)
    per_tile = (bx * (by * by + 2 * n_p * by) * (n_b + n_p) + n_p * n_p * (K + BV)
                + n_b * (n_p + n_b) * K * BV)
    m.minimize(ci.cdiv(X, bx) * ci.cdiv(Y, by) * (per_tile + STEP_COST[kind]))
    sol = m.solve()
    if not sol:
        raise RuntimeError(f"no Triton pLSTM 2D tile for X={X}, Y={Y}, K={K} "
                           f"(status {sol.status})")
    BX, BY = sol[bx], sol[by]
    return PLSTM2DTritonPlan(BX=BX, BY=BY, BV=BV, num_warps=TRITON_WARPS,
                             registers_per_thread=triton_2d_registers(BX, BY, K),
                             cost=sol.objective)
