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


def _cuobjdump(cubin: bytes, flag: str) -> str:
    """stdout of the cuobjdump Triton ships, run with ``flag`` on ``cubin`` (via a temp file)."""
    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                             "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([cuobjdump, flag, path], capture_output=True, text=True,
                              check=True).stdout


def resource_usage(cubin: bytes) -> dict:
    """n_regs (registers per thread), local_bytes (spills land there) and stack_bytes of a
    cubin."""
    # triton's own metadata has no register count until the kernel is loaded on a device
    out = _cuobjdump(cubin, "--dump-resource-usage")
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


# ---- where a kernel's step loop reads global memory from (SASS and PTX) ------------------------
# Shared by the Triton cubin checks (tests/kernels/test_fused_rnn_triton_compile.py) and the CUDA
# kernels' (flashseq/kernels/fused_rnn/cuda_compile.py): a loop is a branch back to an earlier
# address or label, the step loop is the one around the tensor-core instructions.

_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
SASS_TENSOR_OPS = re.compile(r"\b(HMMA|HGMMA)\b")
# global-memory reads: LDG, LDGSTS (cp.async into shared memory), UTMALDG (TMA)
SASS_GLOBAL_READ = re.compile(r"\b(LDG|LDGSTS|UTMALDG)\b")


def sass_loops(sass: str) -> tuple[list[tuple[int, str]], list[tuple[int, int]]]:
    """(instructions as (address, text), loops as (start, end) address ranges): a loop is a
    branch back to an earlier address, covering [target, branch]."""
    instrs = [(int(m.group(1), 16), m.group(2)) for m in _SASS_LINE.finditer(sass)]
    loops = []
    for addr, text in instrs:
        m = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr))
    return instrs, loops


def sass_step_loop(sass: str) -> dict:
    """Tensor-core instructions and global reads inside the loops that hold tensor-core
    instructions (the step loop), and global reads in the whole kernel."""
    instrs, loops = sass_loops(sass)
    mma_loops = [(a, b) for a, b in loops
                 if any(a <= x <= b and SASS_TENSOR_OPS.search(t) for x, t in instrs)]
    ops = {"HMMA": 0, "HGMMA": 0}
    reads_in, reads = 0, 0
    for x, text in instrs:
        inside = any(a <= x <= b for a, b in mma_loops)
        m = SASS_TENSOR_OPS.search(text)
        if m and inside:
            ops[m.group(1)] += 1
        if SASS_GLOBAL_READ.search(text):
            reads += 1
            reads_in += inside
    return {"tensor_ops_in_loop": ops, "global_reads_in_loop": reads_in, "global_reads": reads,
            "step_loops": len(mma_loops)}


def cubin_sass(cubin: bytes) -> str:
    """``cuobjdump -sass`` of a cubin, with the cuobjdump Triton ships."""
    return _cuobjdump(cubin, "-sass")


_PTX_REG = re.compile(r"%[A-Za-z_][\w.]*")
_PTX_PARAM = re.compile(r"\[\s*(\w+_param_(\d+))\s*\]")


def _ptx_instructions(ptx: str) -> list[tuple[str, list[str]]]:
    """(opcode, operand texts) of each PTX instruction in order; labels as ("label:", [name])."""
    out = []
    for raw in ptx.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line or line.startswith((".", "{", "}")):
            continue
        if line.endswith(":"):
            out.append(("label:", [line[:-1]]))
            continue
        line = re.sub(r"^@!?%\w+\s+", "", line).rstrip(";").strip()
        opcode, _, rest = line.partition(" ")
        operands, depth, cur = [], 0, ""
        for ch in rest:  # split on commas outside { } and [ ]
            depth += ch in "{[" and 1 or 0
            depth -= ch in "}]" and 1 or 0
            if ch == "," and depth == 0:
                operands.append(cur.strip())
                cur = ""
            else:
                cur += ch
        if cur.strip():
            operands.append(cur.strip())
        out.append((opcode, operands))
    return out


def ptx_step_loop_reads(ptx: str) -> dict:
    """The global reads inside the PTX step loop (the loop around mma/wgmma) and the kernel
    parameters each one's address derives from.

    Data flow: every instruction but stores, branches and barriers defines the registers of its
    first operand from all registers of the others (``ld.param`` from its parameter); a
    register's provenance is the union over all its definitions, iterated to a fixed point, so
    it over-approximates: an address reported free of a parameter cannot derive from it.
    Returns {"loop_reads": [sorted parameter indices per global read in the loop],
    "reads": [... per global read anywhere], "step_loops": n}.
    """
    instrs = _ptx_instructions(ptx)
    labels = {ops[0]: i for i, (op, ops) in enumerate(instrs) if op == "label:"}
    no_def = ("st.", "red.", "atom.", "bar.", "barrier.", "bra", "ret", "cp.async", "fence",
              "membar", "label:", "wgmma.fence", "wgmma.commit", "wgmma.wait", "exit")
    defs: list[tuple[list[str], list[str], set[int]]] = []
    for op, ops in instrs:
        if not ops or op.startswith(no_def):
            continue
        params = {int(m.group(2)) for o in ops[1:] for m in _PTX_PARAM.finditer(o)}
        defs.append((_PTX_REG.findall(ops[0]), [r for o in ops[1:] for r in _PTX_REG.findall(o)],
                     params))
    prov: dict[str, set[int]] = {}
    changed = True
    while changed:
        changed = False
        for dst, src, params in defs:
            got = set(params)
            for r in src:
                got |= prov.get(r, set())
            for r in dst:
                if not got <= prov.setdefault(r, set()):
                    prov[r] |= got
                    changed = True

    def address_params(op, ops):
        # ld.global* / generic ld: the [address] operand; cp.async: the second (global) one
        addr = [o for o in ops if o.startswith("[")]
        if op.startswith("cp.async"):
            addr = addr[1:2]
        regs = [r for o in addr for r in _PTX_REG.findall(o)]
        return sorted(set().union(*(prov.get(r, set()) for r in regs)) if regs else set())

    def is_global_read(op):
        return (op.startswith("ld.global") or (op.startswith("cp.async") and ".global" in op)
                or (op.startswith("ld.") and op.split(".")[1] in ("b8", "b16", "b32", "b64", "u8",
                    "u16", "u32", "u64", "s8", "s16", "s32", "s64", "f16", "f32", "f64", "v2",
                    "v4", "nc", "weak", "relaxed", "acquire", "volatile")))

    loops = []
    for i, (op, ops) in enumerate(instrs):
        if op.startswith("bra") and ops and ops[-1] in labels and labels[ops[-1]] < i:
            lo = labels[ops[-1]]
            if any(o.startswith(("mma.", "wgmma.mma_async")) for o, _ in instrs[lo:i]):
                loops.append((lo, i))
    loop_reads, reads = [], []
    for i, (op, ops) in enumerate(instrs):
        if is_global_read(op):
            p = address_params(op, ops)
            reads.append(p)
            if any(lo <= i <= hi for lo, hi in loops):
                loop_reads.append(p)
    return {"loop_reads": loop_reads, "reads": reads, "step_loops": len(loops)}


def step_loop_report(compiled, sig: dict) -> dict:
    """What a compiled Triton kernel's step loop reads from global memory, for the weights-stay-
    on-chip check: {"loop_tensor_ops": {"HMMA": n, "HGMMA": n} (SASS), "loop_global_reads_sass":
    n, "loop_global_reads_ptx": n, "loop_reads_from": {argument: n} (PTX data flow: the pointer
    arguments the in-loop reads' addresses derive from), "reads_from": {argument: n} (the whole
    kernel), "step_loops_sass"/"step_loops_ptx": n}. ``sig`` maps the kernel's arguments in
    order ("constexpr" ones are not kernel parameters)."""
    names = [n for n, t in sig.items() if t != "constexpr"]
    pointers = {i for i, n in enumerate(names) if sig[n].startswith("*")}
    sass = sass_step_loop(cubin_sass(compiled.asm["cubin"]))
    ptx = ptx_step_loop_reads(compiled.asm["ptx"])

    def by_argument(reads):
        count: dict[str, int] = {}
        for params in reads:
            for i in params:
                if i in pointers:
                    count[names[i]] = count.get(names[i], 0) + 1
            if not any(i in pointers for i in params):
                count["?"] = count.get("?", 0) + 1  # no pointer argument found: flagged
        return count

    return {"loop_tensor_ops": sass["tensor_ops_in_loop"],
            "loop_global_reads_sass": sass["global_reads_in_loop"],
            "loop_global_reads_ptx": len(ptx["loop_reads"]),
            "loop_reads_from": by_argument(ptx["loop_reads"]),
            "reads_from": by_argument(ptx["reads"]),
            "step_loops_sass": sass["step_loops"], "step_loops_ptx": ptx["step_loops"]}
