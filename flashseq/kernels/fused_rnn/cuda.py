"""``backend="cuda"``: the persistent CUDA kernels of csrc/fused/, built on first use per plan.

The solver's CUDA plan (``plan.plan_fused_rnn(..., backend="cuda")``) fixes the tiles; the
forward kernel for (cell, dtype, tiles, h exchange, GPU architecture) is compiled with the thin
binding csrc/bindings/fused_rnn_cuda.cpp into an extension module by ``flashseq._jit`` (cached
on disk under a key of every source and flag, built once under a file lock, checked before each
load). A build that fails makes this back end refuse the call with the compiler's first error,
so ``backend="auto"`` falls back to Triton with one warning.

Opt-in for now: only with FLASHSEQ_CUDA_KERNELS=1 (the kernels are compile-checked, not yet
run on a GPU). Serves today: bfloat16 / float16 and float32, forward and backward (the
persistent backward kernel, flashseq/kernels/fused_rnn/cuda_function.py); float32 with its
products on tf32 tensor cores (inputs rounded to tf32, fp32 accumulation and states: tf32
accuracy, about 5e-4 relative), so only where torch allows tf32 in float32 matrix products
(``torch.backends.cuda.matmul.allow_tf32 = True``; otherwise refused, and "auto" takes the
Triton kernels, which compute float32 in IEEE fp32); compute capability 8.0 or newer, plans on
the fused or split path. Everything else is refused with the reason, never run wrongly.
"""
from __future__ import annotations

import functools
import os

import torch

from flashseq import _jit

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# the backward kernel's (csrc/fused/backward.cuh; float32 on tf32 mma.sync, like the forward)
GRAD_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_CAPABILITY = (8, 0)


# Until the kernels have passed their GPU tests, they run only when asked for: with the
# variable unset this back end stays unavailable (as before it existed), and "auto" skips it.
OPT_IN = "FLASHSEQ_CUDA_KERNELS"


def unavailable_reason(device):
    if device.type != "cuda":
        return f"the CUDA kernels run on CUDA tensors; got {device.type}"
    if os.environ.get(OPT_IN) != "1":
        return (f"the CUDA kernels have not run on a GPU yet (compile-checked only); set {OPT_IN}=1 "
                "to use them")
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    from .cuda_build import find_tool
    if find_tool("nvcc") is None:
        return "nvcc (the CUDA toolkit) is not on PATH: the kernels are compiled on first use"
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        return f"needs compute capability >= 8.0 (bf16/fp16 mma.sync); {device} has {cap[0]}.{cap[1]}"
    return None


def unsupported_reason(problem):
    if problem.dtype not in SUPPORTED_DTYPES:
        return f"dtype {problem.dtype} is not served yet (allowed: float16, bfloat16, float32)"
    if problem.dtype == torch.float32 and not tf32_allowed():
        return ("float32 runs on tf32 tensor cores here (about 5e-4 relative error), which torch "
                "allows only with torch.backends.cuda.matmul.allow_tf32 = True; it is False")
    if problem.needs_grad and problem.dtype not in GRAD_DTYPES:
        return (f"gradients in {problem.dtype} are not served yet: the backward kernel takes "
                "float16/bfloat16/float32")
    plan = _plan(problem.cell.name, problem.batch, problem.heads, problem.head_dim,
                 problem.dtype, problem.device)
    if plan.path not in ("fused", "split"):
        return f"the plan takes the {plan.path} path, which has no CUDA kernel ({plan.reason})"
    arch = _arch(problem.device)
    # with a gradient: the forward in save mode and the backward kernel (csrc/fused/backward.cuh)
    # at the backward's own plan, known before anything is built or launched
    builds = [(plan, "forward_save" if problem.needs_grad else "forward")]
    if problem.needs_grad:
        try:
            builds.append((_plan_backward(problem.cell.name, problem.batch, problem.heads,
                                          problem.head_dim, problem.dtype, problem.device),
                           "backward"))
        except ValueError as err:
            return f"the forward has a plan but the backward kernel does not fit: {err}"
    for each, kind in builds:
        _, error = _extension(_spec_key(each, arch, kind))
        if error:
            return error
    return None


def tf32_allowed() -> bool:
    """torch's switch for tf32 in float32 matrix products (off by default), which the float32
    kernels follow: they round their operands to tf32."""
    return bool(torch.backends.cuda.matmul.allow_tf32)


def _arch(device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return "sm_90a" if (major, minor) == (9, 0) else f"sm_{major}{minor}"


@functools.lru_cache(maxsize=256)
def _plan(cell, batch, heads, head_dim, dtype, device):
    from flashseq import hardware

    from .plan import plan_fused_rnn
    # float32 inputs run on tf32 tensor cores: the tf32 plan (cuda_compile.plan_dtype)
    dtype = "tf32" if dtype == torch.float32 else dtype
    return plan_fused_rnn(cell, batch, heads, head_dim, dtype, hardware.detect(device), backend="cuda")


@functools.lru_cache(maxsize=256)
def _plan_backward(cell, batch, heads, head_dim, dtype, device):
    """The backward kernel's plan (plan_bwd.py) for the GPU of ``device``; ValueError naming the
    sizes when no backward tiling fits it."""
    from flashseq import hardware

    from .plan_bwd import plan_fused_rnn_backward
    dtype = "tf32" if dtype == torch.float32 else dtype
    return plan_fused_rnn_backward(cell, batch, heads, head_dim, dtype, hardware.detect(device))


def gencode_flag(arch: str) -> str:
    """nvcc's -gencode flag for ``arch`` ("sm_80", "sm_90a", ...); sm_90a needs its own
    compute_90a virtual arch for wgmma and cluster instructions."""
    if arch == "sm_90a":
        return "-gencode=arch=compute_90a,code=sm_90a"
    return f"-gencode=arch=compute_{arch[3:]},code={arch}"


def extension_spec(plan, arch: str, kind: str = "forward") -> _jit.ExtensionSpec:
    """The extension of one plan's instantiation for ``arch`` ("sm_80", "sm_90a", ...): kind
    "forward" (inference), "forward_save" (the forward that saves what the backward reads) or
    "backward" (csrc/fused/fused_rnn_bwd.cu with its binding, at ``plan``'s backward plan:
    a ``plan_bwd.FusedRNNBackwardPlan``, or the one of a forward plan's configuration)."""
    from .cuda_compile import forward_defines, forward_sources, uses_wgmma

    if kind == "backward":
        from .cuda_function import backward_extension_spec
        return backward_extension_spec(plan, arch)
    if kind not in ("forward", "forward_save"):
        raise ValueError(f"kind must be 'forward', 'forward_save' or 'backward'; got {kind!r}")
    defines = forward_defines(plan, cluster=plan.cluster_size > 1 and arch == "sm_90a",
                              gmma=uses_wgmma(arch, plan), save=kind == "forward_save")
    gencode = gencode_flag(arch)
    sources = (str(_jit.CSRC_DIR / "bindings" / "fused_rnn_cuda.cpp"),
               str(_jit.CSRC_DIR / "fused" / "fused_rnn_fwd.cu"))
    depends = tuple(str(p) for p in forward_sources() if str(p) not in sources)
    return _jit.ExtensionSpec(
        name="flashseq_cuda_fwd", sources=sources,
        depends=depends + (str(_jit.CSRC_DIR / "fused" / "launch.h"),),
        include_dirs=(str(_jit.CSRC_DIR),), cflags=("-O3",),
        cuda_cflags=("-O3", "-std=c++17", gencode,
                     *(f"-D{k}={v}" for k, v in sorted(defines.items()))))


def _spec_key(plan, arch, kind="forward"):
    # a hashable stand-in for the spec (lru_cache key); the spec itself is rebuilt from it
    return (plan, arch, kind)


@functools.lru_cache(maxsize=64)
def _extension(key):
    """(module, None) or (None, why the build failed), once per process and plan."""
    plan, arch, kind = key
    try:
        return _jit.load_extension(extension_spec(plan, arch, kind)), None
    except Exception as err:  # a failed build refuses the call (auto falls back), never crashes
        lines = str(err).strip().splitlines() or [type(err).__name__]
        first = next((ln for ln in lines if "error" in ln), lines[0]).strip()
        return None, f"building the CUDA kernel for {arch} failed: {first}"


def fused_rnn(wx, r, b, states, *, cell, lengths):
    """``flashseq.ops.fused_rnn`` (layouts there) through the persistent kernels; differentiable
    (flashseq/kernels/fused_rnn/cuda_function.py) when a gradient is needed."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (wx, r, b, states)):
        from .cuda_function import fused_rnn_with_grad
        return fused_rnn_with_grad(wx, r, b, states, cell=cell, lengths=lengths)
    return run_forward(wx, r, b, states, cell=cell, lengths=lengths)


def extension(plan, arch: str, kind: str = "forward"):
    """The built module of ``extension_spec(plan, arch, kind)``; NotImplementedError with the
    build's first error when it failed."""
    ext, error = _extension(_spec_key(plan, arch, kind))
    if ext is None:
        raise NotImplementedError(error)
    return ext


def run_forward(wx, r, b, states, *, cell, lengths, save_gates=None, save_states=None):
    """(h, last_states) from the forward kernel; with ``save_gates``/``save_states`` (fp32
    [T, kNumSaved, B, NH, DH] / [T, S, B, NH, DH], zero-filled) the save-mode build, which also
    writes what the backward kernel reads (csrc/fused/layout_bwd.h ``saved_offset``)."""
    B, T, G, NH, DH = wx.shape
    plan = _plan(cell.name, B, NH, DH, wx.dtype, wx.device)
    ext = extension(plan, _arch(wx.device), "forward" if save_states is None else "forward_save")
    _, grid_b, _, _, blocks_per_head, BB, DHP, cluster = ext.launch_shape(B, NH)
    # weights transposed and zero-padded, so each mma fragment register is one 32-bit load
    rt = wx.new_zeros(G, NH, DHP, DHP)
    rt[:, :, :DH, :DH] = r.transpose(-1, -2)
    h = wx.new_empty(B, T, NH, DH)
    last = wx.new_empty(cell.num_states, B, NH, DH)
    if blocks_per_head > 1 and not cluster:
        xchg = wx.new_empty(2, NH, grid_b * BB, DHP)
        barrier = torch.zeros(grid_b * NH, dtype=torch.int32, device=wx.device)
    else:
        xchg = wx.new_empty(0)
        barrier = torch.zeros(0, dtype=torch.int32, device=wx.device)
    ext.forward(wx, rt, b, states, None if lengths is None else lengths.contiguous(), h, last,
                xchg, barrier, save_gates, save_states)
    return h, last
