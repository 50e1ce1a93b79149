"""Tile sizes of the CUDA ``fused_rnn`` BACKWARD kernel (csrc/fused/backward.cuh), chosen by
their own constrint model per (cell, shape, dtype, GPU), beside the forward's (plan.py).

The backward walks the steps in reverse with the head's recurrent weights on chip, like the
forward, but its product is the transposed one: per block and step
    D[k, b] = sum_{(g, e) of the block} r[g, head, k, e] * d(rh)[b, g, e],   k over all DHP rows,
so a block keeps the same weight slice (G x DHP x BH: its BH units, all gates, all k) as the
mma A operand with rows k and the block's G*BH gate columns as the reduction; the P = DHP / BH
blocks of a head each hold a partial d(h_prev) of all DHP rows, and each block sums the P
partials of its own units (csrc/fused/layout_bwd.h). Nothing of the forward's tiling is reused:
the saved values it reads are in a tile-free global layout, so the solver picks the backward's
blocks for the backward.

The model (``build_backward_model``). Variables: BB (batch tile), BH (units per block), the
forward-style warp grid WM x WK (the kernel's template arguments; only W = WM * WK matters to
the backward, which regroups the warps), 0/1 flags ``split`` (P > 1) and ``cluster``, and the
regrouping the kernel derives from W (layout_bwd.h BwdTiling):
  mma.sync: WMB = gcd(W, DHP/16) warps over the rows k x WKB = W / WMB over the gate columns;
  wgmma (sm_90a):   GWM = gcd(W/4, cdiv(DHP, 64)) warpgroups over the 64-row tiles of k
            x GWK over the gate columns.
W and the tiles are powers of two, so gcd(W, n) is min(W, the largest power of two dividing n):
the model states it as WMB * R = that power and (WKB - 1) * (R - 1) = 0 (one of the two is 1).
Constraints (``backward_resources`` gives every term, used by the model and, with plain
integers, to re-check a plan):
- registers per thread: the weight fragments (G*DHP*BH elements over the block's threads;
  wgmma: whole 64-row tiles, the padding rows included), per owned (batch, unit) element the
  carried state gradients and the length (and, past the first element, the further registers
  ptxas holds per element through the whole step, fitted: STEP_REGISTERS_PER_EXTRA_ELEMENT), the larger of the product's fp32 accumulators
  (DHP*BB/WMB/32 per lane; wgmma cdiv(DHP,64)/GWM x BB/2) and the pointwise backward's live
  values, the base registers; in units of 8, <= 255 and x threads <= the block's register file;
  calibrated on ptxas (nvcc 13.0, sm_80 / sm_90a) as the smallest cap without spills;
- shared memory: d(rh) [BB][G*BH] (+16 B per row of padding for mma.sync) + the partial sums
  double-buffered by step parity, 2 x slices x BB x (DHP + pad) fp32, <= the opt-in limit;
- fragments: G*BH splits into WKB warps of whole K tiles (K = 16, tf32 8), or GWK warpgroups of
  k steps of 16; the forward-style grid the kernel checks (16-row tiles per WM warp, K tiles
  per WK warp); wgmma needs whole warpgroups, BB of 8 or 16 and DHP in k steps per warpgroup;
- exchange: a split head meets inside a cluster (sm_90: P <= the cluster limit, partials read
  through distributed shared memory) or through global memory behind a flag barrier, which
  needs the whole grid co-resident (registers, threads, shared memory, blocks per SM).
Coverage. The backward kernel takes r zero-padded to its own DHP (any multiple of 16 >= DH;
units past DH are masked), so the plan may pad wider than the forward where the forward's
padding has no tiling (``padding_candidates``: DH rounded up to 16, then 32, 64, ..., 1024; a
DHP with more factors of two lets more warps share the rows k and their accumulators). On sm_90
each padding is tried first on the tilings the sm_90a build runs on wgmma
(``cuda_compile.wgmma_serves``), then, where none fits (e.g. Elman DH 40: 48 gate columns allow
one warp of 16-row tiles, no warpgroup), on mma.sync at exactly the tilings wgmma does not
serve, as the forward does, so the plan's product and the build's agree. Where the forward
has a plan and the backward still has none, the forward splits its heads over many blocks
(through global memory with the whole grid co-resident, which the backward's blocks, holding
accumulators and partial sums of all DHP rows, cannot be; rarely a full cluster at nearly 255
registers per thread): the message says which limits with the sizes.

The objective is the predicted time of one reversed step (picoseconds, the forward's cost
constants): tensor time, the mma chain over the block's gate columns, shared-memory traffic of
d(rh) and the partials, the exchange, the per-step HBM streams (saved values, states, d(h)
in; d(wx), d(rh) out), the pointwise backward, one HBM latency and the barriers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flashseq.hardware import GPUSpec

from .plan import (BASE_REGISTERS, CLUSTER_BARRIER_PS, CTA_BARRIER_PS, GRID_BARRIER_PS,
                   HBM_LATENCY_PS, MMA_LATENCY_CLOCKS, POINTWISE_INSTRUCTIONS, REGISTER_GRANULE,
                   FusedRNNPlan, LaunchShape, _binding, _cdiv_int, _check_args, _Consts, _consts,
                   _next_pow2)

# fp32 values the save-mode forward writes per step and element for the backward (csrc/cells:
# kNumSaved), which the backward streams back in
SAVED_PER_STEP = {"lstm": 4, "gru": 4, "slstm": 4, "elman": 0}
# (the pointwise backward's live values: gates, states, gradients and the addresses of its six
# streams, and 8 more per extra unrolled element: the calibration of the register model)
POINTWISE_BASE_REGISTERS = 20
POINTWISE_REGISTERS_PER_EXTRA_ELEMENT = 8
# (per owned element past the first, besides its carried gradients and length, the registers
# ptxas keeps through the whole reversed step, product included: measured, not itemised (most
# likely the element's offsets and masks); fitted on uncapped ptxas at 2-4 elements per thread,
# e.g. bf16 LSTM DH 288, BB 16, BH 48, 8 warps on sm_80: 230 registers, 224 predicted without)
STEP_REGISTERS_PER_EXTRA_ELEMENT = 7


@dataclass(frozen=True)
class FusedRNNBackwardPlan(LaunchShape):
    """Tile sizes and predictions of the CUDA backward kernel for one configuration.

    The fields the kernel's -D flags read carry the forward plan's names (BB, BH, warps_m,
    warps_n, padded_head_dim, cluster_size, registers_per_thread), so
    ``cuda_compile.backward_defines`` instantiates it like a forward plan.
    grid is (heads * programs_per_head, cdiv(batch, BB)).
    """

    backend: str                   # "cuda"
    path: str                      # "fused" (P == 1) | "split"
    cell: str
    dtype: str
    gpu: str
    batch: int
    heads: int
    head_dim: int
    padded_head_dim: int           # DHP, a multiple of 16
    BB: int
    BH: int
    num_warps: int
    warps_m: int                   # the kernel's template WM (forward-style grid)
    warps_n: int                   # the kernel's template WK
    wgmma: bool                    # the product on wgmma (sm_90a build), else mma.sync
    row_groups: int                # WMB warps (wgmma: GWM warpgroups) over the DHP rows k
    column_groups: int             # WKB warps (wgmma: GWK warpgroups) over the G*BH columns
    programs_per_head: int
    cluster_size: int              # P when a split head meets in a cluster, else 1
    grid: tuple[int, int]
    registers_per_thread: int      # predicted, allocation granularity included
    shared_memory_bytes: int       # predicted: d(rh) + double-buffered partial sums
    onchip_weight_bytes: int       # register bytes of one block's weight fragments
    exchange_bytes: int            # global fp32 partial buffer (split without cluster), else 0
    predicted_step_ns: float
    binding: str                   # the limit closest to its cap
    reason: str


def _pow2_part(n: int) -> int:
    """The largest power of two dividing n (n >= 1)."""
    return n & -n


def _pow2s(limit: int) -> list[int]:
    return [1 << i for i in range(limit.bit_length()) if 1 << i <= limit]


def backward_resources(v, c: _Consts, cdiv, saved: int, wgmma: bool):
    """Predicted resource use and reversed-step time of a backward tiling, as model expressions
    or plain ints (``cdiv``: constrint's, or integer ceiling division); ``saved``: the cell's
    saved values per step and element (``SAVED_PER_STEP``).

    ``v`` maps BB, BH, WM, WN, split, cluster, WMB, WKB (mma.sync regrouping) and, with
    ``wgmma`` (an sm_90 plan at a tiling the sm_90a build runs on wgmma), GWM, GWK to
    variables or ints. Such a plan's tiling serves both products (wgmma on sm_90a, mma.sync in
    an sm_80 build of it), so its registers and shared memory are the larger of the two;
    without ``wgmma`` the mma.sync terms alone. Returns a dict: regs_terms (the registers before
    rounding are their sum plus ``live``, the largest of ``live_terms``), live_terms, threads,
    smem_terms (shared memory is their max), weights (register bytes of the weight
    fragments), P, grid, waves, time_ps.
    """
    BB, BH, WM, WN = v["BB"], v["BH"], v["WM"], v["WN"]
    split, clus = v["split"], v["cluster"]
    G, S, DHP, eb = c.G, c.S, c.DHP, c.eb
    k = 16 if eb == 2 else 8                          # mma K: 16-bit, or tf32
    W = WM * WN
    threads = 32 * W
    P = cdiv(DHP, BH)
    grid = c.NH * P * cdiv(c.B, BB)
    elems = cdiv(BB * BH, threads)
    n_tiles = cdiv(BB, 8)
    part_stride = DHP + ((4 - DHP) % 32 + 32) % 32   # layout_bwd.h part_stride
    # mma.sync: fragments of G*DHP*BH weights, WMB warps over the rows, d(rh) rows padded 16 B
    weights = G * DHP * BH * eb
    acc = [cdiv(DHP * BB, 32 * v["WMB"])]
    slices = v["WKB"]
    chain_ps = cdiv(G * BH, k * v["WKB"]) * MMA_LATENCY_CLOCKS * c.clock_ps
    smem_terms = [G * BB * BH * eb + 16 * BB + 2 * v["WKB"] * BB * part_stride * 4]
    if wgmma:
        # wgmma: whole 64-row tiles of k (padding rows hold zeros), GWM warpgroups over them
        m64 = cdiv(DHP, 64)
        weights = 64 * m64 * G * BH * eb
        acc.append(cdiv(m64 * BB, 2 * v["GWM"]))
        slices = v["GWK"]
        chain_ps = cdiv(G * BH, k * v["GWK"]) * MMA_LATENCY_CLOCKS * c.clock_ps
        smem_terms.append(G * BB * BH * eb + 2 * v["GWK"] * BB * part_stride * 4)
    w_regs = cdiv(weights, 4 * threads)
    pointwise = (3 * G + 2 * S + POINTWISE_BASE_REGISTERS
                 + POINTWISE_REGISTERS_PER_EXTRA_ELEMENT * (elems - 1))
    live_terms = [a + 2 * n_tiles for a in acc] + [pointwise]
    regs_terms = [w_regs, elems * (S + 1) + STEP_REGISTERS_PER_EXTRA_ELEMENT * (elems - 1),
                  BASE_REGISTERS]

    mma_ps = cdiv(W, 4) * cdiv(G * BB * BH * DHP, 2048 * W) * c.mma_ps
    # d(rh) written and read, the partials written; the gather of the own rows
    smem_ps = (2 * G * BB * BH * eb + slices * BB * DHP * 4 + slices * BB * BH * 4) * c.smem_ps
    # the P blocks' partials of the own rows: from the peers' shared memory (cluster) or
    # published to and read back from L2 (global)
    xchg_ps = (clus * slices * BB * DHP * 4 * c.dsmem_ps
               + (split - clus) * 2 * BB * DHP * 4 * c.l2_ps)
    hbm_ps = BB * BH * ((saved + S + 1) * 4 + eb + G * (eb + 4)) * c.hbm_ps
    pointwise_ps = cdiv(W, 4) * elems * 2 * POINTWISE_INSTRUCTIONS * c.clock_ps
    sync_ps = 2 * CTA_BARRIER_PS + clus * CLUSTER_BARRIER_PS + (split - clus) * GRID_BARRIER_PS
    program_ps = (mma_ps + chain_ps + smem_ps + xchg_ps + hbm_ps + pointwise_ps + HBM_LATENCY_PS
                  + sync_ps)
    waves = cdiv(grid, c.sms)
    return dict(regs_terms=regs_terms, live_terms=live_terms, threads=threads,
                smem_terms=smem_terms, weights=weights, P=P, grid=grid, waves=waves,
                time_ps=waves * program_ps)


def has_wgmma(gpu: GPUSpec) -> bool:
    """The backward's product may run on wgmma: sm_90 (the kernels' sm_90a build)."""
    return tuple(gpu.compute_capability) == (9, 0)


def _registers(r, cdiv=_cdiv_int) -> int:
    """Allocated registers per thread of plain-int ``backward_resources``."""
    total = sum(r["regs_terms"]) + max(r["live_terms"])
    return REGISTER_GRANULE * cdiv(total, REGISTER_GRANULE)


def _domains(c: _Consts, gpu: GPUSpec, wgmma: bool, fallback: bool):
    k = 16 if c.eb == 2 else 8
    bb = [t for t in (8, 16, 32, 64) if t <= max(8, _next_pow2(c.B))]
    if wgmma:
        bb = [t for t in bb if t <= 16]               # wgmma N = BB: 8 or 16
    a = min(32, _pow2_part(c.DHP // 16))
    d = dict(BB=bb, BH=[b for b in range(8, c.DHP + 1, 8) if c.DHP % b == 0],
             WM=[1, 2, 4, 8, 16], WN=[w for w in (1, 2, 4, 8) if c.DHP % (k * w) == 0],
             split=[0, 1], cluster=[0, 1] if gpu.supports_clusters else [0],
             WMB=_pow2s(a), WKB=_pow2s(32), R=_pow2s(a))
    if fallback:
        d.update(lo=[0, 1], hi=[0, 1], wide=[0, 1])
    if wgmma:
        a2 = min(8, _pow2_part(_cdiv_int(c.DHP, 64)))
        d.update(NWG=[n for n in (1, 2, 4, 8) if c.DHP % (k * n) == 0],
                 GWM=_pow2s(a2), GWK=_pow2s(8), R2=_pow2s(a2))
    return d


def _backward_consts(cell, batch, heads, head_dim, dtype, gpu, padded) -> _Consts:
    c = _consts(cell, batch, heads, head_dim, dtype, gpu, "cuda")
    if padded is None:
        return c
    if padded % 16 or padded < c.DHP:
        raise ValueError(f"padded_head_dim must be a multiple of 16 >= {c.DHP} (head_dim="
                         f"{head_dim} padded to 16); got {padded}")
    return dataclasses.replace(c, DHP=padded)


def padding_candidates(head_dim: int) -> list[int]:
    """The DHP values the backward may run at, in the order tried: the forward's padding (the
    next multiple of 16), then DH rounded up to multiples of 32, 64, ..., 1024. The backward
    kernel takes any multiple of 16 >= DH (its weights are zero-padded to its own DHP, units
    past DH masked); a DHP with more factors of two lets more warps split the rows k
    (WMB = gcd(W, DHP/16)) and whole warpgroups take the 64-row tiles."""
    out = []
    for m in (16, 32, 64, 128, 256, 512, 1024):
        d = _cdiv_int(head_dim, m) * m
        if d not in out:
            out.append(d)
    return out


def build_backward_model(cell, batch, heads, head_dim, dtype, gpu, *, padded_head_dim=None,
                         wgmma=None):
    """The constrint model of the CUDA backward's tiling for one configuration (arguments as
    ``plan_fused_rnn_backward``). Returns ``(model, variables)``: a ``constrint.Model``
    minimising the predicted reversed-step time in picoseconds, and {name: variable}.

    padded_head_dim: the DHP to tile (a multiple of 16 >= DH; default: the forward's, the next
        multiple of 16; ``padding_candidates``).
    wgmma: on sm_90 (``has_wgmma``), True (default) models the tilings the sm_90a build runs on
        wgmma (``cuda_compile.wgmma_serves``); False the mma.sync fallback, i.e. exactly the
        tilings wgmma does not serve (fewer than 4 warps, warpgroups whose k steps do not
        divide DHP, or BB > 16), so the build's choice and the plan agree. Ignored elsewhere.
    """
    import constrint as ci

    cell, gpu, dtype, _ = _check_args(cell, batch, heads, head_dim, dtype, gpu, "cuda", None)
    c = _backward_consts(cell, batch, heads, head_dim, dtype, gpu, padded_head_dim)
    wgmma = has_wgmma(gpu) and wgmma is not False
    fallback = has_wgmma(gpu) and not wgmma
    m = ci.Model()
    v = {name: m.int_var(name, values=dom)
         for name, dom in _domains(c, gpu, wgmma, fallback).items()}
    BH, WM, WN, split, clus = v["BH"], v["WM"], v["WN"], v["split"], v["cluster"]
    W = WM * WN
    # the kernel's regrouping of the W warps: WMB = gcd(W, DHP/16) (powers of two: the smaller
    # of W and the power-of-two part a of DHP/16): WMB * WKB = W, WMB * R = a, WKB = 1 or R = 1
    a = min(32, _pow2_part(c.DHP // 16))
    m.add(v["WMB"] * v["WKB"] == W)
    m.add(v["WMB"] * v["R"] == a)
    m.add(v["WKB"] * v["R"] == v["WKB"] + v["R"] - 1)
    k = 16 if c.eb == 2 else 8
    m.add(ci.divides(k * v["WKB"], c.G * BH))         # whole K tiles per warp
    if fallback:
        # a tiling wgmma does not serve (cuda_compile.wgmma_serves, powers of two): W <= 2,
        # or W/4 warpgroups of k steps that do not divide DHP (W >= 8 * nmax), or BB >= 32
        nmax = _pow2_part(c.DHP) // k
        m.add(v["lo"] + v["hi"] + v["wide"] >= 1)
        m.add(W <= 2 + (1 - v["lo"]) * 1024)
        m.add(W >= 8 * nmax * v["hi"])
        m.add(v["BB"] >= 32 * v["wide"])
    if wgmma:
        # a tiling wgmma serves (layout.h gmma_invalid; its regrouping, layout_bwd.h):
        # whole warpgroups, GWM = gcd(W/4, cdiv(DHP, 64)) as WMB above, whole k steps of K
        a2 = min(8, _pow2_part(_cdiv_int(c.DHP, 64)))
        m.add(W == 4 * v["NWG"])
        m.add(v["GWM"] * v["GWK"] == v["NWG"])
        m.add(v["GWM"] * v["R2"] == a2)
        m.add(v["GWK"] * v["R2"] == v["GWK"] + v["R2"] - 1)
        m.add(ci.divides(k * v["GWK"], c.G * BH))
    m.add(ci.divides(16 * WM, c.G * BH))              # the kernel's forward-style grid check
    r = backward_resources(v, c, ci.cdiv, SAVED_PER_STEP[cell.name], wgmma)
    live = m.int_var("live", 0, gpu.max_registers_per_thread)
    for term in r["live_terms"]:
        m.add(live >= term)
    regs = REGISTER_GRANULE * ci.cdiv(sum(r["regs_terms"]) + live, REGISTER_GRANULE)
    m.add(r["P"] <= 1 + split * c.DHP)
    m.add(r["P"] >= 1 + split)
    m.add(clus <= split)
    m.add(r["P"] <= gpu.max_cluster_size + (1 - clus) * c.DHP)
    m.add(r["threads"] <= gpu.max_threads_per_block)
    m.add(regs <= gpu.max_registers_per_thread)
    m.add(regs * r["threads"] <= gpu.registers_per_block)
    for term in r["smem_terms"]:
        m.add(term <= gpu.shared_mem_per_block_optin)
    # a split head meeting through global memory needs the whole grid co-resident
    glob = split - clus
    per_sm = r["waves"]
    m.add(glob * per_sm * regs * r["threads"] <= gpu.registers_per_sm)
    m.add(glob * per_sm * r["threads"] <= gpu.max_threads_per_sm)
    m.add(glob * per_sm <= gpu.max_blocks_per_sm)
    for term in r["smem_terms"]:
        m.add(glob * per_sm * term <= gpu.shared_mem_per_sm)
    m.minimize(r["time_ps"])
    return m, v


def _explain_no_backward(cell, c: _Consts, head_dim, dtype, gpu: GPUSpec) -> str:
    """Why no backward tiling fits, with the sizes: the smallest tiling's shared memory, or the
    head's weights against the registers a block / cluster can hold and, for a head split over
    blocks meeting through global memory, what the whole co-resident grid needs besides the
    weights (the backward's fp32 accumulators and partial sums of all DHP rows per block)."""
    part_stride = c.DHP + ((4 - c.DHP) % 32 + 32) % 32
    smallest_smem = c.G * 8 * 8 * c.eb + 16 * 8 + 2 * 8 * part_stride * 4
    tried = [d for d in padding_candidates(head_dim) if d != c.DHP]
    text = (f"the CUDA backward of {cell.name} DH={head_dim} ({dtype}, padded to {c.DHP}"
            + (f"; also tried {', '.join(map(str, tried))}" if tried else "")
            + f") has no tiling on {gpu.name}")
    if smallest_smem > gpu.shared_mem_per_block_optin:
        return (text + f": even BB=8, BH=8 needs {smallest_smem} B of shared memory (d(rh) and "
                f"the double-buffered fp32 partial sums of all {c.DHP} rows) over the "
                f"{gpu.shared_mem_per_block_optin} B per block")
    head_kb = c.G * c.DHP * c.DHP * c.eb / 1024
    capacity = gpu.max_cluster_size if gpu.supports_clusters else 1
    tiles = c.NH * _cdiv_int(c.B, 8)
    # per lane: the accumulators of all DHP rows of a batch tile of 8, over the most warps the
    # rows split into (gcd(W, DHP/16) <= 32)
    acc = _cdiv_int(c.DHP * 8, 32 * min(32, _pow2_part(c.DHP // 16)))
    return (text + f": the head's {head_kb:.0f} KB of recurrent weights, with the accumulators "
            f"and state gradients, fit neither one block's "
            f"{gpu.registers_per_block * 4 // 1024} KB "
            f"of registers (<= {gpu.max_registers_per_thread} per thread)"
            + (f", nor a cluster of {capacity}" if capacity > 1 else "")
            + f"; split over blocks that meet through global memory, all blocks must be "
            f"co-resident: {tiles} head x batch tiles (BB=8) of {head_kb:.0f} KB of weights, "
            f"each block also holding fp32 accumulators of all {c.DHP} rows of d(h_prev) (at "
            f"least {acc} registers per thread at BB=8) and double-buffered fp32 partial sums "
            f"of all rows in shared memory, do not fit the {gpu.sm_count} SMs' "
            f"{gpu.sm_count * gpu.registers_per_sm * 4 // 1024 // 1024} MB of registers and "
            f"{gpu.shared_mem_per_sm // 1024} KB of shared memory each (the forward's blocks "
            f"hold only their own units' {c.G} x BB x BH accumulators, so its split may fit)")


def plan_fused_rnn_backward(cell, batch, heads, head_dim, dtype, gpu,
                            time_limit=None) -> FusedRNNBackwardPlan:
    """Choose the tiles of the CUDA backward kernel for one configuration.

    Args:
        cell: a cell name ("lstm", "gru", "slstm", "elman") or a ``flashseq.cells.Cell``.
        batch, heads, head_dim: B, NH, DH of the ``fused_rnn`` layouts (ints >= 1).
        dtype: torch.float16, torch.bfloat16 or "tf32" (float32 inputs on tf32 tensor cores;
            "float32" plans the same tiles).
        gpu: a ``GPUSpec`` or a name for ``GPUSpec.from_name``.
        time_limit: seconds for each solve (one per padding and product tried). Default: None,
            solve to optimality.

    Returns:
        A ``FusedRNNBackwardPlan`` (path "fused" or "split"; the backward has no stepwise path;
        ``padded_head_dim`` may exceed the forward's, see ``padding_candidates``; ``wgmma``
        False on sm_90 where no tiling wgmma serves fits, and the build then takes mma.sync).

    Raises:
        ValueError naming the sizes and the limit when no tiling fits the GPU (the forward may
        still have a plan: the CUDA back end then refuses gradients and "auto" falls back).
    """
    cell, gpu, dtype, _ = _check_args(cell, batch, heads, head_dim, dtype, gpu, "cuda", None)
    # the forward's padding first, then wider ones (padding_candidates); on sm_90 per padding
    # the wgmma tilings, then mma.sync at the tilings wgmma does not serve (as the forward
    # does): the first that fits is solved to its optimum
    products = (True, False) if has_wgmma(gpu) else (None,)
    unknown = False
    for padded in padding_candidates(head_dim):
        for wgmma in products:
            model, v = build_backward_model(cell, batch, heads, head_dim, dtype, gpu,
                                            padded_head_dim=padded, wgmma=wgmma)
            sol = model.solve(time_limit=time_limit)
            if sol:
                c = _backward_consts(cell, batch, heads, head_dim, dtype, gpu, padded)
                return _make_plan(cell, batch, heads, head_dim, dtype, gpu, c,
                                  {k: sol[x] for k, x in v.items()}, wgmma is True,
                                  sol.status)
            unknown |= sol.status == "unknown"
    if unknown:
        raise ValueError(f"the solver found no CUDA backward tiling for {cell.name} "
                         f"DH={head_dim} within time_limit={time_limit} s")
    c = _consts(cell, batch, heads, head_dim, dtype, gpu, "cuda")
    raise ValueError(_explain_no_backward(cell, c, head_dim, dtype, gpu))


def _make_plan(cell, batch, heads, head_dim, dtype, gpu, c, vals, wgmma, status):
    from .cuda_compile import wgmma_serves

    r = backward_resources(vals, c, _cdiv_int, SAVED_PER_STEP[cell.name], wgmma)
    regs = _registers(r)
    smem = max(r["smem_terms"])
    path = "split" if vals["split"] else "fused"
    ratios = {"registers/thread": (regs, gpu.max_registers_per_thread),
              "registers/block": (regs * r["threads"], gpu.registers_per_block),
              "shared memory/block": (smem, gpu.shared_mem_per_block_optin)}
    glob = vals["split"] and not vals["cluster"]
    if glob:
        ratios["co-resident programs"] = (r["grid"], gpu.sm_count * gpu.max_blocks_per_sm)
    padded_b = _cdiv_int(batch, vals["BB"]) * vals["BB"]
    how = {"fused": "each block keeps a whole head's weights on chip",
           "split": (f"a head's weights are split over {r['P']} blocks whose partial d(h) meet "
                     + ("in a thread-block cluster" if vals["cluster"] else
                        "through global memory"))}[path]
    natural = 16 * _cdiv_int(head_dim, 16)
    notes = []
    if c.DHP != natural:
        notes.append(f"DH padded to {c.DHP}, not {natural}: no tiling of {natural} fits")
    if has_wgmma(gpu) and not wgmma:
        notes.append("mma.sync on sm_90a: no tiling wgmma serves fits")
    plan = FusedRNNBackwardPlan(
        backend="cuda", path=path, cell=cell.name, dtype=dtype, gpu=gpu.name, batch=batch,
        heads=heads, head_dim=head_dim, padded_head_dim=c.DHP, BB=vals["BB"], BH=vals["BH"],
        num_warps=vals["WM"] * vals["WN"], warps_m=vals["WM"], warps_n=vals["WN"],
        wgmma=wgmma, row_groups=vals["GWM"] if wgmma else vals["WMB"],
        column_groups=vals["GWK"] if wgmma else vals["WKB"],
        programs_per_head=r["P"], cluster_size=r["P"] if vals["cluster"] else 1,
        grid=(heads * r["P"], _cdiv_int(batch, vals["BB"])), registers_per_thread=regs,
        shared_memory_bytes=smem, onchip_weight_bytes=r["weights"],
        exchange_bytes=2 * heads * r["P"] * padded_b * c.DHP * 4 if glob else 0,
        predicted_step_ns=r["time_ps"] / 1000, binding=_binding(ratios),
        reason=f"{how}" + "".join(f"; {n}" for n in notes) + f" (solver: {status})")
    # the product the sm_90a build takes (csrc/fused's choice, cuda_compile.wgmma_serves) is
    # the one the model tiled for: its wgmma and fallback models split the tilings exactly
    if has_wgmma(gpu) and wgmma_serves(plan) != wgmma:
        raise RuntimeError(f"backward plan and build disagree on wgmma: {plan}")
    return plan


def backward_plan_for(plan: FusedRNNPlan, gpu=None) -> FusedRNNBackwardPlan:
    """The backward plan of a CUDA forward plan's configuration (same cell, sizes and dtype);
    ``gpu`` defaults to the table's GPU of that name (``flashseq.hardware.GPUS``); pass the
    ``GPUSpec`` the forward was planned for when it is not a table entry."""
    from flashseq.hardware import GPUS

    if plan.backend != "cuda":
        raise ValueError(f"the backward plan is for the CUDA back end; got "
                         f"backend={plan.backend!r}")
    if gpu is None:
        gpu = next((spec for spec in GPUS.values() if spec.name == plan.gpu), None)
        if gpu is None:
            raise ValueError(f"plan.gpu={plan.gpu!r} is not in the GPU table: pass gpu=<the "
                             "GPUSpec it was planned for>")
    return plan_fused_rnn_backward(plan.cell, plan.batch, plan.heads, plan.head_dim, plan.dtype,
                                   gpu)


__all__ = ["FusedRNNBackwardPlan", "plan_fused_rnn_backward", "build_backward_model",
           "backward_resources", "backward_plan_for", "padding_candidates"]
