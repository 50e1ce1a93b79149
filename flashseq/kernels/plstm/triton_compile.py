"""Compile the Triton ``plstm_2d`` forward and backward kernels for a GPU target without a GPU,
and report their resources.

``python -m flashseq.kernels.plstm.triton_compile --dim 64 --arch 90`` prints one JSON line per
compiled kernel, the forward then the backward (K = V = dim, q/k/v/o of ``--dtype``, default
bfloat16, fp32 gates and scratch, the tile ``plan_plstm_2d_triton`` picks for that dtype on a
64 x 64 grid with B * H = 64 on CUDA, its BV and warps; the forward as trained, keeping its
states for the backward): registers per thread (and the plan's prediction, forward only), stack
and local memory (spills) and shared memory of the cubin ptxas produced. Must run with
TRITON_INTERPRET unset (the interpreter compiles nothing); the tests call it in a subprocess for
that reason.
"""
from __future__ import annotations

import torch

from flashseq.kernels._triton_compile_common import (TRITON_TYPES, compile_cubin, dtype_name,
                                                     require_compiler, resource_usage, run_cli,
                                                     signature)

FP32_PTRS = ("SR", "SD", "TRL", "TRU", "TDL", "TDU", "ML", "MU", "D", "SCR", "CF", "STATES")
SCALARS = {"X": "i32", "Y": "i32", "NX": "i32", "NY": "i32", "scale": "fp32"}
GRID = 64           # the planned grid side
BATCH_HEADS = 64    # B * H of the planned call (16 x 4, the benchmark's)


def kernel_specs(dim: int, dtype: torch.dtype):
    """[(kernel, signature, constexprs, num_warps, the plan's predicted registers or None)] of
    the 2D forward and backward at K = V = dim (the plan models the forward only)."""
    from .plan import plan_plstm_2d_triton
    from .triton_2d import kernel_meta, plstm2d_fwd_kernel
    from .triton_2d_bwd import plstm2d_bwd_kernel
    plan = plan_plstm_2d_triton(GRID, GRID, dim, dim, BATCH_HEADS, "cuda", dtype_name(dtype))
    meta = kernel_meta((plan.BX, plan.BY), dim, dim, BV=plan.BV, dtype=dtype)
    dt = TRITON_TYPES[dtype]
    fwd = dict(H=4, DK=dim, DV=dim, STORE_STATES=True, **meta)
    bwd = dict(H=4, DK=dim, DV=dim, **meta)
    sig_fwd = signature(plstm2d_fwd_kernel, fwd, SCALARS,
                        lambda name: "fp32" if name in FP32_PTRS else dt)
    sig_bwd = signature(plstm2d_bwd_kernel, bwd, SCALARS,
                        lambda name: dt if name in ("Q", "K_", "V_", "DO") else "fp32")
    return [(plstm2d_fwd_kernel, sig_fwd, fwd, plan.num_warps, plan.registers_per_thread),
            (plstm2d_bwd_kernel, sig_bwd, bwd, plan.num_warps, None)]


def compile_for_target(dim: int, arch: int, dtype=torch.bfloat16) -> list[dict]:
    """Compile for GPUTarget("cuda", arch, 32); one report dict per kernel."""
    require_compiler()
    reports = []
    for kernel, sig, constexprs, num_warps, planned in kernel_specs(dim, dtype):
        compiled = compile_cubin(kernel, sig, constexprs, arch, num_warps, num_stages=1)
        report = {"kernel": kernel.__name__, "dim": dim, "arch": arch,
                  "dtype": dtype_name(dtype), "num_warps": num_warps,
                  **{k: constexprs[k] for k in ("BX", "BY", "NP", "NB", "BV", "PREC")},
                  "planned_regs": planned, "stage": "cubin",
                  "shared": compiled.metadata.shared}
        report.update(resource_usage(compiled.asm["cubin"]))
        reports.append(report)
    return reports


def main(argv=None):
    def compile_one(args, dim, arch):
        return compile_for_target(dim, arch, getattr(torch, args.dtype))

    run_cli(__doc__, [("--dim", int), ("--arch", int)], ["float32", "float16", "bfloat16"],
            "bfloat16", compile_one, argv)


if __name__ == "__main__":
    main()
