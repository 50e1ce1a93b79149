"""Compile the Triton scan kernels of ``parallel_rnn`` for a GPU target without a GPU.

``python -m flashseq.kernels.parallel_rnn.triton_compile --arch 90 --m 2 --m 32`` prints one
JSON line per kernel and group size m: registers per thread and local memory (spills), read
from the cubin. Must run with TRITON_INTERPRET unset (the tests use a subprocess).
"""
from __future__ import annotations

import torch

from flashseq.kernels._triton_compile_common import (compile_cubin, dtype_name, require_compiler,
                                                     resource_usage, run_cli, signature)

SCALARS = {"parallel_rnn_scan_fwd_kernel_chunk": ("N", "T", "m", "BT", "n_chunks"),
           "parallel_rnn_scan_fwd_kernel_carry": ("N", "m", "n_chunks"),
           "parallel_rnn_scan_fwd_kernel_apply": ("N", "T", "m", "BT", "n_chunks")}


def compile_for_target(m: int, arch: int, dtype=torch.float32, steps: int = 4096) -> list[dict]:
    """Compile the three scan kernels with the tiles ``triton_scan`` picks for groups of m
    values over ``steps`` steps; one report per kernel (n_regs, local_bytes, stack_bytes)."""
    from . import triton_scan

    require_compiler()
    M, BG, BT = triton_scan._tiles(m, steps)
    constexprs = dict(M=M, BG=BG)
    pointer = {torch.float32: "fp32", torch.float64: "fp64"}[dtype]
    reports = []
    for name, scalars in SCALARS.items():
        kernel = getattr(triton_scan, name)
        sig = signature(kernel, constexprs, dict.fromkeys(scalars, "i32"), lambda _: pointer)
        compiled = compile_cubin(kernel, sig, constexprs, arch, num_warps=4)
        reports.append({"kernel": name, "m": m, "M": M, "BG": BG, "arch": arch,
                        "dtype": dtype_name(dtype), "stage": "cubin",
                        **resource_usage(compiled.asm["cubin"])})
    return reports


def main(argv=None):
    run_cli(__doc__, [("--m", int), ("--arch", int)], ["float32", "float64"], "float32",
            lambda args, m, arch: compile_for_target(m, arch, getattr(torch, args.dtype)), argv)


if __name__ == "__main__":
    main()
