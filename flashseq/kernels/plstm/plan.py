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


# The Triton 1D kernels (``triton_1d.py``, ``triton_1d_tree.py``) hold [BT, BT], [BT, 16] and
# [16, 16] blocks per program (K is walked 16 rows at a time in the backward, V split in blocks of
# 16); ptxas (triton 3.7, 4 warps, sm_80 and sm_90, bf16 and fp32, K = V = 64 and 128) fits the
# backward without spills at BT = 16 (251-255 registers) and spills at BT = 32 (40-400 B), so on
# CUDA the chunk of a Triton call is at most 16. tests/kernels/test_plstm_triton_compile.py
# checks every 1D kernel at the planned chunk for spills.
TRITON_1D_MAX_CHUNK = {"cuda": 16}


@functools.lru_cache(maxsize=256)
def plan_plstm_1d_triton(T: int, K: int, V: int, batch_heads: int = 1, device: str = "cuda",
                         dtype: str = "bfloat16") -> PLSTM1DPlan:
    """The chunk of a Triton ``plstm_1d`` call: ``plan_plstm_1d``'s cheapest chunk among those
    whose kernels fit the registers on ``device`` ("cpu", the interpreter, has no limit; any
    other device is costed as "cuda"). ``dtype`` (q's, by name) is accepted for symmetry with
    the 2D plan: both 16-bit and float32 fit at the same chunk."""
    kind = "cpu" if device == "cpu" else "cuda"
    cap = TRITON_1D_MAX_CHUNK.get(kind)
    plan = plan_plstm_1d(T, K, V, batch_heads, device)
    if cap is None or plan.chunk <= cap:
        return plan
    step = STEP_COST.get(device, STEP_COST["cuda"])
    cost = -(-T // cap) * (batch_heads * (cap * cap * (K + V) + 2 * cap * K * V) + step)
    return PLSTM1DPlan(chunk=cap, cost=cost)


# --- the Triton 2D kernel (``triton_2d.py``) ----------------------------------------------------
# One program per (V block, batch row x head) walks every tile, so a tile's work is sequential
# and its live fp32 blocks must fit one program's registers. The kernel keeps the tile's
# coefficients in a global slab (written by the column sweep, read back as tl.dot operands) and
# walks the edge states one K row at a time, so the peak is the boundary step: MB [NP, NB],
# LB [NB, NB], LS [NB, NP], and five [NP or NB, BV] blocks (o, v, k v, the entering and the
# leaving state row) -- nothing scales with K (q k^T goes 32 columns of K at a time).
# NP = max(16, BX BY), NB = max(16, pow2(BX + BY)). On CUDA BY is 16 or 32 so every product of
# the sweep is a tl.dot (>= 16 on each side).
# Registers per thread are NOT those blocks over the threads: tl.dot operands are replicated
# across warps and ptxas keeps addresses and masks. TRITON_REGISTERS_PER_BLOCK and
# TRITON_BASE_REGISTERS are calibrated on ptxas (triton 3.7, bf16, 8 warps, sm_80 and sm_90,
# K = V = 64 and 128; units = peak elements / 256 threads): 1 x 16 BV 16 (15 units) 202-218
# registers and 2 x 16 BV 16 (22 units) 216-242, both without spills; 1 x 16 BV 32 (22 units)
# 220; 2 x 16 BV 32 (32 units) 255 + 8 B spilled; 4 x 16 BV 16 (36 units) 255 + 120 B. The
# model predicts 220 / 248 / 248 / 288 / 304, so it admits exactly the tiles that compiled
# without spills. tests/kernels/test_plstm_triton_compile.py checks prediction >= measurement
# and no spills for the planned tile.
# float32 inputs run tl.dot "ieee", which sm_80 lowers to FMA loops instead of mma: at 8 warps
# the 2 x 16 BV 16 tile then takes 255 registers + 16 B of stack on sm_80 (178 on sm_90), and
# 1 x 16 128 registers + 16 B of stack (a ptxas call frame). At 4 warps 2 x 16 compiles without
# spills: sm_80 252 (K = V = 64) / 255 (128) registers, sm_90 245. Units for float32 are per 128
# threads; TRITON_BASE_REGISTERS_FP32 makes the model meet those measurements (2 x 16: 44 units,
# predicted 255), so 2 x 16 is the largest float32 tile it admits.
TRITON_WARPS = 8
TRITON_WARPS_FP32 = 4
TRITON_MAX_REGISTERS = 255
TRITON_BASE_REGISTERS = 160
TRITON_BASE_REGISTERS_FP32 = 79
TRITON_REGISTERS_PER_BLOCK = 4     # registers per unit (one fp32 element per thread)
TRITON_BX = (1, 2, 4, 8)
TRITON_BY = {"cuda": (16, 32), "cpu": (2, 4, 8, 16, 32)}
TRITON_MAX_NODES = 64
TRITON_BV = 16


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


def _peak_elements(NP, NB, BV: int):
    """fp32 elements live at the kernel's peak (the boundary step; see above)."""
    return NP * NB + NB * NB + NB * NP + 3 * NP * BV + 2 * NB * BV


def _register_model(dtype: str):
    """(warps, base registers) of the Triton 2D forward for q's dtype name."""
    if dtype == "float32":
        return TRITON_WARPS_FP32, TRITON_BASE_REGISTERS_FP32
    return TRITON_WARPS, TRITON_BASE_REGISTERS


def triton_2d_registers(BX: int, BY: int, K: int, BV: int = TRITON_BV,
                        dtype: str = "bfloat16") -> int:
    """Predicted registers per thread of the Triton 2D kernel for q's dtype name
    ("float32", "bfloat16", "float16"), at that dtype's warps (ptxas-calibrated model above;
    independent of K, which the kernel walks in steps)."""
    num_warps, base = _register_model(dtype)
    NP, NB = _pow2_at_least(BX * BY, 16), _pow2_at_least(BX + BY, 16)
    units = -(-_peak_elements(NP, NB, BV) // (32 * num_warps))
    return base + TRITON_REGISTERS_PER_BLOCK * units


@functools.lru_cache(maxsize=256)
def plan_plstm_2d_triton(X: int, Y: int, K: int, V: int, batch_heads: int = 1,
                         device: str = "cuda", dtype: str = "bfloat16") -> PLSTM2DTritonPlan:
    """The cheapest tile of the Triton 2D kernel whose live blocks fit the registers.

    A constrint model over BX, BY and the padded sizes NP >= BX BY, NB >= BX + BY (powers of two
    >= 16): predicted registers per thread (``triton_2d_registers``: 8 warps for 16-bit q,
    4 for ``dtype`` "float32") <= 255; cost per
    tile and program: the column sweep BX BY^2 (NB + NP), the intra-tile products
    NP^2 (K + BV) and the boundary read/update (NP NB + NB (NB + NP)) K BV multiply-adds, plus
    ``STEP_COST`` for the tile's dependent steps; times the cdiv(X, BX) cdiv(Y, BY) tiles.
    ``device`` "cuda" keeps BY in {16, 32}; "cpu" (the interpreter) allows 2..32."""
    import constrint as ci
    kind = "cpu" if device == "cpu" else "cuda"
    BV = TRITON_BV
    m = ci.Model()
    bx = m.int_var("BX", values=_fits(TRITON_BX, X))
    by = m.int_var("BY", values=_fits(TRITON_BY[kind], Y))
    n_p = m.int_var("NP", values=[16, 32, 64])
    n_b = m.int_var("NB", values=[16, 32, 64])
    m.add(bx * by <= TRITON_MAX_NODES)
    m.add(n_p >= bx * by)
    m.add(n_b >= bx + by)
    num_warps, base = _register_model(dtype)
    threads = 32 * num_warps
    units = (TRITON_MAX_REGISTERS - base) // TRITON_REGISTERS_PER_BLOCK
    m.add(_peak_elements(n_p, n_b, BV) <= units * threads)
    per_tile = (bx * by * by * (n_b + n_p) + n_p * n_p * (K + BV)
                + (n_p * n_b + n_b * (n_b + n_p)) * K * BV)
    m.minimize(ci.cdiv(X, bx) * ci.cdiv(Y, by) * (per_tile + STEP_COST[kind]))
    sol = m.solve()
    if not sol:
        raise RuntimeError(f"no Triton pLSTM 2D tile for X={X}, Y={Y}, K={K} "
                           f"(status {sol.status})")
    BX, BY = sol[bx], sol[by]
    return PLSTM2DTritonPlan(BX=BX, BY=BY, BV=BV, num_warps=num_warps,
                             registers_per_thread=triton_2d_registers(BX, BY, K, dtype=dtype),
                             cost=sol.objective)
