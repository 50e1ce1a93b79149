"""The Triton plstm_2d forward kernel compiles for real GPU targets without a GPU.

At K = V = 64 in bf16, with the tile, BV and warps ``plan_plstm_2d_triton`` picks for a 64 x 64
grid (B * H = 64), the kernel goes through triton.compile to a cubin for GPUTarget("cuda", 90,
32) and ("cuda", 80, 32) in a subprocess with TRITON_INTERPRET unset; registers, spills (stack /
local memory) and shared memory come from cuobjdump on the cubin (``pytest -s`` prints them).

Spills: measured 880 B of stack on sm_90 and 1584 B on sm_80 (255 registers) for the planned
4 x 16 tile (BV 32, 8 warps), so the
no-spill check is a strict xfail: it starts failing (and must become a plain assertion) the day
the kernel stops spilling. Compiling takes ~10 s per target on a 2-core machine: marked slow.
"""

import pytest

from tests.cubin_reports import compile_reports

ARCHS = (90, 80)

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def reports():
    args = ["--dim", "64"]
    for arch in ARCHS:
        args += ["--arch", str(arch)]
    reps = compile_reports("flashseq.kernels.plstm.triton_compile", args, timeout=1800)
    for rep in reps:
        print(f"{rep['kernel']} K=V={rep['dim']} sm_{rep['arch']} BX={rep['BX']} BY={rep['BY']} "
              f"BV={rep['BV']} BKS={rep['BKS']} warps={rep['num_warps']} | regs {rep['n_regs']} "
              f"stack {rep['stack_bytes']} local {rep['local_bytes']} | shared {rep['shared']}")
    return {rep["arch"]: rep for rep in reps}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
def test_plstm_2d_kernel_compiles_to_cubin(reports, arch):
    rep = reports[arch]
    assert rep["stage"] == "cubin" and rep["dtype"] == "bfloat16"
    assert 0 < rep["n_regs"] <= 255, rep
    assert rep["shared"] <= (227 if arch == 90 else 163) * 1024, rep


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="the planned 4 x 16 tile spills (measured 880 B "
                                       "stack on sm_90, 1584 B on sm_80); not fixed yet")
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
def test_plstm_2d_kernel_does_not_spill(reports, arch):
    rep = reports[arch]
    assert rep["stack_bytes"] == 0 and rep["local_bytes"] == 0, f"spills: {rep}"
