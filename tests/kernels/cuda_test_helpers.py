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


def run_layout_sim(binary, tmp_path, header, tables, names, tensors, out_shape, what: str):
    """Runs a layout simulation on its binary input (int32 ``header``, then the int32 lane tables
    ``tables[n]`` for ``n`` in ``names``, then the float64 ``tensors``) and returns its float64
    output viewed as ``out_shape``; a non-zero exit fails the test with the simulation's stderr."""
    import subprocess

    import torch

    parts = [torch.tensor(header, dtype=torch.int32)]
    parts += [torch.tensor(tables[n], dtype=torch.int32).flatten() for n in names]
    parts += [t.contiguous() for t in tensors]
    inp, out = tmp_path / "in.bin", tmp_path / "out.bin"
    with open(inp, "wb") as f:
        for part in parts:
            f.write(part.numpy().tobytes())
    done = subprocess.run([str(binary), str(inp), str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{what} failed:\n{done.stderr}"
    return torch.frombuffer(bytearray(out.read_bytes()), dtype=torch.float64).view(*out_shape)
