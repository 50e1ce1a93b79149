"""Compile the Triton ``plstm_2d`` forward kernel for a GPU target without a GPU, and report
its resources.

``python -m flashseq.kernels.plstm.triton_compile --dim 64 --arch 90`` prints one JSON line per
compiled kernel (K = V = dim, q/k/v/o of ``--dtype`` (default bfloat16), fp32 gates and scratch,
the tile ``plan_plstm_2d_triton`` picks for that dtype on a 64 x 64 grid with B * H = 64 on
CUDA, its BV and warps; the forward as trained, keeping its states for the backward):
registers per thread (and the plan's prediction), stack and local memory (spills) and shared
memory of the cubin ptxas produced. Must run with TRITON_INTERPRET unset (the interpreter
compiles nothing); the tests call it in a subprocess for that reason.
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
    """[(kernel, signature, constexprs, num_warps, the plan's predicted registers)] of the 2D
    forward at K = V = dim."""
    from .plan import plan_plstm_2d_triton
    from .triton_2d import kernel_meta, plstm2d_fwd_kernel
    plan = plan_plstm_2d_triton(GRID, GRID, dim, dim, BATCH_HEADS, "cuda", dtype_name(dtype))
    meta = kernel_meta((plan.BX, plan.BY), dim, dim, BV=plan.BV, dtype=dtype)
    constexprs = dict(H=4, DK=dim, DV=dim, STORE_STATES=True, **meta)
    dt = TRITON_TYPES[dtype]
    sig = signature(plstm2d_fwd_kernel, constexprs, SCALARS,
                    lambda name: "fp32" if name in FP32_PTRS else dt)
    return [(plstm2d_fwd_kernel, sig, constexprs, plan.num_warps, plan.registers_per_thread)]


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
