"""What the kernel families' ``triton_compile`` modules share: building a Triton signature,
compiling one kernel to a cubin for a GPU target without a GPU, reading the cubin's registers
and spills, and the command line that prints one JSON report per compiled kernel.

Compiling needs TRITON_INTERPRET unset (the interpreter replaces the JIT functions and compiles
nothing); the tests run these modules in a subprocess for that reason.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import tempfile
from typing import Callable, Iterable

import torch

TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def require_compiler() -> None:
    """Refuse to run under the Triton interpreter, which compiles nothing."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compile_for_target needs TRITON_INTERPRET unset (run it in a "
                           "subprocess)")


def dtype_name(dtype: torch.dtype) -> str:
    """"bfloat16" for torch.bfloat16, as the reports spell it."""
    return str(dtype).replace("torch.", "")


def signature(kernel, constexprs: dict, scalars: dict, pointer_type: Callable[[str], str]) -> dict:
    """Triton signature of ``kernel``: "constexpr" for the names in ``constexprs``, the type
    ``scalars`` gives for a scalar argument, else a pointer to ``pointer_type(name)``."""
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in scalars:
            sig[name] = scalars[name]
        else:
            sig[name] = "*" + pointer_type(name)
    return sig


def compile_cubin(kernel, sig: dict, constexprs: dict, arch: int, num_warps: int,
                  num_stages: int | None = None):
    """``kernel`` compiled for GPUTarget("cuda", arch, 32) down to a cubin (ptxas ran);
    ``num_stages=None`` leaves Triton's default."""
    import triton
    from triton.backends.compiler import GPUTarget

    options = {"num_warps": num_warps}
    if num_stages is not None:
        options["num_stages"] = num_stages
    src = triton.compiler.ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def resource_usage(cubin: bytes) -> dict:
    """n_regs (registers per thread), local_bytes (spills land there) and stack_bytes of a
    cubin."""
    # read with the cuobjdump triton ships; triton's own metadata has no register count until
    # the kernel is loaded on a device
    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                             "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True,
                             text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|LOCAL|SHARED):(\d+)", out))
    return {"n_regs": int(fields["REG"]), "local_bytes": int(fields["LOCAL"]),
            "stack_bytes": int(fields["STACK"])}


def run_cli(description: str, axes: list[tuple[str, type]], dtypes: list[str], default_dtype: str,
            compile_one: Callable[..., Iterable[dict]], argv=None,
            add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Parse ``argv``: each of ``axes`` (flag, type) is a repeatable required option, plus
    ``--dtype`` (one of ``dtypes``) and what ``add_arguments`` adds. Calls
    ``compile_one(args, *values)`` for every combination of the axes' values (the first axis
    outermost) and prints each report it returns as one JSON line."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    dests = [parser.add_argument(flag, type=kind, action="append", required=True).dest
             for flag, kind in axes]
    parser.add_argument("--dtype", default=default_dtype, choices=dtypes)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    for values in itertools.product(*(getattr(args, dest) for dest in dests)):
        for report in compile_one(args, *values):
            print(json.dumps(report), flush=True)
