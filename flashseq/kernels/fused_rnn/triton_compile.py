"""Compile the Triton ``fused_rnn`` kernels for a GPU target without a GPU, and report resources.

``python -m flashseq.kernels.fused_rnn.triton_compile --cell lstm --head-dim 64 --arch 90``
prints one JSON line per kernel: the stage reached ("cubin": ptxas ran), registers per
thread, local memory (spills), shared memory, and the tiles it was compiled for, so the numbers can be
compared with the plan. Must run with TRITON_INTERPRET unset (the interpreter replaces the
JIT functions); the tests call it in a subprocess for that reason.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile

import torch

_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _signature(kernel, pointer_types: dict, scalar_names, constexprs: dict) -> dict:
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in scalar_names:
            sig[name] = "i32"
        else:
            sig[name] = "*" + pointer_types.get(name, "fp32")
    return sig


def kernel_specs(cell_name: str, head_dim: int, dtype: torch.dtype, gpu: str = "h100",
                 batch: int = 16, heads: int = 1, max_onchip_bytes: int | None = None,
                 force_split: bool = False):
    """[(kernel, signature, constexprs, num_warps, num_stages)] of the forward and backward
    kernels the plan picks for this cell / head size / dtype on ``gpu``, and the plan.
    ``force_split``: the split path's kernels (per-step barrier) with 16-unit slices instead."""
    import dataclasses

    from flashseq.cells import get_cell
    from flashseq.cells.triton import get_triton_cell

    from .plan import plan_fused_rnn
    from .triton_bwd import fused_rnn_bwd_kernel
    from .triton_function import _bwd_warps, _fwd_warps, _split_bk
    from .triton_fwd import fused_rnn_fwd_kernel
    from .triton_split import fused_rnn_fwd_kernel_split
    from .triton_split_bwd import fused_rnn_bwd_kernel_split

    cell = get_cell(cell_name)
    tcell = get_triton_cell(cell_name)
    plan = plan_fused_rnn(cell, batch, heads, head_dim, dtype, gpu, "triton", max_onchip_bytes)
    if force_split:
        plan = dataclasses.replace(plan, path="split", BH=16, BK=plan.padded_head_dim)
    dt = _TRITON_TYPES[dtype]
    DHP = plan.padded_head_dim
    common = dict(G=cell.num_gates, S=cell.num_states, BB=plan.BB, DHP=DHP, HAS_LEN=True,
                  PREC="ieee" if dtype == torch.float32 else "tf32")
    ptr = {"WX": dt, "R": dt, "BIAS": dt, "S0": dt, "H": dt, "SLAST": dt, "LEN": "i64",
           "DHO": dt, "CNT": "i32"}
    if plan.path == "fused":
        fwd, bwd = fused_rnn_fwd_kernel, fused_rnn_bwd_kernel
        scalars = ("B", "T", "NH", "DH")
        fwd_c = dict(common, CELL=tcell.fwd, SAVE=True)
        bwd_c = dict(common, CELL=tcell.bwd, RH_DIFF=tcell.rh_grad_differs)
    else:
        fwd, bwd = fused_rnn_fwd_kernel_split, fused_rnn_bwd_kernel_split
        scalars = ("t_begin", "t_end", "t_lo", "t_hi", "B", "T", "NH", "DH")
        split = dict(common, BH=plan.BH, BK=_split_bk(plan), SYNC=plan.path == "split")
        fwd_c = dict(split, CELL=tcell.fwd, SAVE=True)
        bwd_c = dict(split, CELL=tcell.bwd, RH_DIFF=tcell.rh_grad_differs,
                     FINAL=plan.path == "split")
    specs = [(fwd, _signature(fwd, ptr, scalars, fwd_c), fwd_c, _fwd_warps(plan), plan.num_stages),
             (bwd, _signature(bwd, ptr, scalars, bwd_c), bwd_c, _bwd_warps(plan), plan.num_stages)]
    return specs, plan


def _resource_usage(cubin: bytes) -> dict:
    # registers and local memory (spills land there) of the cubin, read with the cuobjdump
    # triton ships; triton's own metadata has no register count until loaded on a device
    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True,
                             text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|LOCAL|SHARED):(\d+)", out))
    return {"n_regs": int(fields["REG"]), "local_bytes": int(fields["LOCAL"]),
            "stack_bytes": int(fields["STACK"])}


def compile_for_target(cell_name: str, head_dim: int, arch: int, dtype=torch.bfloat16,
                       max_onchip_bytes: int | None = None, force_split: bool = False) -> list[dict]:
    """Compile the planned forward and backward kernels for GPUTarget("cuda", arch, 32), as
    planned for an H100 (arch >= 90) or an A100 (arch 80), batch 16, one head.

    Returns one dict per kernel: name, path, tiles, stage ("cubin": ptxas ran), n_regs,
    local_bytes (spills), stack_bytes, shared (bytes of dynamic shared memory).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compile_for_target needs TRITON_INTERPRET unset (run it in a subprocess)")
    results = []
    specs, plan = kernel_specs(cell_name, head_dim, dtype, gpu="h100" if arch >= 90 else "a100",
                               max_onchip_bytes=max_onchip_bytes, force_split=force_split)
    for kernel, sig, constexprs, num_warps, num_stages in specs:
        assert isinstance(kernel, JITFunction)
        src = triton.compiler.ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": num_warps, "num_stages": num_stages})
        report = {"kernel": kernel.__name__, "cell": cell_name, "head_dim": head_dim, "arch": arch,
                  "dtype": str(dtype).replace("torch.", ""), "gpu": plan.gpu, "path": plan.path,
                  "BB": plan.BB, "DHP": plan.padded_head_dim, "BH": plan.BH, "BK": constexprs.get("BK", plan.BK),
                  "num_warps": num_warps, "num_stages": num_stages,
                  "plan_registers": plan.registers_per_thread,
                  "plan_shared": plan.shared_memory_bytes,
                  "stage": "cubin", "shared": compiled.metadata.shared,
                  # the split path's barrier: a gpu-scope release add, acquire reads
                  "barrier": (".gpu.release" in compiled.asm["ptx"]
                              and ".gpu.acquire" in compiled.asm["ptx"])}
        report.update(_resource_usage(compiled.asm["cubin"]))
        results.append(report)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", action="append", required=True)
    parser.add_argument("--head-dim", type=int, action="append", required=True)
    parser.add_argument("--arch", type=int, action="append", required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--force-split", action="store_true",
                        help="compile the split path's kernels (atomic per-step barrier)")
    args = parser.parse_args(argv)
    for cell in args.cell:
        for dh in args.head_dim:
            for arch in args.arch:
                for rep in compile_for_target(cell, dh, arch, getattr(torch, args.dtype),
                                              force_split=args.force_split):
                    print(json.dumps(rep), flush=True)


if __name__ == "__main__":
    main()
