"""Compile the Triton linear-recurrence kernels for a GPU target without a GPU, and report resources.

``python -m flashseq.kernels.linear_scan.triton_compile --dim 64 --arch 90`` prints one JSON line
per kernel (K = V = dim, bf16 inputs): registers per thread, stack and local memory (spills) and
shared memory of the cubin ptxas produced. Must run with TRITON_INTERPRET unset (the
interpreter replaces the JIT functions); the tests call it in a subprocess for that reason.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from flashseq.kernels.fused_rnn.triton_compile import _TRITON_TYPES, _resource_usage


def kernel_specs(dim: int, dtype: torch.dtype):
    """[(kernel, signature, constexprs, num_warps)] of every linear-scan kernel at K = V = dim,
    with every optional input present (initial state, final state, cu_seqlens)."""
    from .triton_recurrent import (block_sizes, gla_recurrent_bwd_kernel_dkv,
                                   gla_recurrent_bwd_kernel_dq, gla_recurrent_fwd_kernel)

    dt = _TRITON_TYPES[dtype]
    BK, BV = block_sizes(dim, dim)
    consts = dict(H=16, K=dim, V=dim, BK=BK, BV=BV, VARLEN=True)
    ptr_types = {"H0": "fp32", "HT": "fp32", "DHT": "fp32", "DH0": "fp32", "DQ": "fp32",
                 "DK": "fp32", "CU": "i64"}
    scalars = {"scale": "fp32", "T": "i32", "NT_ALL": "i32"}
    specs = []
    for kernel, extra in ((gla_recurrent_fwd_kernel, dict(HAS_H0=True, STORE_HT=True)),
                          (gla_recurrent_bwd_kernel_dq, dict(HAS_H0=True)),
                          (gla_recurrent_bwd_kernel_dkv, dict(HAS_DHT=True, HAS_H0=True))):
        constexprs = dict(consts, **extra)
        sig = {}
        for name in kernel.arg_names:
            if name in constexprs:
                sig[name] = "constexpr"
            elif name in scalars:
                sig[name] = scalars[name]
            else:
                sig[name] = "*" + ptr_types.get(name, dt)
        specs.append((kernel, sig, constexprs, 4))
    return specs


def compile_for_target(dim: int, arch: int, dtype=torch.bfloat16) -> list[dict]:
    """Compile every kernel for GPUTarget("cuda", arch, 32); one report dict per kernel."""
    import triton
    from triton.backends.compiler import GPUTarget

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compile_for_target needs TRITON_INTERPRET unset (run it in a subprocess)")
    reports = []
    for kernel, sig, constexprs, num_warps in kernel_specs(dim, dtype):
        src = triton.compiler.ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": num_warps, "num_stages": 1})
        report = {"kernel": kernel.__name__, "dim": dim, "arch": arch,
                  "dtype": str(dtype).replace("torch.", ""), "BK": constexprs["BK"],
                  "BV": constexprs["BV"], "num_warps": num_warps, "stage": "cubin",
                  "shared": compiled.metadata.shared}
        report.update(_resource_usage(compiled.asm["cubin"]))
        reports.append(report)
    return reports


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, action="append", required=True)
    parser.add_argument("--arch", type=int, action="append", required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    for dim in args.dim:
        for arch in args.arch:
            for rep in compile_for_target(dim, arch, getattr(torch, args.dtype)):
                print(json.dumps(rep), flush=True)


if __name__ == "__main__":
    main()
