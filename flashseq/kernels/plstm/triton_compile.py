"""Compile the Triton ``plstm_2d`` forward and backward kernels (or, with ``--family 1d``, the
``plstm_1d`` ones) for a GPU target without a GPU, and report their resources.

``python -m flashseq.kernels.plstm.triton_compile --dim 64 --arch 90`` prints one JSON line per
compiled kernel, the forward then the five backward launches (K = V = dim, q/k/v/o of
``--dtype``, default bfloat16, fp32 gates and scratch, the tile ``plan_plstm_2d_triton`` picks
for that dtype on a 64 x 64 grid with B * H = 64 on CUDA, its BV and warps, the backward's own
warps; the forward as trained, keeping its states for the backward): registers per thread
(and the plan's prediction, forward only), stack and local memory (spills) and shared memory of
the cubin ptxas produced. Must run with TRITON_INTERPRET unset (the interpreter compiles
nothing); the tests call it in a subprocess for that reason.

``--family 1d``: the sequential forward and the backward (triton_1d.py), the tree forward's
summary, scan round and output kernels (triton_1d_tree.py), with the chunk, BV and warps
``plan_plstm_1d_triton`` and ``triton_1d.kernel_meta_1d`` give for T = 4096, B * H = 64 on CUDA
(``--chunk`` overrides the chunk, ``--kernel NAME`` compiles only that kernel).
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
    the 2D forward and the five backward launches (coefficients, adjoint walk, the tiles'
    gradients within the tile, their mark reads, their leaving edges) at K = V = dim (the plan
    models the forward only)."""
    from .plan import plan_plstm_2d_triton
    from .triton_2d import kernel_meta, plstm2d_fwd_kernel
    from .triton_2d_bwd import (bwd_meta, bwd_num_warps, plstm2d_bwd_kernel,
                                plstm2d_bwd_leaving_kernel, plstm2d_bwd_mark_kernel,
                                plstm2d_bwd_walk_kernel, plstm2d_coef_kernel)
    plan = plan_plstm_2d_triton(GRID, GRID, dim, dim, BATCH_HEADS, "cuda", dtype_name(dtype))
    meta = kernel_meta((plan.BX, plan.BY), dim, dim, BV=plan.BV, dtype=dtype)
    dt = TRITON_TYPES[dtype]
    fwd = dict(H=4, DK=dim, DV=dim, STORE_STATES=True, **meta)
    sig_fwd = signature(plstm2d_fwd_kernel, fwd, SCALARS,
                        lambda name: "fp32" if name in FP32_PTRS else dt)
    specs = [(plstm2d_fwd_kernel, sig_fwd, fwd, plan.num_warps, plan.registers_per_thread)]
    for kernel in (plstm2d_coef_kernel, plstm2d_bwd_walk_kernel, plstm2d_bwd_kernel,
                   plstm2d_bwd_mark_kernel, plstm2d_bwd_leaving_kernel):
        constexprs = {k: v for k, v in dict(H=4, DK=dim, DV=dim, **bwd_meta(meta)).items()
                      if k in kernel.arg_names}
        sig = signature(kernel, constexprs, SCALARS,
                        lambda name: dt if name in ("Q", "K_", "V_", "DO") else "fp32")
        specs.append((kernel, sig, constexprs, bwd_num_warps(kernel.__name__, dtype), None))
    return specs


SCALARS_1D = {"T": "i32", "NC": "i32", "scale": "fp32", "shift": "i32"}
LENGTH_1D = 4096    # the planned 1D call's T


def kernel_specs_1d(dim: int, dtype: torch.dtype, chunk: int | None = None):
    """As ``kernel_specs`` for the 1D kernels at K = V = dim: the sequential forward and the
    backward (triton_1d.py), the tree forward's summary, scan round and output kernels
    (triton_1d_tree.py), at the chunk ``plan_plstm_1d_triton`` picks for T = 4096, B * H = 64
    on CUDA (or ``chunk``)."""
    from .plan import plan_plstm_1d_triton
    from .triton_1d import kernel_meta_1d, plstm1d_bwd_kernel, plstm1d_fwd_kernel
    from .triton_1d_tree import (plstm1d_fwd_kernel_output, plstm1d_fwd_kernel_scan,
                                 plstm1d_fwd_kernel_summary)
    plan = plan_plstm_1d_triton(LENGTH_1D, dim, dim, BATCH_HEADS, "cuda", dtype_name(dtype))
    dt = TRITON_TYPES[dtype]
    specs = []
    for kernel, backward in ((plstm1d_fwd_kernel, False), (plstm1d_bwd_kernel, True),
                             (plstm1d_fwd_kernel_summary, False),
                             (plstm1d_fwd_kernel_scan, False), (plstm1d_fwd_kernel_output, False)):
        meta = kernel_meta_1d(chunk or plan.chunk, dim, dim, dtype, backward=backward)
        constexprs = {"H": 4, "DK": dim, "DV": dim, "STORE_STATES": True, **meta}
        constexprs = {k: v for k, v in constexprs.items() if k in kernel.arg_names}
        sig = signature(kernel, constexprs, SCALARS_1D,
                        lambda name: dt if name in ("Q", "K_", "V_", "O", "DO") else "fp32")
        specs.append((kernel, sig, constexprs, meta["num_warps"], None))
    return specs


def compile_for_target(dim: int, arch: int, dtype=torch.bfloat16, family: str = "2d",
                       chunk: int | None = None, only: list[str] | None = None) -> list[dict]:
    """Compile for GPUTarget("cuda", arch, 32); one report dict per kernel. ``family`` "2d"
    (``kernel_specs``) or "1d" (``kernel_specs_1d``, at ``chunk`` if given); ``only``: the
    kernel names to compile (default all)."""
    require_compiler()
    reports = []
    specs = kernel_specs(dim, dtype) if family == "2d" else kernel_specs_1d(dim, dtype, chunk)
    for kernel, sig, constexprs, num_warps, planned in specs:
        if only and kernel.__name__ not in only:
            continue
        compiled = compile_cubin(kernel, sig, constexprs, arch, num_warps, num_stages=1)
        report = {"kernel": kernel.__name__, "dim": dim, "arch": arch,
                  "dtype": dtype_name(dtype), "num_warps": num_warps,
                  **{k: constexprs[k] for k in ("BX", "BY", "NP", "NB", "BT", "BK", "BV", "PREC")
                     if k in constexprs},
                  "planned_regs": planned, "stage": "cubin",
                  "shared": compiled.metadata.shared}
        report.update(resource_usage(compiled.asm["cubin"]))
        reports.append(report)
    return reports


def main(argv=None):
    def compile_one(args, dim, arch):
        return compile_for_target(dim, arch, getattr(torch, args.dtype), args.family, args.chunk,
                                  args.kernel)

    def add_arguments(parser):
        parser.add_argument("--family", default="2d", choices=["2d", "1d"])
        parser.add_argument("--chunk", type=int, default=None,
                            help="1D only: compile at this chunk instead of the planned one")
        parser.add_argument("--kernel", action="append", default=None,
                            help="compile only this kernel (repeatable; default all)")

    run_cli(__doc__, [("--dim", int), ("--arch", int)], ["float32", "float16", "bfloat16"],
            "bfloat16", compile_one, argv, add_arguments)


if __name__ == "__main__":
    main()
