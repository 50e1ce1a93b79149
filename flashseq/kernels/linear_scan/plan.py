"""Tile sizes for the chunkwise linear-recurrence kernels (GLA, delta rule, mLSTM).

The chunkwise algorithm cuts T into NT = cdiv(T, BT) chunks and runs two kernels:

state pass
    grid (K/BK, V/BV, B*H); each program walks the NT chunks in order, keeping its [BK, BV]
    block of the fp32 state in registers: per chunk S += k^T v ([BK, BT] x [BT, BV]), with the
    op's decay. The delta rule first forms v_new = u - w S (another [BT, BK] x [BK, BV]).
output pass
    grid (V/BV, NT, B*H), every chunk independently: over K tiles, A += q k^T ([BT, BT]) and
    o += q S ([BT, BV]); then o += A v with A masked causally.

Variables: BT (chunk), BK, BV (powers of two >= 16, tl.dot's minimum; K and V padded to KP, VP),
num_warps W, num_stages (prefetch depth of the K-tile loop). Both kernels share BK, BV and W.

Constraints, per kernel: registers per thread (fp32 accumulators, the [BT, BT] block, operand
tiles, ~24 for addresses; allocated in units of 8) <= 255 and x threads <= 64K; shared memory
(num_stages x the [BT, BK], [BT, BK], [BK, BV] tiles, plus [BT, BV] and the [BT, BT] block in the
dot layout) <= the per-block opt-in limit; every warp owns at least one 16 x 8 output fragment.
GLA adds a [BT, BK] fp32 gate tile per stage; the delta rule a [BT, BK] w tile, a fp32 [BT, BV]
v_new block in the state pass and the [BT, BT] inverse of its WY form, built by BT dependent steps.

Objective: predicted forward time in picoseconds = state pass + output pass + 2 launches, with
  state pass   cdiv(grid_h, SMs) x NT x (MMA issues + one chunk's loads at the SM's HBM share +
               HBM latency / num_stages)         -- NT dependent steps: small BT costs here
  output pass  cdiv(grid_o, SMs) x (MMA issues for q k^T, q S and A v + loads + K/BK latencies)
                                                 -- the [BT, BT] block: large BT costs here
MMA issues are counted as in ``flashseq.kernels.fused_rnn.plan`` (mma.m16n8k16 at a quarter of an
SM's peak per warp, up to 4 warps); the constants are shared with it.
"""
from __future__ import annotations

from dataclasses import dataclass

from flashseq.kernels.fused_rnn.plan import (BASE_REGISTERS, ELEMENT_BYTES, HBM_LATENCY_PS,
                                             REGISTER_GRANULE, _cdiv_int, byte_costs, _next_pow2, check_dtype,
                                             check_gpu, check_positive)

OPS = ("gla", "delta", "mlstm")
# The tiles the Triton launchers run. The register estimate below under-counts the chunk kernels
# (layout conversions, address tensors): at BT 128, BK 64, BV 128 cuobjdump showed 40-1008 B of
# stack on sm_90/sm_80 cubins at K = V = 128, bf16, and at 4 warps within these caps still 8 B
# (GLA state pass, sm_80, K = V = 64) and 24 B (delta rule WY pass, sm_90, K = V = 128); within
# the caps at 8 warps none spills (tests/kernels/test_linear_scan_triton_compile.py). The model's
# domains stop there, so the plan it returns is the one that runs and its predicted time is
# that plan's.
MAX_TILES = dict(BT=64, BK=32, BV=32)
MIN_WARPS = 8
LAUNCH_PS = 4_000_000
WY_STEP_CLOCKS = 40        # one dependent row update of the delta rule's [BT, BT] inverse
POW2_TILES = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class LinearScanPlan:
    """Chunk and tile sizes of one chunkwise linear-recurrence call. See the module docstring."""

    op: str
    dtype: str
    gpu: str
    batch: int
    seq_len: int
    heads: int
    k_dim: int
    v_dim: int
    BT: int
    BK: int
    BV: int
    num_warps: int
    num_stages: int
    num_chunks: int
    state_grid: tuple[int, int, int]    # (KP/BK, VP/BV, B*H)
    output_grid: tuple[int, int, int]   # (VP/BV, NT, B*H)
    registers_per_thread: int           # predicted, the larger of the two kernels
    shared_memory_bytes: int            # predicted, the larger of the two kernels
    predicted_ns: float                 # forward, both passes
    binding: str
    reason: str


@dataclass(frozen=True)
class _Consts:
    op: str
    B: int
    T: int
    H: int
    KP: int
    VP: int
    eb: int
    sms: int
    clock_ps: int
    mma_ps: int
    hbm_ps: int         # ps per byte of one SM's share of the memory bandwidth


def _consts(op, batch, seq_len, heads, k_dim, v_dim, dtype, gpu):
    peak_per_sm_ps = gpu.tensor_flops(dtype) / gpu.sm_count / 1e12
    return _Consts(op=op, B=batch, T=seq_len, H=heads, KP=max(16, _next_pow2(k_dim)),
                   VP=max(16, _next_pow2(v_dim)), eb=ELEMENT_BYTES[dtype], sms=gpu.sm_count,
                   clock_ps=max(1, round(1e12 / gpu.boost_clock_hz)),
                   mma_ps=max(1, round(4096 / (peak_per_sm_ps / 4))),
                   hbm_ps=byte_costs(gpu)["hbm_ps"])


def resources(v, c: _Consts, cdiv):
    """Registers, shared memory, grids and time of both kernels, as expressions or ints.

    ``v`` maps BT, BK, BV, W, stages to variables (model) or ints (re-check); ``cdiv`` is
    constrint's or integer ceiling division. Returns a dict (see the keys below).
    """
    BT, BK, BV, W, stages = v["BT"], v["BK"], v["BV"], v["W"], v["stages"]
    eb, KP, VP = c.eb, c.KP, c.VP
    threads = 32 * W
    gla, delta = int(c.op == "gla"), int(c.op == "delta")
    NT = cdiv(c.T, BT)

    def alloc(regs):
        return REGISTER_GRANULE * cdiv(regs + BASE_REGISTERS, REGISTER_GRANULE)

    # state pass: fp32 state block, k and v tiles (delta: w tile and fp32 v_new)
    regs_h = alloc(cdiv(BK * BV, threads) + cdiv((BT * BK * (1 + delta) + BT * BV) * eb, 4 * threads)
                   + delta * cdiv(BT * BV, threads))
    smem_h = stages * (BT * BK * (1 + delta + 2 * gla) + BT * BV) * eb
    # output pass: fp32 o and A blocks, q/k tiles and the state tile
    regs_o = alloc(cdiv(BT * BV + BT * BT, threads) + cdiv((2 * BT * BK + BK * BV) * eb, 4 * threads))
    smem_o = (stages * ((2 * BT * BK + BK * BV) * eb + gla * BT * BK * 4)
              + BT * BV * eb + BT * BT * eb)
    # the delta rule's WY inverse: a fp32 [BT, BT] block per program
    regs_wy = alloc(delta * cdiv(BT * BT, threads))

    grid_h = cdiv(KP, BK) * cdiv(VP, BV) * c.B * c.H
    grid_o = cdiv(VP, BV) * NT * c.B * c.H

    def mma(m_n_k):
        return cdiv(W, 4) * cdiv(m_n_k, 2048 * W) * c.mma_ps

    def hbm(nbytes):
        return nbytes * c.hbm_ps

    latency = cdiv(HBM_LATENCY_PS, stages)
    chunk_h = (mma(BT * BK * BV * (1 + delta)) + hbm(BT * (BK * (1 + delta + gla) + BV) * eb)
               + latency + delta * BT * WY_STEP_CLOCKS * c.clock_ps)
    k_tiles = cdiv(KP, BK)
    prog_o = (mma(BT * BT * KP + BT * KP * BV + BT * BT * BV)
              + hbm((2 * BT * KP + KP * BV + BT * BV) * eb + gla * BT * KP * 4)
              + k_tiles * latency)
    time_ps = (2 * LAUNCH_PS + cdiv(grid_h, c.sms) * NT * chunk_h + cdiv(grid_o, c.sms) * prog_o)
    return dict(threads=threads, NT=NT, regs=(regs_h, regs_o, regs_wy), smem=(smem_h, smem_o),
                grid_h=grid_h, grid_o=grid_o, time_ps=time_ps)


def _check_args(op, batch, seq_len, heads, k_dim, v_dim, dtype, gpu):
    if not isinstance(op, str) or op not in OPS:
        raise ValueError(f"op={op!r} is not a chunkwise linear recurrence; allowed: {list(OPS)}")
    for name, value in (("batch", batch), ("seq_len", seq_len), ("heads", heads),
                        ("k_dim", k_dim), ("v_dim", v_dim)):
        check_positive(name, value)
    return check_dtype(dtype), check_gpu(gpu)


def build_model(op, batch, seq_len, heads, k_dim, v_dim, dtype, gpu):
    """The constrint model of one chunkwise call; returns ``(model, {name: variable})`` for BT,
    BK, BV, W, stages, minimising the predicted forward time in picoseconds."""
    import constrint as ci

    dtype, gpu = _check_args(op, batch, seq_len, heads, k_dim, v_dim, dtype, gpu)
    c = _consts(op, batch, seq_len, heads, k_dim, v_dim, dtype, gpu)
    m = ci.Model()
    bt_max = max(16, min(MAX_TILES["BT"], _next_pow2(seq_len)))
    v = dict(BT=m.int_var("BT", values=[t for t in POW2_TILES if t <= bt_max]),
             BK=m.int_var("BK", values=[t for t in POW2_TILES if t <= min(c.KP, MAX_TILES["BK"])]),
             BV=m.int_var("BV", values=[t for t in POW2_TILES if t <= min(c.VP, MAX_TILES["BV"])]),
             W=m.int_var("W", values=[w for w in (1, 2, 4, 8) if w >= MIN_WARPS]),
             stages=m.int_var("stages", values=[1, 2, 3, 4]))
    r = resources(v, c, ci.cdiv)
    for regs in r["regs"]:
        m.add(regs <= gpu.max_registers_per_thread)
        m.add(regs * r["threads"] <= gpu.registers_per_block)
    for smem in r["smem"]:
        m.add(smem <= gpu.shared_mem_per_block_optin)
    # beyond the launchers' MIN_WARPS, every warp owns a 16 x 8 fragment of o
    m.add(128 * (v["W"] - MIN_WARPS) <= v["BT"] * v["BV"])
    m.minimize(r["time_ps"])
    return m, v


def plan_linear_scan(op, batch, seq_len, heads, k_dim, v_dim, dtype, gpu,
                     time_limit=None) -> LinearScanPlan:
    """Choose BT, BK, BV, num_warps and num_stages of a chunkwise linear recurrence.

    Args:
        op: "gla", "delta" or "mlstm".
        batch, seq_len, heads: B, T, H of the ``[B, T, H, D]`` layout (ints >= 1).
        k_dim, v_dim: K and V head dims (ints >= 1; padded to powers of two >= 16).
        dtype: torch.float16, torch.bfloat16, torch.float32 or "tf32".
        gpu: a ``GPUSpec`` or a name for ``GPUSpec.from_name``.
        time_limit: seconds for the solve. Default: None, to optimality.

    Returns:
        A ``LinearScanPlan``. Raises ``ValueError`` explaining the limit when no tiling fits.
    """
    dtype, gpu = _check_args(op, batch, seq_len, heads, k_dim, v_dim, dtype, gpu)
    c = _consts(op, batch, seq_len, heads, k_dim, v_dim, dtype, gpu)
    model, v = build_model(op, batch, seq_len, heads, k_dim, v_dim, dtype, gpu)
    sol = model.solve(time_limit=time_limit)
    if sol.status == "unknown":
        raise ValueError(f"the solver found no chunkwise tiling within time_limit={time_limit} s")
    if not sol:
        min_smem = (16 * 16 * 3) * c.eb
        raise ValueError(
            f"no chunkwise tiling of {op} with K={k_dim}, V={v_dim} ({dtype}) fits {gpu.name}: even "
            f"16 x 16 tiles need {min_smem} bytes of shared memory and {BASE_REGISTERS}+ registers "
            f"per thread; the GPU allows {gpu.shared_mem_per_block_optin} bytes per block and "
            f"{gpu.max_registers_per_thread} registers per thread")
    vals = {k: sol[x] for k, x in v.items()}
    r = resources(vals, c, _cdiv_int)
    regs, smem = max(r["regs"]), max(r["smem"])
    ratios = {"registers/thread": (regs, gpu.max_registers_per_thread),
              "registers/block": (regs * r["threads"], gpu.registers_per_block),
              "shared memory/block": (smem, gpu.shared_mem_per_block_optin)}
    name, (used, cap) = max(ratios.items(), key=lambda kv: kv[1][0] / kv[1][1])
    return LinearScanPlan(
        op=op, dtype=dtype, gpu=gpu.name, batch=batch, seq_len=seq_len, heads=heads, k_dim=k_dim,
        v_dim=v_dim, BT=vals["BT"], BK=vals["BK"], BV=vals["BV"], num_warps=vals["W"],
        num_stages=vals["stages"], num_chunks=r["NT"],
        state_grid=(c.KP // vals["BK"], c.VP // vals["BV"], batch * heads),
        output_grid=(c.VP // vals["BV"], r["NT"], batch * heads),
        registers_per_thread=regs, shared_memory_bytes=smem, predicted_ns=r["time_ps"] / 1000,
        binding=f"{name} ({used}/{cap})", reason=f"solver: {sol.status}")


__all__ = ["LinearScanPlan", "plan_linear_scan", "build_model", "resources", "OPS", "MAX_TILES",
           "MIN_WARPS"]
