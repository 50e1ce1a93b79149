"""Pieces the forward and backward CUDA host tests share: the nvcc compile matrix and the build
of a g++ layout simulation (tests/kernels/cuda_layout_sim*.cpp)."""
from __future__ import annotations

import pathlib

from flashseq.kernels.fused_rnn import cuda_build

ROOT = pathlib.Path(__file__).resolve().parents[2]

# the nvcc compile tests' matrix: every cell x dtype x head size, for an A100 and an H100 build
HEAD_DIMS = (64, 256, 768)
DTYPES = ("bfloat16", "float16", "float32")
TARGETS = {"sm_80": "a100", "sm_90a": "h100"}


def compile_cases():
    """[(cell, dtype, DH, arch)] the compile tests build, arch-major."""
    from flashseq.cells import CELLS

    return [(cell, dtype, dh, arch) for arch in TARGETS for cell in sorted(CELLS)
            for dtype in DTYPES for dh in HEAD_DIMS]


def build_layout_sim(name: str, sources) -> pathlib.Path:
    """The g++ binary of ``sources[0]`` (a layout simulation), cached under ``name`` and rebuilt
    when any of ``sources`` (the .cpp and the headers it includes) changes."""
    gxx = cuda_build.find_tool("g++")

    def build(dst):
        cuda_build.run_tool([gxx, "-O2", "-std=c++17", "-Wall", "-Werror", "-o", str(dst),
                             str(sources[0])])
        return {}

    path, _ = cuda_build.cached_build(name, sources, ["g++ -O2"], build, "")
    return path
