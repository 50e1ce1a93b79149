"""The CUDA fused_rnn kernels compiled to cubins with plain nvcc, and what ptxas and the SASS say.

``compile_forward(plan, arch)`` builds csrc/fused/fused_rnn_fwd.cu (``compile_backward``:
fused_rnn_bwd.cu, the backward kernel of the same plan; ``compile_barrier_floor``:
barrier_floor.cu, the empty step loop) for one plan (cell, dtype,
tiles, exchange) and one target (``sm_80``, ``sm_90a``) with ``-Xptxas -v``, cached on disk
(flashseq/kernels/fused_rnn/cuda_build.py, keyed by the sources' content and the flags), and
returns a ``CubinReport``: registers, spill bytes, stack frame and shared memory from ptxas, and
from ``cuobjdump -sass``: the tensor-core instructions inside the step loop and the recurrent
weight loads (tagged L1::no_allocate, csrc/fused/device.cuh) inside and outside of it.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import re

from flashseq import _jit
from flashseq.cells import get_cell
from flashseq.kernels._triton_compile_common import (  # shared with the Triton checks
    SASS_TENSOR_OPS, sass_loops)

from . import cuda_build

CELL_TYPES = {"lstm": "LstmCell", "gru": "GruCell", "slstm": "SlstmCell", "elman": "ElmanCell"}
# float32 inputs run on tf32 tensor cores (mma.sync m16n8k8, or wgmma m64nNk8 on sm_90a; fp32
# accumulation): their CUDA plan is made for "tf32" (cuda.plan_dtype); a plan made for "float32"
# has the same tiles and registers
ELEM_TYPES = {"bfloat16": "Bf16", "float16": "Fp16", "tf32": "Fp32", "float32": "Fp32"}
SIXTEEN_BIT = ("bfloat16", "float16")
ARCH_FLAGS = {"sm_80": ["-arch=sm_80"], "sm_90a": ["-gencode=arch=compute_90a,code=sm_90a"]}
NVCC_FLAGS = ["-std=c++17", "-O3", "-cubin", "-Xptxas", "-v", "-lineinfo"]
FUSED_DIR = _jit.CSRC_DIR / "fused"


def plan_dtype(dtype: str) -> str:
    """The dtype a CUDA plan is made for, from the inputs' dtype name: float32 inputs run on tf32
    tensor cores, so their plan is the "tf32" one (the tensor-core rate, 4-byte elements)."""
    return "tf32" if dtype == "float32" else dtype


def forward_sources() -> list[pathlib.Path]:
    """Every file the forward kernel's compile reads (its cache key)."""
    return sorted(FUSED_DIR.glob("*.h")) + sorted(FUSED_DIR.glob("*.cuh")) + [
        FUSED_DIR / "fused_rnn_fwd.cu"] + sorted((_jit.CSRC_DIR / "cells").glob("*.h"))


def forward_defines(plan, *, cluster: bool | None = None, cap_registers: bool = True,
                    gmma: bool = False, save: bool = False) -> dict[str, str]:
    """-D values instantiating the forward kernel for a CUDA ``FusedRNNPlan`` (bf16/fp16, and
    tf32/float32: fp32 elements on tf32 tensor cores).

    cluster: exchange h inside a cluster (sm_90a); default: as the plan says.
    cap_registers: cap ptxas at the plan's predicted registers per thread (FLASHSEQ_MAX_REGS,
        see csrc/fused/forward.cuh); False leaves ptxas free (up to 255).
    gmma: the step's product through wgmma (FLASHSEQ_GMMA, sm_90a only; see csrc/fused/layout.h).
    save: compile in the save mode for the backward (FLASHSEQ_FWD_SAVE, training builds).
    """
    if plan.backend != "cuda" or plan.path not in ("fused", "split"):
        raise ValueError(f"the CUDA kernels serve CUDA plans on the fused/split path; got "
                         f"backend={plan.backend!r} path={plan.path!r}")
    if plan.dtype not in ELEM_TYPES:
        raise ValueError(f"the CUDA kernels take {sorted(ELEM_TYPES)}; got dtype {plan.dtype!r}")
    clus = plan.cluster_size > 1 if cluster is None else cluster
    return {"FLASHSEQ_CELL": CELL_TYPES[plan.cell], "FLASHSEQ_ELEM": ELEM_TYPES[plan.dtype],
            "FLASHSEQ_BB": str(plan.BB), "FLASHSEQ_BH": str(plan.BH),
            "FLASHSEQ_WM": str(plan.warps_m), "FLASHSEQ_WK": str(plan.warps_n),
            "FLASHSEQ_DHP": str(plan.padded_head_dim), "FLASHSEQ_CLUSTER": str(int(clus)),
            "FLASHSEQ_GMMA": str(int(gmma)), **({"FLASHSEQ_FWD_SAVE": "1"} if save else {}),
            **({"FLASHSEQ_MAX_REGS": str(plan.registers_per_thread)} if cap_registers else {})}


def backward_sources() -> list[pathlib.Path]:
    """Every file the backward kernel's compile reads (its cache key)."""
    return sorted(FUSED_DIR.glob("*.h")) + sorted(FUSED_DIR.glob("*.cuh")) + [
        FUSED_DIR / "fused_rnn_bwd.cu"] + sorted((_jit.CSRC_DIR / "cells").glob("*.h"))


def backward_plan(plan):
    """The backward kernel's own plan (plan_bwd.py ``FusedRNNBackwardPlan``, solved for the
    backward: its tiles, registers, shared memory); a forward CUDA ``FusedRNNPlan`` stands for
    the backward plan of its configuration (``plan_bwd.backward_plan_for``)."""
    from .plan_bwd import FusedRNNBackwardPlan, backward_plan_for

    return plan if isinstance(plan, FusedRNNBackwardPlan) else backward_plan_for(plan)


def backward_defines(plan, *, cluster: bool | None = None, cap_registers: bool = True,
                     gmma: bool = False) -> dict[str, str]:
    """-D values of the backward kernel for ``backward_plan(plan)``: the backward plan's tiles,
    the register cap at its prediction (``registers_per_thread``); ``gmma``: the product
    through wgmma (sm_90a, ``uses_wgmma``; csrc/fused/layout_bwd.h)."""
    return forward_defines(backward_plan(plan), cluster=cluster, cap_registers=cap_registers,
                           gmma=gmma)


@dataclasses.dataclass(frozen=True)
class CubinReport:
    """ptxas's and the SASS's account of one compiled kernel."""

    arch: str
    defines: dict
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    stack_bytes: int
    compile_s: float
    tensor_ops_in_loop: dict       # {"HMMA": n, "HGMMA": n} inside the step loop
    weight_loads_in_loop: int      # tagged recurrent-weight loads inside any loop with mma
    weight_loads_total: int
    local_memory_ops: int          # LDL/STL anywhere
    local_memory_ops_in_loop: int  # LDL/STL inside the step loop
    cubin: str
    wgmma_serialized: tuple = ()   # ptxas's reasons for running the wgmmas one at a time (C7512)


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
# the recurrent weights' loads: LDG with the L1::no_allocate tag (SASS ".NA"), e.g.
# "LDG.E.NA.CONSTANT"; no other load of the kernels carries it (csrc/fused/device.cuh)
_WEIGHT_LOAD = re.compile(r"\bLDG(\.\w+)*\.NA\b")
_WGMMA_SERIALIZED = re.compile(r"wgmma\.mma_async instructions are serialized due to ([^'\n]*?) for")


def analyse_sass(sass: str) -> dict:
    """Tensor-core instructions, weight loads (LDG with the NA tag) and local-memory
    instructions (LDL/STL: spills) inside the loops that hold tensor-core instructions, i.e. the
    step loop, and in the whole kernel."""
    instrs, loops = sass_loops(sass)
    is_mma = SASS_TENSOR_OPS
    mma_loops = [(a, b) for a, b in loops if any(a <= x <= b and is_mma.search(t) for x, t in instrs)]

    def in_loop(x):
        return any(a <= x <= b for a, b in mma_loops)

    ops = {"HMMA": 0, "HGMMA": 0}
    weight_in, weight_all, local, local_in = 0, 0, 0, 0
    for x, text in instrs:
        m = is_mma.search(text)
        if m and in_loop(x):
            ops[m.group(1)] += 1
        if _WEIGHT_LOAD.search(text):
            weight_all += 1
            weight_in += in_loop(x)
        if re.search(r"\b(LDL|STL)\b", text):
            local += 1
            local_in += in_loop(x)
    return {"tensor_ops_in_loop": ops, "weight_loads_in_loop": weight_in,
            "weight_loads_total": weight_all, "local_memory_ops": local,
            "local_memory_ops_in_loop": local_in}


@functools.lru_cache(maxsize=None)
def _nvcc_version(nvcc: str) -> str:
    return cuda_build.run_tool([nvcc, "--version"]).stdout.strip().splitlines()[-1]


def compile_forward(plan, arch: str, *, cluster: bool | None = None, cap_registers: bool = True,
                    extra_flags: tuple[str, ...] = (), save: bool = False) -> CubinReport:
    """Compile the forward kernel of ``plan`` for ``arch`` ("sm_80" | "sm_90a"); cached.
    ``cluster``, ``cap_registers`` and ``save`` as in ``forward_defines``."""
    defines = forward_defines(plan, cluster=cluster, cap_registers=cap_registers,
                              gmma=uses_wgmma(arch, plan), save=save)
    return _compile("fused_rnn_fwd", forward_sources(), defines, arch, extra_flags)


def compile_backward(plan, arch: str, *, cluster: bool | None = None, cap_registers: bool = True,
                     extra_flags: tuple[str, ...] = ()) -> CubinReport:
    """Compile the backward kernel (csrc/fused/fused_rnn_bwd.cu) of ``backward_plan(plan)`` for
    ``arch``; cached. Capped at that plan's ``registers_per_thread``; ``cluster`` as in
    ``forward_defines``; the product on wgmma where ``uses_wgmma(arch, plan)``."""
    plan = backward_plan(plan)
    defines = backward_defines(plan, cluster=cluster, cap_registers=cap_registers,
                               gmma=uses_wgmma(arch, plan))
    return _compile("fused_rnn_bwd", backward_sources(), defines, arch, extra_flags)


def _compile(name: str, sources, defines: dict, arch: str, extra_flags) -> CubinReport:
    import time

    if arch not in ARCH_FLAGS:
        raise ValueError(f"arch must be one of {sorted(ARCH_FLAGS)}; got {arch!r}")
    if defines["FLASHSEQ_CLUSTER"] == "1" and arch != "sm_90a":
        raise ValueError("the cluster exchange needs sm_90a")
    nvcc = cuda_build.find_tool("nvcc")
    cuobjdump = cuda_build.find_tool("cuobjdump")
    if nvcc is None or cuobjdump is None:
        raise FileNotFoundError("compiling the CUDA kernels needs nvcc and cuobjdump")
    flags = [*NVCC_FLAGS, *ARCH_FLAGS[arch], *extra_flags,
             *(f"-D{k}={v}" for k, v in sorted(defines.items()))]

    def build(dst):
        start = time.monotonic()
        done = cuda_build.run_tool([nvcc, *flags, str(FUSED_DIR / f"{name}.cu"), "-o", str(dst)])
        seconds = time.monotonic() - start
        text = done.stdout + done.stderr
        # (the text before the first entry may name the kernel too, in ptxas's warnings)
        kernel = [blk for blk in text.split("Compiling entry function")[1:] if f"{name}_kernel" in blk]
        if len(kernel) != 1:
            raise cuda_build.BuildError(f"no single kernel entry in the ptxas report:\n{text}")
        regs = _PTXAS_REGS.search(kernel[0])
        spill = _PTXAS_SPILL.search(kernel[0])
        return {"registers": int(regs.group(1)), "stack_bytes": int(spill.group(1)),
                "spill_store_bytes": int(spill.group(2)), "spill_load_bytes": int(spill.group(3)),
                "compile_s": round(seconds, 2),
                # ptxas C7512: "wgmma.mma_async instructions are serialized due to ..."
                "wgmma_serialized": _WGMMA_SERIALIZED.findall(text)}

    path, meta = cuda_build.cached_build(name, sources, [flags, _nvcc_version(nvcc)],
                                         build, ".cubin")
    # the SASS is read again on every call (cheap), so a change of analyse_sass needs no rebuild
    sass = analyse_sass(cuda_build.run_tool([cuobjdump, "-sass", str(path)]).stdout)
    return CubinReport(arch=arch, defines=defines, registers=meta["registers"],
                       spill_store_bytes=meta["spill_store_bytes"],
                       spill_load_bytes=meta["spill_load_bytes"], stack_bytes=meta["stack_bytes"],
                       compile_s=meta["compile_s"], tensor_ops_in_loop=sass["tensor_ops_in_loop"],
                       weight_loads_in_loop=sass["weight_loads_in_loop"],
                       weight_loads_total=sass["weight_loads_total"],
                       local_memory_ops=sass["local_memory_ops"],
                       local_memory_ops_in_loop=sass["local_memory_ops_in_loop"], cubin=str(path),
                       wgmma_serialized=tuple(meta.get("wgmma_serialized", ())))


def tf32_roundings(kernel: str, defines: dict, arch: str) -> dict:
    """Counts in the PTX of one instantiation (``kernel``: "fused_rnn_fwd" | "fused_rnn_bwd"; not
    cached, a few seconds): ``round`` the tf32 roundings (``cvt.rna.tf32.f32``, device.cuh
    ``Fp32::to_tf32``), ``weight_loads`` the tagged weight loads, ``mma`` the tensor-core
    instructions (``mma.sync`` and ``wgmma.mma_async``). The fp32 kernels round each operand
    once: every weight after its load, every value of h (d(rh) in the backward) when it is
    stored to shared memory."""
    import tempfile

    nvcc = cuda_build.find_tool("nvcc")
    if nvcc is None:
        raise FileNotFoundError("reading the kernels' PTX needs nvcc")
    flags = ["-std=c++17", "-O3", "-ptx", *ARCH_FLAGS[arch],
             *(f"-D{k}={v}" for k, v in sorted(defines.items()))]
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "k.ptx"
        cuda_build.run_tool([nvcc, *flags, str(FUSED_DIR / f"{kernel}.cu"), "-o", str(out)])
        ptx = out.read_text()
    return {"round": len(re.findall(r"\bcvt\.rna\.tf32\.f32\b", ptx)),
            "weight_loads": len(re.findall(r"\bld\.global\.nc\.L1::no_allocate\b", ptx)),
            "mma": len(re.findall(r"\b(mma\.sync|wgmma\.mma_async)\.", ptx))}


def floor_sources() -> list[pathlib.Path]:
    """Every file the barrier-floor kernel's compile reads (its cache key)."""
    return [FUSED_DIR / "barrier_floor.cu", FUSED_DIR / "device.cuh", FUSED_DIR / "launch_floor.h",
            FUSED_DIR / "launch_common.h"]


# the synchronisation instructions of the step barriers, by kind
_FLOOR_OPS = {"block_barrier": r"\bBAR\.SYNC\b", "cluster_arrive": r"\bUCGABAR_ARV\b",
              "cluster_wait": r"\bUCGABAR_WAIT\b", "flag_add": r"\bREDG?\.E\.ADD\b",
              "flag_poll": r"\bLDG\.E\.STRONG\.GPU\b", "tensor": SASS_TENSOR_OPS.pattern,
              "shared_memory": r"\b(LDS|STS|LDSM)\b", "local_memory": r"\b(LDL|STL)\b"}


def analyse_floor_sass(sass: str) -> dict:
    """Counts of each ``_FLOOR_OPS`` kind inside the kernel's outermost loop (the step loop):
    the barriers it must hold, and work it must not (tensor cores, shared or local memory)."""
    instrs, loops = sass_loops(sass)
    if not loops:
        return {kind: 0 for kind in _FLOOR_OPS}
    start, end = max(loops, key=lambda ab: ab[1] - ab[0])
    inside = [t for x, t in instrs if start <= x <= end]
    return {kind: sum(bool(re.search(rx, t)) for t in inside) for kind, rx in _FLOOR_OPS.items()}


def compile_barrier_floor(arch: str, cluster: bool) -> tuple[CubinReport, dict]:
    """Compile csrc/fused/barrier_floor.cu (the forward's step loop and barriers, no work) for
    ``arch``; cached. Returns ptxas's report and ``analyse_floor_sass`` of its SASS."""
    rep = _compile("barrier_floor", floor_sources(), {"FLASHSEQ_CLUSTER": str(int(cluster))},
                   arch, ())
    cuobjdump = cuda_build.find_tool("cuobjdump")
    return rep, analyse_floor_sass(cuda_build.run_tool([cuobjdump, "-sass", rep.cubin]).stdout)


def _mma_k(plan) -> int:
    """K of one tensor-core instruction: 16 for 16-bit operands, 8 for tf32 (fp32 elements)."""
    return 16 if plan.dtype in SIXTEEN_BIT else 8


def wgmma_serves(plan) -> bool:
    """The plan's tiling fits the wgmma path (csrc/fused/layout.h ``gmma_invalid``): whole
    warpgroups (warps a multiple of 4) each taking whole k steps (16 for bf16/fp16, 8 for tf32,
    i.e. float32 inputs: ``.tf32`` wgmma, both operands K-major), and N = BB of 8 or 16."""
    warps = plan.warps_m * plan.warps_n
    return (plan.dtype in ELEM_TYPES and warps % 4 == 0 and plan.BB in (8, 16)
            and plan.padded_head_dim % (_mma_k(plan) * (warps // 4)) == 0)


def uses_wgmma(arch: str, plan=None) -> bool:
    """The kernels' product (forward and backward) runs on wgmma (HGMMA) for this target:
    sm_90a, when the plan's tiling fits (``wgmma_serves``; otherwise mma.sync, as on sm_80)."""
    return arch == "sm_90a" and (plan is None or wgmma_serves(plan))


def expected_weight_loads(plan, arch: str = "sm_80") -> int:
    """32-bit weight loads per thread in the kernel's prologue: one per A-fragment register
    (wgmma: 64-row tiles over the warpgroup's K slice, csrc/fused/layout.h ``g_a_regs``; fp32
    elements on tf32: K steps of 8, so twice the registers of 16-bit ones, on both paths)."""
    G = get_cell(plan.cell).num_gates
    k = _mma_k(plan)
    if uses_wgmma(arch, plan):
        warpgroups = plan.warps_m * plan.warps_n // 4
        m_tiles = -(-G * plan.BH // 64)
        return m_tiles * (plan.padded_head_dim // (k * warpgroups)) * 4
    rows_per_warp = G * plan.BH // plan.warps_m
    return (rows_per_warp // 16) * (plan.padded_head_dim // (k * plan.warps_n)) * 4


def expected_backward_weight_loads(plan, arch: str = "sm_80") -> int:
    """32-bit weight loads per thread in the backward kernel's prologue (csrc/fused/layout_bwd.h):
    mma.sync: (DHP/WMB/16) row tiles x (G*BH/WKB/K) column tiles x 4, WMB = gcd(warps, DHP/16),
    K = 16 (16-bit) or 8 (fp32 on tf32: one weight per register);
    wgmma (``uses_wgmma``): the warpgroup's 64-row tiles of k (the last one padded past DHP),
    cdiv(DHP, 64)/GWM of them, GWM = gcd(warpgroups, cdiv(DHP, 64)), x its k steps of K (16, or
    8 for tf32) over G*BH/GWK gate columns x 4."""
    import math

    cols = get_cell(plan.cell).num_gates * plan.BH
    warps, dhp = plan.warps_m * plan.warps_n, plan.padded_head_dim
    k = _mma_k(plan)
    if uses_wgmma(arch, plan):
        m_tiles = -(-dhp // 64)
        gwm = math.gcd(warps // 4, m_tiles)
        return (m_tiles // gwm) * (cols // (warps // 4 // gwm) // k) * 4
    wmb = math.gcd(warps, dhp // 16)
    return (dhp // wmb // 16) * (cols // (warps // wmb) // k) * 4
