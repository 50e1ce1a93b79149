"""Tile sizes for ``fused_rnn`` kernels, chosen by a constrint model per (cell, shape, dtype, GPU).

Three ways to run the recurrence (``FusedRNNPlan.path``):

``fused``
    one program (Triton) / CTA (CUDA) owns a whole head for a batch tile and keeps the head's
    recurrent weights on chip for all T steps; no synchronisation between programs.
``split``
    a head is split over ``programs_per_head`` (P) co-resident programs, each keeping the
    weight columns of its BH units on chip; h_t is exchanged every step, through global memory
    with a barrier among the P programs, or (CUDA, sm_90+) through distributed shared memory of
    a thread-block cluster with a cluster barrier. Global barriers need the whole grid resident.
``stepwise``
    one launch per step: programs stream [BK, BH] weight tiles from L2; the launch boundary is
    the barrier. Always possible; chosen when neither on-chip path fits (``reason`` says why).

The model (``build_model``). Variables are the kernel's compile-time tiles: BB (batch tile),
BH (units per program; P = DHP / BH), the warp grid (Triton: WM x WN warps over the [BB, BH]
output; CUDA: WM warps over the G*BH weight rows x WK warps splitting the reduction, BK =
DHP / WK), num_stages (wx prefetch depth), and 0/1 flags ``split`` (P > 1) and ``cluster``.
Constraints are the hardware limits, written once as functions of these variables and used both
in the model and to re-check a plan by plain arithmetic (``resources``):

- registers per thread: weights kept on chip (Triton: twice, see ``resources``) + fp32
  accumulators + the h operand + fp32 states + the step's wx + ~24 for addresses, allocated in
  units of 8, <= 255 and x threads <= 64K;
- shared memory: the h buffer (CUDA: double-buffered, plus split-K partial sums) + num_stages
  wx tiles, <= the per-block opt-in limit;
- tensor-core fragments: Triton's tl.dot wants power-of-two tiles >= 16 (DH padded to DHP, the
  next power of two) and warps that each own >= 16 rows x 8 columns; CUDA's mma.m16n8k16 takes
  weight rows as M (G*BH a multiple of 16 per warp), batch as N (BB a multiple of 8), and each
  K-warp a multiple of 16 of the reduction (DH padded to a multiple of 16);
- a split head without a cluster needs the whole grid co-resident:
  cdiv(grid, SMs) programs per SM must fit the SM's registers, threads, shared memory, blocks;
  a cluster holds at most ``gpu.max_cluster_size`` CTAs;
- ``max_onchip_bytes`` (optional) caps the weight bytes one program keeps on chip.

The objective is the predicted time of one step in picoseconds, waves x (time of one program):
``cdiv(grid, SMs)`` programs share an SM, and one program's step costs
  tensor time    cdiv(W, 4) * cdiv(G*BB*BH*DHP, 2048*W) mma.m16n8k16 issues, each at a quarter of
                 the SM's peak (4 sub-partitions: fewer than 4 warps leave tensor cores idle),
  + mma chain    DHP/16 (CUDA: DHP/(16*WK)) dependent MMAs of ~32 cycles,
  + on-chip      h read through shared memory (128 B/clock), split-K partial sums, and the h_t
    traffic      exchange (L2 at ~64 B/clock/SM, or DSMEM at ~32 B/clock for a cluster),
  + HBM          this program's share of the bandwidth for wx and h (all SMs stream at once),
  + pointwise    ~16 instructions per gate element over the program's threads,
  + latency      HBM latency (600 ns) divided by num_stages (prefetch hides the rest),
  + barriers     2 CTA barriers (~20 ns each), a cluster barrier (~150 ns) or a global-memory
                 barrier among a head's programs (~1 us).
Traffic enters as bytes x whole picoseconds per byte (rounded), so it stays linear. The
constants are round figures, not measurements; the model ranks tilings, the autotuner then times
the best few.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from flashseq.cells import Cell, get_cell
from flashseq.hardware import GPUSpec, _dtype_key

BACKENDS = ("triton", "cuda")

# Cost-model constants (see the module docstring).
SMEM_BYTES_PER_CLOCK = 128
L2_BYTES_PER_CLOCK_PER_SM = 64
DSMEM_BYTES_PER_CLOCK = 32
MMA_LATENCY_CLOCKS = 32
POINTWISE_INSTRUCTIONS = 16
HBM_LATENCY_PS = 600_000
CTA_BARRIER_PS = 20_000
CLUSTER_BARRIER_PS = 150_000
GRID_BARRIER_PS = 1_000_000
STEP_LAUNCH_PS = 4_000_000          # stepwise: a kernel launch per step (launch + tail)
BASE_REGISTERS = 24                 # addresses, loop counters, masks
# The Triton kernels carry more (per-gate pointers, masks, bias vectors, int64 offsets): ptxas
# reports 168/224/226 registers (no spills) for the fused LSTM kernel at DH=16/32/64 on sm_90
# (bf16, BB=16, 4/4/8 warps), 58-112 more than the operands counted here.
TRITON_EXTRA_REGISTERS = 64
REGISTER_GRANULE = 8                # registers are allocated per thread in multiples of 8
ELEMENT_BYTES = {"float16": 2, "bfloat16": 2, "tf32": 4, "float32": 4}

POW2_TILES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class LaunchShape:
    """What a plan's grid and warps give: blocks launched and threads per block (both plan
    classes, forward and backward, have ``grid`` and ``num_warps``)."""

    @property
    def grid_size(self) -> int:
        """Blocks launched: the product of the 2-D grid (x, y)."""
        return self.grid[0] * self.grid[1]

    @property
    def threads(self) -> int:
        """Threads per block: 32 per warp."""
        return 32 * self.num_warps


@dataclass(frozen=True)
class FusedRNNPlan(LaunchShape):
    """Tile sizes and predictions for one ``fused_rnn`` configuration. See the module docstring.

    grid is (programs over heads = heads * programs_per_head, batch tiles = cdiv(batch, BB)).
    """

    backend: str
    path: str                      # "fused" | "split" | "stepwise"
    cell: str
    dtype: str
    gpu: str
    batch: int
    heads: int
    head_dim: int
    padded_head_dim: int           # DHP: Triton pads to a power of two, CUDA to a multiple of 16
    BB: int
    BH: int
    BK: int
    num_warps: int
    warps_m: int
    warps_n: int                   # Triton: warps along BH; CUDA: warps splitting the reduction
    num_stages: int
    programs_per_head: int
    cluster_size: int              # 1 unless a CUDA head is split over a thread-block cluster
    grid: tuple[int, int]
    registers_per_thread: int      # predicted, allocation granularity included
    shared_memory_bytes: int       # predicted
    onchip_weight_bytes: int       # recurrent weight bytes one program keeps on chip
    predicted_step_ns: float
    binding: str                   # the limit closest to its cap
    reason: str                    # why this path (and, for stepwise, why nothing on chip fits)


def _cdiv_int(a, b):
    return -(-a // b)


def _next_pow2(n):
    return 1 << max(0, (n - 1).bit_length())


def padded_head_dim(head_dim: int, backend: str) -> int:
    """DHP: Triton's tl.dot wants a power of two >= 16, CUDA's MMA a multiple of 16."""
    if backend == "triton":
        return max(16, _next_pow2(head_dim))
    return 16 * _cdiv_int(head_dim, 16)


def check_dtype(dtype) -> str:
    """'float16' | 'bfloat16' | 'float32' | 'tf32'; TypeError naming the allowed values."""
    if dtype == torch.float64 or dtype == "float64":
        raise TypeError("dtype must be torch.float16, torch.bfloat16, torch.float32 or 'tf32'; got "
                        "torch.float64 (float64 runs only on the reference back end, no plan needed)")
    return _dtype_key(dtype)


def check_positive(name, value) -> int:
    """``value`` when it is an int >= 1 (not a bool); else TypeError / ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1; got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1; got {value}")
    return value


def check_gpu(gpu) -> GPUSpec:
    """The GPUSpec of ``gpu`` (a GPUSpec, or a name such as 'h100'); TypeError for anything else."""
    if isinstance(gpu, GPUSpec):
        return gpu
    if isinstance(gpu, str):
        return GPUSpec.from_name(gpu)
    raise TypeError(f"gpu must be a GPUSpec or a GPU name such as 'h100'; got {type(gpu).__name__}")


def _check_cell(cell) -> Cell:
    return cell if isinstance(cell, Cell) else get_cell(cell)


@dataclass(frozen=True)
class _Consts:
    """Per-problem constants of the formulas, in the model's units (bytes, picoseconds)."""

    G: int
    S: int
    B: int
    NH: int
    DHP: int
    eb: int
    sms: int
    clock_ps: int
    mma_ps: int         # one m16n8k16 (4096 FLOP) on one SM sub-partition
    smem_ps: int        # ps per byte through shared memory
    l2_ps: int          # ps per byte from/to L2, per SM
    dsmem_ps: int       # ps per byte to another CTA's shared memory
    hbm_ps: int         # ps per byte of one SM's share of the memory bandwidth
    wgmma: bool = False  # CUDA on sm_90: the product runs on wgmma (16-bit, or tf32 m64nNk8)


def _consts(cell, batch, heads, head_dim, dtype, gpu, backend) -> _Consts:
    peak_per_sm_ps = gpu.tensor_flops(dtype) / gpu.sm_count / 1e12   # FLOP per ps per SM
    return _Consts(
        G=cell.num_gates, S=cell.num_states, B=batch, NH=heads,
        DHP=padded_head_dim(head_dim, backend), eb=ELEMENT_BYTES[dtype], sms=gpu.sm_count,
        clock_ps=max(1, round(1e12 / gpu.boost_clock_hz)),
        mma_ps=max(1, round(4096 / (peak_per_sm_ps / 4))), **byte_costs(gpu),
        wgmma=(backend == "cuda" and tuple(gpu.compute_capability) == (9, 0)))


def byte_costs(gpu: GPUSpec) -> dict:
    """Picoseconds per byte of each kind of traffic, rounded to whole ps (at least 1) so that
    traffic enters the model as linear terms."""
    clock_ps = 1e12 / gpu.boost_clock_hz
    return dict(smem_ps=max(1, round(clock_ps / SMEM_BYTES_PER_CLOCK)),
                l2_ps=max(1, round(clock_ps / L2_BYTES_PER_CLOCK_PER_SM)),
                dsmem_ps=max(1, round(clock_ps / DSMEM_BYTES_PER_CLOCK)),
                hbm_ps=max(1, round(gpu.sm_count * 1e12 / gpu.memory_bandwidth)))


def resources(v, c: _Consts, backend: str, cdiv):
    """Predicted resource use and per-step time of a tiling, as expressions or plain ints.

    ``v`` maps BB, BH, WM, WN, stages, split, cluster to model variables (or ints);
    ``cdiv`` is constrint's ``cdiv`` (model) or integer ceiling division (re-checking a plan).
    Returns a dict: regs (allocated per thread), threads, smem_terms (shared memory is their
    max), weights (on-chip weight bytes per program), P, grid, waves, time_ps.
    """
    BB, BH, WM, WN = v["BB"], v["BH"], v["WM"], v["WN"]
    stages, split, clus = v["stages"], v["split"], v["cluster"]
    G, S, DHP, eb = c.G, c.S, c.DHP, c.eb
    W = WM * WN
    threads = 32 * W
    P = cdiv(DHP, BH)
    grid = c.NH * P * cdiv(c.B, BB)
    weights = G * DHP * BH * eb
    acc_regs = cdiv(G * BB * BH, threads)                   # fp32 accumulators
    other_regs = (cdiv(S * BB * BH, threads) + cdiv(G * BB * BH * eb, 4 * threads) + BASE_REGISTERS
                  + (TRITON_EXTRA_REGISTERS if backend == "triton" else 0))
    if backend == "triton":
        # mma operands in registers: a warp holds the h rows of its M slice across all of DHP
        # (replicated over the WN warps) and the weight columns of its N slice (over WM warps).
        # The weights stay live in their load layout too (one element per register) and are
        # converted to the dot layout at each use: with that second copy the model matches
        # ptxas (bf16 LSTM, DH=64, BB=16 on sm_80/sm_90: ~500 B spilled at 4 warps, none at 8).
        w_regs = cdiv(G * DHP * BH, threads) + cdiv(weights, 4 * 32 * WN)
        h_regs = cdiv(BB * DHP * eb, 4 * 32 * WM)
        # Triton converts the G weight slices to the dot layout through shared memory (all live
        # at once) next to a fp32 [BB, DHP] h staging buffer: this matches the compiled fused
        # kernel exactly (3072/10240/36864 B at DH=16/32/64, LSTM bf16 BB=16, sm_90); the
        # second term allows for wx prefetched num_stages steps ahead.
        smem_terms = (G * DHP * BH * eb + BB * DHP * 4, BB * DHP * eb + stages * G * BB * BH * eb)
        BK = DHP
        chain_ps = (DHP // 16) * MMA_LATENCY_CLOCKS * c.clock_ps
        h_bytes = BB * DHP * eb
        reduce_ps = 0
        xchg_ps = split * h_bytes * c.l2_ps
        sync_ps = 2 * CTA_BARRIER_PS + split * GRID_BARRIER_PS
    else:
        # weight rows as the mma A operand spread over all W warps; h^T (the B operand) is read
        # from shared memory 16 rows at a time, double-buffered
        WK = WN
        w_regs = cdiv(weights, 4 * threads)
        if c.wgmma:
            # sm_90a (csrc/fused/layout.h, wgmma): the A fragments cover whole 64-row tiles of
            # the G*BH gate rows (the last tile's padding rows hold zeros) over each warpgroup's
            # K slice: cdiv(G*BH, 64) tiles x DHP/W registers per thread (16-bit: two weights
            # per register; tf32: one, so 2*DHP/W). Never fewer than the mma.sync count; its
            # smaller accumulators are not credited (ptxas needs the slack).
            w_regs = cdiv(G * BH, 64) * cdiv(DHP * eb // 2, W)
        acc_regs = cdiv(G * BB * BH, 32 * WM)                  # each K-warp keeps full partials
        h_regs = 2 * cdiv(BB * 16 * eb, 4 * 32)
        smem_terms = (2 * BB * DHP * eb + (WK - 1) * G * BB * BH * 4 + stages * G * BB * BH * eb,)
        BK = cdiv(DHP, WK)
        chain_ps = cdiv(DHP, 16 * WK) * MMA_LATENCY_CLOCKS * c.clock_ps
        h_bytes = WM * BB * DHP * eb
        reduce_ps = (WK - 1) * G * BB * BH * 4 * c.smem_ps
        # each CTA of a cluster writes its [BB, BH] slice of h_t to all P CTAs: BB*DHP elements
        xchg_ps = (clus * BB * DHP * eb * c.dsmem_ps + (split - clus) * BB * DHP * eb * c.l2_ps)
        sync_ps = (2 * CTA_BARRIER_PS + clus * CLUSTER_BARRIER_PS
                   + (split - clus) * GRID_BARRIER_PS)
    regs = REGISTER_GRANULE * cdiv(w_regs + acc_regs + h_regs + other_regs, REGISTER_GRANULE)
    mma_ps = cdiv(W, 4) * cdiv(G * BB * BH * DHP, 2048 * W) * c.mma_ps
    smem_ps = h_bytes * c.smem_ps
    hbm_ps = (G + 1) * BB * BH * eb * c.hbm_ps
    pointwise_ps = cdiv(W, 4) * cdiv(G * BB * BH, threads) * POINTWISE_INSTRUCTIONS * c.clock_ps
    latency_ps = cdiv(HBM_LATENCY_PS, stages)
    program_ps = (mma_ps + chain_ps + smem_ps + reduce_ps + xchg_ps + hbm_ps + pointwise_ps
                  + latency_ps + sync_ps)
    waves = cdiv(grid, c.sms)
    return dict(regs=regs, threads=threads, smem_terms=smem_terms, weights=weights, P=P,
                grid=grid, waves=waves, BK=BK, time_ps=waves * program_ps)


def _domains(c: _Consts, gpu: GPUSpec, backend: str):
    """Explicit domains of the tile variables (powers of two, or divisors of DHP for CUDA)."""
    bb_max = max(16, _next_pow2(c.B)) if backend == "triton" else max(8, _next_pow2(c.B))
    if backend == "triton":
        BB = [t for t in POW2_TILES if t <= min(bb_max, 128)]
        BH = [t for t in POW2_TILES if t <= c.DHP]
        WM = [1, 2, 4, 8]
        WN = [1, 2, 4, 8, 16]
        cluster = [0]
    else:
        BB = [t for t in (8, 16, 32, 64) if t <= bb_max]
        BH = [d for d in range(8, c.DHP + 1, 8) if c.DHP % d == 0]
        WM = [1, 2, 4, 8, 16]
        # WK (stored as WN): warps splitting the reduction, each a multiple of 16 of DHP
        WN = [w for w in (1, 2, 4, 8) if c.DHP % (16 * w) == 0]
        cluster = [0, 1] if gpu.supports_clusters else [0]
    return dict(BB=BB, BH=BH, WM=WM, WN=WN, stages=[1, 2, 3], split=[0, 1], cluster=cluster)


def build_model(cell, batch, heads, head_dim, dtype, gpu, backend="triton", max_onchip_bytes=None):
    """The constrint model of the on-chip paths (fused and split) of one configuration.

    Returns ``(model, variables)``: a ``constrint.Model`` minimising the predicted step time in
    picoseconds, and {name: variable} for BB, BH, WM, WN, stages, split, cluster. The same model
    can be handed to ``constrint.cpsat``. Arguments as ``plan_fused_rnn``.
    """
    import constrint as ci

    cell, gpu, dtype, backend = _check_args(cell, batch, heads, head_dim, dtype, gpu, backend,
                                            max_onchip_bytes)
    c = _consts(cell, batch, heads, head_dim, dtype, gpu, backend)
    m = ci.Model()
    v = {name: m.int_var(name, values=dom) for name, dom in _domains(c, gpu, backend).items()}
    r = resources(v, c, backend, ci.cdiv)
    BB, BH, WM, WN, split, clus = v["BB"], v["BH"], v["WM"], v["WN"], v["split"], v["cluster"]
    # split == (P > 1): P <= 1 while split == 0, P >= 2 while split == 1
    m.add(r["P"] <= 1 + split * c.DHP)
    m.add(r["P"] >= 1 + split)
    m.add(clus <= split)
    m.add(r["P"] <= gpu.max_cluster_size + (1 - clus) * c.DHP)
    # one program must fit an SM
    m.add(r["threads"] <= gpu.max_threads_per_block)
    m.add(r["regs"] <= gpu.max_registers_per_thread)
    m.add(r["regs"] * r["threads"] <= gpu.registers_per_block)
    for term in r["smem_terms"]:
        m.add(term <= gpu.shared_mem_per_block_optin)
    if max_onchip_bytes is not None:
        m.add(r["weights"] <= max_onchip_bytes)
    # tensor-core fragments: every warp owns whole fragments
    if backend == "triton":
        m.add(16 * WM <= BB)
        m.add(8 * WN <= BH)
    else:
        m.add(ci.divides(16 * WM, c.G * BH))          # (16 * WK divides DHP: WN's domain)
    # a global barrier among a head's programs needs every program of the grid resident at once
    glob = split - clus
    per_sm = r["waves"]
    m.add(glob * per_sm * r["regs"] * r["threads"] <= gpu.registers_per_sm)
    m.add(glob * per_sm * r["threads"] <= gpu.max_threads_per_sm)
    m.add(glob * per_sm <= gpu.max_blocks_per_sm)
    for term in r["smem_terms"]:
        m.add(glob * per_sm * term <= gpu.shared_mem_per_sm)
    m.minimize(r["time_ps"])
    return m, v


def stepwise_resources(v, c: _Consts, cdiv):
    """Resources and step time of the stepwise path (one launch per step, weights from L2).

    ``v`` maps BB, BH, BK, WM, WN, stages; returns regs, threads, smem, grid, time_ps.
    """
    BB, BH, BK, WM, WN, stages = v["BB"], v["BH"], v["BK"], v["WM"], v["WN"], v["stages"]
    G, DHP, eb = c.G, c.DHP, c.eb
    W = WM * WN
    threads = 32 * W
    grid = c.NH * cdiv(DHP, BH) * cdiv(c.B, BB)
    regs = REGISTER_GRANULE * cdiv(
        cdiv(G * BB * BH, threads) + cdiv(BB * BK * eb, 4 * 32 * WM)
        + cdiv(G * BK * BH * eb, 4 * 32 * WN) + cdiv(c.S * BB * BH, threads) + BASE_REGISTERS
        + TRITON_EXTRA_REGISTERS,
        REGISTER_GRANULE)
    smem = stages * (BB * BK + G * BK * BH) * eb
    k_tiles = cdiv(DHP, BK)
    mma_ps = cdiv(W, 4) * cdiv(G * BB * BH * DHP, 2048 * W) * c.mma_ps
    # every k tile waits for its loads unless the pipeline (stages > 1) hides them
    load_ps = (BB * DHP + G * DHP * BH) * eb * c.l2_ps
    latency_ps = k_tiles * cdiv(HBM_LATENCY_PS // 2, stages)
    hbm_ps = (G + 1) * BB * BH * eb * c.hbm_ps
    program_ps = mma_ps + load_ps + latency_ps + hbm_ps
    return dict(regs=regs, threads=threads, smem=smem, grid=grid,
                time_ps=STEP_LAUNCH_PS + cdiv(grid, c.sms) * program_ps)


def build_stepwise_model(cell, batch, heads, head_dim, dtype, gpu, backend="triton"):
    """The constrint model of the stepwise path: BB, BH, BK, WM, WN, stages of the per-step
    kernel, minimising the predicted step time. Returns ``(model, variables)``."""
    import constrint as ci

    cell, gpu, dtype, backend = _check_args(cell, batch, heads, head_dim, dtype, gpu, backend, None)
    c = _consts(cell, batch, heads, head_dim, dtype, gpu, "triton")
    m = ci.Model()
    tiles = [t for t in POW2_TILES if t <= c.DHP]
    doms = dict(BB=[t for t in (16, 32, 64) if t <= max(16, _next_pow2(batch))], BH=tiles, BK=tiles,
                WM=[1, 2, 4], WN=[1, 2, 4, 8], stages=[1, 2, 3, 4])
    v = {name: m.int_var(name, values=dom) for name, dom in doms.items()}
    r = stepwise_resources(v, c, ci.cdiv)
    m.add(16 * v["WM"] <= v["BB"])
    m.add(8 * v["WN"] <= v["BH"])
    m.add(r["regs"] <= gpu.max_registers_per_thread)
    m.add(r["regs"] * r["threads"] <= gpu.registers_per_block)
    m.add(r["smem"] <= gpu.shared_mem_per_block_optin)
    m.minimize(r["time_ps"])
    return m, v


def _check_args(cell, batch, heads, head_dim, dtype, gpu, backend, max_onchip_bytes):
    cell = _check_cell(cell)
    check_positive("batch", batch)
    check_positive("heads", heads)
    check_positive("head_dim", head_dim)
    dtype = check_dtype(dtype)
    gpu = check_gpu(gpu)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} has no plan; allowed: {list(BACKENDS)}")
    if max_onchip_bytes is not None:
        check_positive("max_onchip_bytes", max_onchip_bytes)
    return cell, gpu, dtype, backend


def _binding(ratios: dict) -> str:
    name, (used, cap) = max(ratios.items(), key=lambda kv: kv[1][0] / kv[1][1])
    return f"{name} ({used}/{cap})"


def _explain_no_onchip(cell, c: _Consts, head_dim, dtype, gpu, backend, max_onchip_bytes) -> str:
    """Why neither the fused nor the split path fits, in words with the numbers."""
    head_kb = c.G * c.DHP * c.DHP * c.eb / 1024
    per_program_kb = gpu.registers_per_block * 4 / 1024
    smallest = 16 if backend == "triton" else 8
    text = (f"DH={head_dim} ({cell.name}, {dtype}, padded to {c.DHP}) needs {head_kb:.0f} KB of "
            f"recurrent weights on chip per head")
    if max_onchip_bytes is not None and c.G * c.DHP * smallest * c.eb > max_onchip_bytes:
        return (text + f"; max_onchip_bytes={max_onchip_bytes} is below the smallest weight "
                f"slice G*DHP*{smallest}*{c.eb} = {c.G * c.DHP * smallest * c.eb} bytes")
    if backend == "triton":
        h_regs = 16 * c.DHP * c.eb // (4 * 32)
        if h_regs + BASE_REGISTERS > gpu.max_registers_per_thread:
            return (text + f"; tl.dot keeps a warp's [16, {c.DHP}] slice of h in registers, "
                    f"{h_regs} per thread, over the {gpu.max_registers_per_thread}-register cap")
    capacity = gpu.max_cluster_size if gpu.supports_clusters and backend == "cuda" else 1
    cluster_kb = capacity * per_program_kb
    tiles = c.NH * _cdiv_int(c.B, 8 if backend == "cuda" else 16)
    return (text + f"; one {'CTA' if backend == 'cuda' else 'program'} holds at most "
            f"{per_program_kb:.0f} KB of registers"
            + (f", the largest cluster ({capacity} CTAs) {cluster_kb:.0f} KB" if capacity > 1 else "")
            + f", and a split over co-resident programs needs {tiles} head x batch tiles at once "
            f"on {gpu.sm_count} SMs ({gpu.registers_per_sm * 4 // 1024} KB of registers each) "
            f"with room for the other operands")


def plan_fused_rnn(cell, batch, heads, head_dim, dtype, gpu, backend="triton",
                   max_onchip_bytes=None, time_limit=None) -> FusedRNNPlan:
    """Choose the path and tile sizes of ``fused_rnn`` for one configuration.

    Args:
        cell: a cell name ("lstm", "gru", "slstm", "elman") or a ``flashseq.cells.Cell``.
        batch, heads, head_dim: B, NH, DH of the ``fused_rnn`` layouts (ints >= 1).
        dtype: torch.float16, torch.bfloat16, torch.float32 (IEEE, CUDA cores) or "tf32".
        gpu: a ``GPUSpec`` or a name for ``GPUSpec.from_name`` ("h100", "a100", ...).
        backend: "triton" or "cuda". Default: "triton".
        max_onchip_bytes: cap on the recurrent-weight bytes one program keeps on chip (tests use
            a tiny one to force the split path). Default: None, only the hardware limits.
        time_limit: seconds for each solve. Default: None, solve to optimality.

    Returns:
        A ``FusedRNNPlan``: path "fused" or "split" when the weights fit on chip, else "stepwise"
        with ``reason`` saying which limit rules the on-chip paths out.
    """
    cell, gpu, dtype, backend = _check_args(cell, batch, heads, head_dim, dtype, gpu, backend,
                                            max_onchip_bytes)
    c = _consts(cell, batch, heads, head_dim, dtype, gpu, backend)
    common = dict(backend=backend, cell=cell.name, dtype=dtype, gpu=gpu.name, batch=batch,
                  heads=heads, head_dim=head_dim, padded_head_dim=c.DHP)
    model, v = build_model(cell, batch, heads, head_dim, dtype, gpu, backend, max_onchip_bytes)
    sol = model.solve(time_limit=time_limit)
    if sol:
        vals = {k: sol[x] for k, x in v.items()}
        r = resources(vals, c, backend, _cdiv_int)
        smem = max(r["smem_terms"])
        W = vals["WM"] * vals["WN"]
        path = "split" if vals["split"] else "fused"
        ratios = {"registers/thread": (r["regs"], gpu.max_registers_per_thread),
                  "registers/block": (r["regs"] * r["threads"], gpu.registers_per_block),
                  "shared memory/block": (smem, gpu.shared_mem_per_block_optin)}
        if vals["split"] and not vals["cluster"]:
            ratios["co-resident programs"] = (r["grid"], gpu.sm_count * gpu.max_blocks_per_sm)
        if max_onchip_bytes is not None:
            ratios["max_onchip_bytes"] = (r["weights"], max_onchip_bytes)
        how = {"fused": "each program keeps a whole head's weights on chip",
               "split": (f"a head's weights are split over {r['P']} programs "
                         + ("of a thread-block cluster" if vals["cluster"] else
                            "synchronised through global memory"))}[path]
        return FusedRNNPlan(
            **common, path=path, BB=vals["BB"], BH=vals["BH"], BK=r["BK"], num_warps=W,
            warps_m=vals["WM"], warps_n=vals["WN"], num_stages=vals["stages"],
            programs_per_head=r["P"], cluster_size=r["P"] if vals["cluster"] else 1,
            grid=(heads * r["P"], _cdiv_int(batch, vals["BB"])), registers_per_thread=r["regs"],
            shared_memory_bytes=smem, onchip_weight_bytes=r["weights"],
            predicted_step_ns=r["time_ps"] / 1000, binding=_binding(ratios),
            reason=f"{how} (solver: {sol.status})")
    if sol.status == "unknown":
        why = f"the solver found no on-chip tiling within time_limit={time_limit} s"
    else:
        why = _explain_no_onchip(cell, c, head_dim, dtype, gpu, backend, max_onchip_bytes)
    model, v = build_stepwise_model(cell, batch, heads, head_dim, dtype, gpu, backend)
    sol = model.solve(time_limit=time_limit)
    if not sol:
        raise ValueError(f"no tiling fits {gpu.name} even for the stepwise path: {why}")
    vals = {k: sol[x] for k, x in v.items()}
    cs = _consts(cell, batch, heads, head_dim, dtype, gpu, "triton")
    r = stepwise_resources(vals, cs, _cdiv_int)
    ratios = {"registers/thread": (r["regs"], gpu.max_registers_per_thread),
              "registers/block": (r["regs"] * r["threads"], gpu.registers_per_block),
              "shared memory/block": (r["smem"], gpu.shared_mem_per_block_optin)}
    common["padded_head_dim"] = cs.DHP
    return FusedRNNPlan(
        **common, path="stepwise", BB=vals["BB"], BH=vals["BH"], BK=vals["BK"],
        num_warps=vals["WM"] * vals["WN"], warps_m=vals["WM"], warps_n=vals["WN"],
        num_stages=vals["stages"], programs_per_head=_cdiv_int(cs.DHP, vals["BH"]), cluster_size=1,
        grid=(heads * _cdiv_int(cs.DHP, vals["BH"]), _cdiv_int(batch, vals["BB"])),
        registers_per_thread=r["regs"], shared_memory_bytes=r["smem"], onchip_weight_bytes=0,
        predicted_step_ns=r["time_ps"] / 1000, binding=_binding(ratios),
        reason=f"stepwise: {why}")


__all__ = ["FusedRNNPlan", "plan_fused_rnn", "build_model", "build_stepwise_model", "resources",
           "stepwise_resources", "padded_head_dim"]

