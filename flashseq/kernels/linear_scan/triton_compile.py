"""Compile the Triton linear-recurrence kernels for a GPU target without a GPU, and report resources.

Chunk kernels get the tiles the launchers use for B=2, T=2048, H=16 on an H100 (arch >= 90) or an
A100 (arch 80): the plan's (its domains stop at ``plan.MAX_TILES``, ``plan.MIN_WARPS``), with
the kernels' own narrower ones where they have them; the recurrent kernels their fixed block
sizes.

``python -m flashseq.kernels.linear_scan.triton_compile --dim 64 --arch 90`` prints one JSON line
per kernel (K = V = dim, bf16 inputs): registers per thread, stack and local memory (spills) and
shared memory of the cubin ptxas produced. Must run with TRITON_INTERPRET unset (the
interpreter replaces the JIT functions); the tests call it in a subprocess for that reason.
"""
from __future__ import annotations

import torch

from flashseq.kernels._triton_compile_common import (TRITON_TYPES, compile_cubin, dtype_name,
                                                     require_compiler, resource_usage, run_cli,
                                                     signature)


PTR_TYPES = {"G": "fp32", "GC": "fp32", "H0": "fp32", "HT": "fp32", "DHT": "fp32", "DH0": "fp32",
             "DQ": "fp32", "DK": "fp32", "CU": "i64", "CO": "i64", "CHUNKS": "i64"}
# the mLSTM's gates and per-step scalars, its states (C, n, m) and their gradients
PTR_TYPES.update({name: "fp32" for name in (
    "I", "F_", "C0", "N0", "M0", "MS", "QN", "CT", "NT", "MT", "RDEN", "DQN", "DCT", "DNT", "DC0",
    "DN0", "BETA", "U", "DU", "DB", "R", "FC", "BEST", "CS", "NS", "DCS", "DNS", "MSTEP")})
SCALARS = {"scale": "fp32", "T": "i32", "NT_ALL": "i32"}


def _signature(kernel, constexprs, dt, ptr_types=None):
    """Triton signature of ``kernel``; ``ptr_types`` overrides ``PTR_TYPES`` for this kernel."""
    types = dict(PTR_TYPES, **(ptr_types or {}))
    return signature(kernel, constexprs, SCALARS, lambda name: types.get(name, dt))


def kernel_specs(dim: int, dtype: torch.dtype, gpu: str = "h100"):
    """[(kernel, signature, constexprs, num_warps, num_stages)] of every kernel at K = V = dim,
    with every optional input present (initial state, final state, cu_seqlens); the chunk
    kernels with the tiles the plan picks on ``gpu`` for B=2, T=2048, H=16."""
    from .plan import plan_linear_scan
    from .triton_chunk import (BC, MIN_WARPS_SCORES, gla_chunk_fwd_kernel_cumsum,
                               gla_chunk_fwd_kernel_h, gla_chunk_fwd_kernel_o, precision)
    from .triton_chunk_bwd import (DQK_BV, DQK_WARPS, gla_chunk_bwd_kernel_dh,
                                   gla_chunk_bwd_kernel_dqk, gla_chunk_bwd_kernel_dv)
    from .triton_ops import capped_tiles
    from .triton_recurrent import (block_sizes, gla_recurrent_bwd_kernel_dkv,
                                   gla_recurrent_bwd_kernel_dq, gla_recurrent_fwd_kernel)

    dt = TRITON_TYPES[dtype]
    BK, BV = block_sizes(dim, dim)
    rec = dict(H=16, K=dim, V=dim, BK=BK, BV=BV, VARLEN=True)
    specs = []
    for kernel, extra in ((gla_recurrent_fwd_kernel, dict(HAS_H0=True, STORE_HT=True)),
                          (gla_recurrent_bwd_kernel_dq, dict(HAS_H0=True)),
                          (gla_recurrent_bwd_kernel_dkv, dict(HAS_DHT=True, HAS_H0=True))):
        constexprs = dict(rec, **extra)
        specs.append((kernel, _signature(kernel, constexprs, dt), constexprs, 4, 1))
    from .triton_recurrent_mlstm import (mlstm_recurrent_bwd_kernel_dkv,
                                         mlstm_recurrent_bwd_kernel_dq, mlstm_recurrent_fwd_kernel)
    for kernel, extra in ((mlstm_recurrent_fwd_kernel, dict(HAS_H0=True, STORE_HT=True)),
                          (mlstm_recurrent_bwd_kernel_dq, dict(HAS_H0=True)),
                          (mlstm_recurrent_bwd_kernel_dkv, dict(HAS_DHT=True, HAS_H0=True))):
        constexprs = dict(rec, **extra)
        specs.append((kernel, _signature(kernel, constexprs, dt), constexprs, 4, 1))
    from .triton_recurrent_delta import (FWD_WARPS, delta_recurrent_bwd_kernel_dkv,
                                         delta_recurrent_bwd_kernel_dq, delta_recurrent_fwd_kernel)
    for nh in (1, 2):   # the gated delta rule, and DeltaProduct with two Householder steps
        for kernel, extra, warps in (
                (delta_recurrent_fwd_kernel, dict(HAS_H0=True, STORE_HT=True), FWD_WARPS),
                (delta_recurrent_bwd_kernel_dq, dict(HAS_H0=True), 4),
                (delta_recurrent_bwd_kernel_dkv, dict(HAS_DHT=True, HAS_H0=True), 4)):
            constexprs = dict(rec, NH=nh, HAS_G=True, **extra)
            specs.append((kernel, _signature(kernel, constexprs, dt), constexprs, warps, 1))
    plan = plan_linear_scan("gla", 2, 2048, 16, dim, dim, dtype, gpu)
    BT, BK, BV, W = capped_tiles(plan)
    tiles = dict(H=16, K=dim, V=dim, BT=BT, BK=BK, BV=BV)
    prec = precision(dtype)
    # (kernel, extra constexprs, warps) exactly as the launchers run them
    for kernel, extra, warps in (
            (gla_chunk_fwd_kernel_cumsum, {}, 4),
            (gla_chunk_fwd_kernel_h, dict(HAS_H0=True, STORE_HT=True, PREC=prec), W),
            (gla_chunk_fwd_kernel_o, dict(BC=BC, PREC=prec), max(W, MIN_WARPS_SCORES)),
            (gla_chunk_bwd_kernel_dh, dict(HAS_DHT=True, HAS_H0=True, PREC=prec), W),
            (gla_chunk_bwd_kernel_dv, dict(BC=BC, PREC=prec), max(W, MIN_WARPS_SCORES)),
            (gla_chunk_bwd_kernel_dqk, dict(BC=BC, PREC=prec, BV=DQK_BV), DQK_WARPS)):
        constexprs = {name: value for name, value in dict(tiles, **extra).items()
                      if name in kernel.arg_names}
        # the launchers leave num_stages at triton's default
        specs.append((kernel, _signature(kernel, constexprs, dt), constexprs, warps, 3))
    specs += mlstm_chunk_specs(dim, dtype, gpu, dt)
    specs += delta_chunk_specs(dim, dtype, gpu, dt)
    return specs


def mlstm_chunk_specs(dim, dtype, gpu, dt):
    """The chunk mLSTM's kernels as ``triton_ops_mlstm`` launches them (plan's tiles, capped)."""
    from .plan import plan_linear_scan
    from .triton_chunk import MIN_WARPS_SCORES, precision
    from .triton_chunk_mlstm import (mlstm_chunk_fwd_kernel_gates, mlstm_chunk_fwd_kernel_h,
                                     mlstm_chunk_fwd_kernel_o)
    from .triton_chunk_mlstm_bwd import (mlstm_chunk_bwd_kernel_dh, mlstm_chunk_bwd_kernel_dqk,
                                         mlstm_chunk_bwd_kernel_dv)
    from .triton_ops import capped_tiles
    BT, BK, BV, W = capped_tiles(plan_linear_scan("mlstm", 2, 2048, 16, dim, dim, dtype, gpu))
    tiles = dict(H=16, K=dim, V=dim, BT=BT, BK=BK, BV=BV, PREC=precision(dtype))
    specs = []
    for kernel, extra, warps in (
            (mlstm_chunk_fwd_kernel_gates, {}, 4),
            (mlstm_chunk_fwd_kernel_h, dict(HAS_H0=True, STORE_HT=True), W),
            (mlstm_chunk_fwd_kernel_o, {}, max(W, MIN_WARPS_SCORES)),
            (mlstm_chunk_bwd_kernel_dh, dict(HAS_DHT=True, HAS_H0=True), W),
            (mlstm_chunk_bwd_kernel_dqk, dict(WANT_DQ=True), max(W, MIN_WARPS_SCORES)),
            (mlstm_chunk_bwd_kernel_dqk, dict(WANT_DQ=False), max(W, MIN_WARPS_SCORES)),
            (mlstm_chunk_bwd_kernel_dv, {}, max(W, MIN_WARPS_SCORES))):
        constexprs = {name: value for name, value in dict(tiles, **extra).items()
                      if name in kernel.arg_names}
        specs.append((kernel, _signature(kernel, constexprs, dt), constexprs, warps, 3))
    return specs


# the chunk delta rule's fp32 scratch (WY inverse, w, u~, u, their gradients, partial sums);
# beta and g come in the inputs' dtype
DELTA_CHUNK_PTRS = dict({name: "fp32" for name in (
    "TM", "W", "UT", "U", "DU", "DV", "DB", "DG", "DKK", "DQK", "DGK", "DGOUT")}, BETA=None,
    G=None)


def delta_chunk_specs(dim, dtype, gpu, dt):
    """The chunk delta rule's kernels as ``triton_ops_delta`` launches them (plan's tiles,
    capped; the state passes' tiles from ``triton_chunk_delta.state_block_v``)."""
    from .plan import plan_linear_scan
    from .triton_chunk import precision
    from .triton_chunk_delta import (MIN_WARPS, delta_chunk_fwd_kernel_h, delta_chunk_fwd_kernel_o,
                                     delta_chunk_fwd_kernel_wy, state_block_v)
    from .triton_chunk_delta_bwd import (delta_chunk_bwd_kernel_da, delta_chunk_bwd_kernel_dg,
                                         delta_chunk_bwd_kernel_dh, delta_chunk_bwd_kernel_dqk,
                                         delta_chunk_bwd_kernel_dp, delta_chunk_bwd_kernel_du,
                                         DA_BV)
    from .triton_ops import capped_tiles
    BT, BK, BV, W = capped_tiles(plan_linear_scan("delta", 2, 2048, 16, dim, dim, dtype, gpu))
    SBK, SBV = state_block_v(dim, BV)
    tiles = dict(H=16, K=dim, V=dim, BT=BT, BK=BK, BV=BV, PREC=precision(dtype), HAS_G=True)
    state = dict(BK=SBK, BV=SBV)
    ptrs = {name: (dt if kind is None else kind) for name, kind in DELTA_CHUNK_PTRS.items()}
    specs = []
    for kernel, extra, warps in (
            (delta_chunk_fwd_kernel_wy, {}, W),
            (delta_chunk_fwd_kernel_h, dict(state, HAS_H0=True, STORE_HT=True), max(W, MIN_WARPS)),
            (delta_chunk_fwd_kernel_o, {}, max(W, MIN_WARPS)),
            (delta_chunk_bwd_kernel_du, {}, max(W, MIN_WARPS)),
            (delta_chunk_bwd_kernel_dh, dict(state, HAS_DHT=True, HAS_H0=True), max(W, MIN_WARPS)),
            (delta_chunk_bwd_kernel_dp, {}, max(W, MIN_WARPS)),
            (delta_chunk_bwd_kernel_da, dict(BV=DA_BV), max(W, MIN_WARPS)),
            (delta_chunk_bwd_kernel_dqk, {}, max(W, MIN_WARPS)),
            (delta_chunk_bwd_kernel_dg, dict(NK=-(-dim // BK)), 4)):
        constexprs = {name: value for name, value in dict(tiles, **extra).items()
                      if name in kernel.arg_names}
        specs.append((kernel, _signature(kernel, constexprs, dt, ptrs), constexprs, warps, 3))
    return specs


def compile_for_target(dim: int, arch: int, dtype=torch.bfloat16, kernels="all") -> list[dict]:
    """Compile the kernels (``kernels``: "all", "recurrent" or "chunk") for
    GPUTarget("cuda", arch, 32); one report dict per kernel."""
    require_compiler()
    reports = []
    gpu = "h100" if arch >= 90 else "a100"
    for kernel, sig, constexprs, num_warps, num_stages in kernel_specs(dim, dtype, gpu):
        is_chunk = "chunk" in kernel.__name__
        if (kernels == "recurrent" and is_chunk) or (kernels == "chunk" and not is_chunk):
            continue
        compiled = compile_cubin(kernel, sig, constexprs, arch, num_warps, num_stages)
        report = {"kernel": kernel.__name__, "dim": dim, "arch": arch, "gpu": gpu,
                  "dtype": dtype_name(dtype), "BT": constexprs.get("BT"),
                  "BK": constexprs.get("BK"), "BV": constexprs.get("BV"),
                  "NH": constexprs.get("NH"), "num_warps": num_warps,
                  "num_stages": num_stages, "stage": "cubin", "shared": compiled.metadata.shared}
        report.update(resource_usage(compiled.asm["cubin"]))
        reports.append(report)
    return reports


def main(argv=None):
    def compile_one(args, dim, arch):
        return compile_for_target(dim, arch, getattr(torch, args.dtype), args.kernels)

    def add_kernels(parser):
        parser.add_argument("--kernels", choices=["all", "recurrent", "chunk"], default="all")

    run_cli(__doc__, [("--dim", int), ("--arch", int)], ["float32", "float16", "bfloat16"],
            "bfloat16", compile_one, argv, add_kernels)


if __name__ == "__main__":
    main()
