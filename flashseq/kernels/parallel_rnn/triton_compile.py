"""Compile the Triton scan kernels of ``parallel_rnn`` for a GPU target without a GPU.

``python -m flashseq.kernels.parallel_rnn.triton_compile --arch 90 --m 2 --m 32`` prints one
JSON line per kernel and group size m: registers per thread and local memory (spills), read
from the cubin. Must run with TRITON_INTERPRET unset (the tests use a subprocess).
"""
from __future__ import annotations

import argparse
import json
import os

import torch

SCALARS = {"parallel_rnn_scan_fwd_kernel_chunk": ("N", "T", "m", "BT", "n_chunks"),
           "parallel_rnn_scan_fwd_kernel_carry": ("N", "m", "n_chunks"),
           "parallel_rnn_scan_fwd_kernel_apply": ("N", "T", "m", "BT", "n_chunks")}


def compile_for_target(m: int, arch: int, dtype=torch.float32, steps: int = 4096) -> list[dict]:
    """Compile the three scan kernels with the tiles ``triton_scan`` picks for groups of m
    values over ``steps`` steps; one report per kernel (n_regs, local_bytes, stack_bytes)."""
    import triton
    from triton.backends.compiler import GPUTarget

    from flashseq.kernels.fused_rnn.triton_compile import _resource_usage

    from . import triton_scan

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compile_for_target needs TRITON_INTERPRET unset "
                           "(run it in a subprocess)")
    M, BG, BT = triton_scan._tiles(m, steps)
    constexprs = dict(M=M, BG=BG)
    pointer = {torch.float32: "*fp32", torch.float64: "*fp64"}[dtype]
    reports = []
    for name, scalars in SCALARS.items():
        kernel = getattr(triton_scan, name)
        sig = {a: "constexpr" if a in constexprs else "i32" if a in scalars else pointer
               for a in kernel.arg_names}
        src = triton.compiler.ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
        reports.append({"kernel": name, "m": m, "M": M, "BG": BG, "arch": arch,
                        "dtype": str(dtype).removeprefix("torch."), "stage": "cubin",
                        **_resource_usage(compiled.asm["cubin"])})
    return reports


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, action="append", required=True)
    parser.add_argument("--arch", type=int, action="append", required=True)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args(argv)
    for m in args.m:
        for arch in args.arch:
            for report in compile_for_target(m, arch, getattr(torch, args.dtype)):
                print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
