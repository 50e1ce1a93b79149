"""Compile the Triton ``fused_rnn`` kernels for a GPU target without a GPU, and report resources.

``python -m flashseq.kernels.fused_rnn.triton_compile --cell lstm --head-dim 64 --arch 90``
prints one JSON line per kernel: the stage reached ("cubin": ptxas ran), registers per
thread, local memory (spills), shared memory, and the tiles it was compiled for, so the numbers can be
compared with the plan. Must run with TRITON_INTERPRET unset (the interpreter replaces the
JIT functions); the tests call it in a subprocess for that reason.

``--extras`` compiles the extras kernels instead (``triton_extras_fwd``/``triton_extras_bwd``
with every extra on: lengths, variational, zoneout, reset, all states) at their own launch
(``triton_extras.extras_launch``); the LayerNorm cells ``layernorm_lstm``/``layernorm_gru``
compile only this way. A head size they do not serve prints a line with "skipped" instead.
"""
from __future__ import annotations

import torch

from flashseq.kernels._triton_compile_common import (TRITON_TYPES, compile_cubin, dtype_name,
                                                     require_compiler, resource_usage, run_cli,
                                                     signature, step_loop_report)


class ExtrasNotServed(ValueError):
    """``--extras`` for a head the plan does not run on the persistent kernel."""


def _signature(kernel, pointer_types: dict, scalar_names, constexprs: dict) -> dict:
    return signature(kernel, constexprs, dict.fromkeys(scalar_names, "i32"),
                     lambda name: pointer_types.get(name, "fp32"))


def kernel_specs(cell_name: str, head_dim: int, dtype: torch.dtype, gpu: str = "h100",
                 batch: int = 16, heads: int = 1, max_onchip_bytes: int | None = None,
                 force_split: bool = False, extras: bool = False):
    """[(kernel, signature, constexprs, num_warps, num_stages)] of the forward and backward
    kernels the plan picks for this cell / head size / dtype on ``gpu``, and the plan.
    ``force_split``: the split path's kernels (per-step barrier) with 16-unit slices instead.
    ``extras``: the extras kernels with every extra on (persistent path only)."""
    if extras:
        return _extras_specs(cell_name, head_dim, dtype, gpu, batch, heads)
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
    dt = TRITON_TYPES[dtype]
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


def _extras_specs(cell_name, head_dim, dtype, gpu, batch, heads):
    from flashseq.cells import get_cell
    from flashseq.cells.triton import get_triton_cell

    from .plan import plan_fused_rnn
    from .triton_extras import NORM_CELLS, base_cell_name, extras_launch, split_reason
    from .triton_extras_bwd import fused_rnn_bwd_extras_kernel
    from .triton_extras_fwd import fused_rnn_fwd_extras_kernel

    base = base_cell_name(cell_name)
    cell, tcell = get_cell(base), get_triton_cell(base)
    plan = plan_fused_rnn(cell, batch, heads, head_dim, dtype, gpu, "triton", None)
    reason = split_reason(plan)
    if reason:
        raise ExtrasNotServed(f"--extras: {reason}")
    dt = TRITON_TYPES[dtype]
    common = dict(G=cell.num_gates, S=cell.num_states, BB=plan.BB, DHP=plan.padded_head_dim,
                  NORM=cell_name in NORM_CELLS, NORM_C=NORM_CELLS.get(cell_name, ("", False))[1],
                  HAS_LEN=True, HAS_VAR=True, HAS_ZONE=True, HAS_RESET=True, ALL_STATES=True,
                  PREC="ieee" if dtype == torch.float32 else "tf32", WIDE=False)
    ptr = {"WX": dt, "R": dt, "BIAS": dt, "S0": dt, "H": dt, "SLAST": dt, "ALL": dt, "VAR": dt,
           "LEN": "i64", "DHO": dt, "ZONE": "u8", "RESET": "u8"}
    scalars = ("B", "T", "NH", "DH")
    fwd_c = dict(common, CELL=tcell.fwd, SAVE=True)
    bwd_c = dict(common, CELL=tcell.bwd)
    fwd, bwd = fused_rnn_fwd_extras_kernel, fused_rnn_bwd_extras_kernel
    specs = [(kernel, _signature(kernel, ptr, scalars, constexprs), constexprs,
              extras_launch(plan, cell_name, kernel is bwd)["num_warps"],
              extras_launch(plan, cell_name, kernel is bwd)["num_stages"])
             for kernel, constexprs in ((fwd, fwd_c), (bwd, bwd_c))]
    return specs, plan


def _compile_extras(kernel, sig, constexprs, arch, launch: dict):
    import triton
    from triton.backends.compiler import GPUTarget
    src = triton.compiler.ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=launch)


def compile_for_target(cell_name: str, head_dim: int, arch: int, dtype=torch.bfloat16,
                       max_onchip_bytes: int | None = None, force_split: bool = False,
                       extras: bool = False) -> list[dict]:
    """Compile the planned forward and backward kernels for GPUTarget("cuda", arch, 32), as
    planned for an H100 (arch >= 90) or an A100 (arch 80), batch 16, one head.

    Returns one dict per kernel: name, path, tiles, stage ("cubin": ptxas ran), n_regs,
    local_bytes (spills), stack_bytes, shared (bytes of dynamic shared memory).
    """
    from triton.runtime.jit import JITFunction

    from .triton_extras import extras_launch

    require_compiler()
    results = []
    specs, plan = kernel_specs(cell_name, head_dim, dtype, gpu="h100" if arch >= 90 else "a100",
                               max_onchip_bytes=max_onchip_bytes, force_split=force_split,
                               extras=extras)
    for kernel, sig, constexprs, num_warps, num_stages in specs:
        assert isinstance(kernel, JITFunction)
        if extras:  # their launch (triton_extras.extras_launch) may also cap the registers
            compiled = _compile_extras(kernel, sig, constexprs, arch,
                                       extras_launch(plan, cell_name, "bwd" in kernel.__name__))
        else:
            compiled = compile_cubin(kernel, sig, constexprs, arch, num_warps, num_stages)
        report = {"kernel": kernel.__name__, "cell": cell_name, "extras": extras,
                  "head_dim": head_dim, "arch": arch,
                  "dtype": dtype_name(dtype), "gpu": plan.gpu, "path": plan.path,
                  "BB": plan.BB, "DHP": plan.padded_head_dim, "BH": plan.BH, "BK": constexprs.get("BK", plan.BK),
                  "num_warps": num_warps, "num_stages": num_stages,
                  "maxnreg": compiled.metadata.maxnreg if extras else None,
                  "plan_registers": plan.registers_per_thread,
                  "plan_shared": plan.shared_memory_bytes,
                  "stage": "cubin", "shared": compiled.metadata.shared,
                  # the split path's barrier: a gpu-scope release add, acquire reads
                  "barrier": (".gpu.release" in compiled.asm["ptx"]
                              and ".gpu.acquire" in compiled.asm["ptx"])}
        report.update(resource_usage(compiled.asm["cubin"]))
        report.update(step_loop_report(compiled, sig))
        results.append(report)
    return results


def main(argv=None):
    def compile_one(args, cell, head_dim, arch):
        try:
            return compile_for_target(cell, head_dim, arch, getattr(torch, args.dtype),
                                      force_split=args.force_split, extras=args.extras)
        except ExtrasNotServed as exc:  # a head the extras kernels do not run: say so, go on
            return [{"kernel": None, "cell": cell, "extras": True, "head_dim": head_dim,
                     "arch": arch, "dtype": args.dtype, "skipped": str(exc)}]

    def add_force_split(parser):
        parser.add_argument("--force-split", action="store_true",
                            help="compile the split path's kernels (atomic per-step barrier)")
        parser.add_argument("--extras", action="store_true",
                            help="compile the extras kernels with every extra on")

    run_cli(__doc__, [("--cell", str), ("--head-dim", int), ("--arch", int)],
            ["float32", "float16", "bfloat16"], "bfloat16", compile_one, argv, add_force_split)


if __name__ == "__main__":
    main()
