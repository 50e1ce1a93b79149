"""The barrier-cost floor of the CUDA forward (``backend="cuda"``), for the benchmark.

csrc/fused/barrier_floor.cu runs the forward's persistent step loop with the same grid, block
size, shared memory, launch (cluster on sm_90a / cooperative / plain) and per-step barriers
(the head's cluster barrier, or its flag barrier in global memory, plus the block barriers) and
no work. Its time over T steps, divided by T, is the least one step of the forward can take on
that plan; ``python -m bench fused_rnn`` reports the cuda provider's per-step time beside it.

Opt-in and availability as the CUDA back end (flashseq/kernels/fused_rnn/cuda.py): where it
cannot run, ``barrier_floor_call`` raises NotImplementedError with the reason.
"""
from __future__ import annotations

from typing import Callable

import torch

from flashseq import _jit

from . import cuda


def floor_extension_spec(arch: str, cluster: bool) -> _jit.ExtensionSpec:
    """The extension of the floor kernel for ``arch`` ("sm_80", "sm_90a", ...); ``cluster``:
    the head's blocks meet at a cluster barrier (sm_90 or newer)."""
    from .cuda_compile import floor_sources

    if cluster and arch < "sm_90":
        raise ValueError(f"a cluster barrier needs sm_90 or newer; got arch {arch!r}")
    gencode = cuda.gencode_flag(arch)
    sources = (str(_jit.CSRC_DIR / "bindings" / "barrier_floor_cuda.cpp"),
               str(_jit.CSRC_DIR / "fused" / "barrier_floor.cu"))
    depends = tuple(str(p) for p in floor_sources() if str(p) not in sources)
    return _jit.ExtensionSpec(
        name="flashseq_cuda_floor", sources=sources, depends=depends,
        include_dirs=(str(_jit.CSRC_DIR),), cflags=("-O3",),
        cuda_cflags=("-O3", "-std=c++17", gencode, f"-DFLASHSEQ_CLUSTER={int(cluster)}"))


def barrier_floor_call(cell: str, batch: int, steps: int, heads: int, head_dim: int, dtype,
                       device) -> Callable[[], None]:
    """A callable that runs the floor kernel once, ``steps`` steps, with the launch shape the
    forward kernel has for this problem (the CUDA plan of ``cell``, ``batch``, ``heads`` x
    ``head_dim``, ``dtype`` on ``device``). NotImplementedError when the CUDA back end cannot
    run it (no GPU, not opted in, no nvcc, a plan without a CUDA kernel, a failed build)."""
    device = torch.device(device)
    reason = cuda.unavailable_reason(device)
    if reason:
        raise NotImplementedError(reason)
    plan = cuda._plan(cell, batch, heads, head_dim, dtype, device)
    if plan.path not in ("fused", "split"):
        raise NotImplementedError(f"the plan takes the {plan.path} path, which has no CUDA kernel")
    arch = cuda._arch(device)
    # the forward's own launch shape (its extension is the one the benchmark times)
    grid_x, grid_y, threads, smem, per_head, _, _, cluster = cuda.extension(plan, arch).launch_shape(
        batch, heads)
    try:
        ext = _jit.load_extension(floor_extension_spec(arch, bool(cluster)))
    except Exception as err:  # reported like the forward's failed build: the row is skipped
        raise NotImplementedError(f"building the barrier floor for {arch} failed: {err}") from err
    counters = torch.zeros(grid_y * heads, dtype=torch.int32, device=device)

    def run():
        counters.zero_()  # the flag barrier counts from zero, as the forward's fresh counters
        ext.run(counters, steps, grid_x, grid_y, threads, smem, per_head, heads)
    return run
