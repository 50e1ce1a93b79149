"""The Triton plstm_2d forward and backward kernels compile for real GPU targets without a GPU.

At K = V = 64 and 128 in bf16 and fp32, with the tile, BV and warps ``plan_plstm_2d_triton``
picks for each on a 64 x 64 grid (B * H = 64), the kernel goes through triton.compile to a cubin for
GPUTarget("cuda", 90, 32) and ("cuda", 80, 32) in a subprocess with TRITON_INTERPRET unset;
registers, spills (stack / local memory) and shared memory come from cuobjdump on the cubin
(``pytest -s`` prints them). The planned kernel must not spill, and the plan's register model
must not predict fewer registers than ptxas allocates (else the plan could pick a tile that
spills). The backward kernel is compiled at the same tile; it still spills there (a strict
xfail records it). Compiling takes ~10-20 s per kernel and target on a 2-core machine: slow.
"""

import pytest

from tests.cubin_reports import compile_reports

ARCHS = (90, 80)
DIMS = (64, 128)
DTYPES = ("bfloat16", "float32")

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def reports():
    args = []
    for dim in DIMS:
        args += ["--dim", str(dim)]
    for arch in ARCHS:
        args += ["--arch", str(arch)]
    reps = []
    for dtype in DTYPES:
        reps += compile_reports("flashseq.kernels.plstm.triton_compile", args + ["--dtype", dtype],
                                timeout=1800)
    for rep in reps:
        print(f"{rep['kernel']} K=V={rep['dim']} sm_{rep['arch']} BX={rep['BX']} BY={rep['BY']} "
              f"BV={rep['BV']} warps={rep['num_warps']} {rep['PREC']} | regs {rep['n_regs']} "
              f"(plan {rep['planned_regs']}) stack {rep['stack_bytes']} "
              f"local {rep['local_bytes']} | shared {rep['shared']}")
    return {(rep["kernel"], rep["dim"], rep["arch"], rep["dtype"]): rep for rep in reps}


CASES = [(dim, arch, dtype) for dtype in DTYPES for dim in DIMS for arch in ARCHS]


def _ids(case):
    return f"K{case[0]}-sm{case[1]}-{case[2]}"


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_plstm_2d_kernel_compiles_to_cubin(reports, case):
    rep = reports[("plstm2d_fwd_kernel", *case)]
    assert rep["stage"] == "cubin" and rep["dtype"] == case[2]
    assert 0 < rep["n_regs"] <= 255, rep
    assert rep["shared"] <= (227 if case[1] == 90 else 163) * 1024, rep


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_plstm_2d_kernel_does_not_spill(reports, case):
    rep = reports[("plstm2d_fwd_kernel", *case)]
    assert rep["stack_bytes"] == 0 and rep["local_bytes"] == 0, f"spills: {rep}"


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_plan_register_model_covers_ptxas(reports, case):
    rep = reports[("plstm2d_fwd_kernel", *case)]
    assert rep["planned_regs"] >= rep["n_regs"], rep
    assert rep["planned_regs"] <= 255, rep


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_plstm_2d_backward_kernel_compiles_to_cubin(reports, case):
    rep = reports[("plstm2d_bwd_kernel", *case)]
    assert rep["stage"] == "cubin" and rep["dtype"] == case[2]
    assert 0 < rep["n_regs"] <= 255, rep
    assert rep["shared"] <= (227 if case[1] == 90 else 163) * 1024, rep


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="the backward kernel spills at the forward's planned tile "
                   "(255 registers + 176-368 B of stack in bf16, 664-1176 B in fp32, sm_80/sm_90, "
                   "K=V=64/128); no register model for it yet")
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_plstm_2d_backward_kernel_does_not_spill(reports, case):
    rep = reports[("plstm2d_bwd_kernel", *case)]
    assert rep["stack_bytes"] == 0 and rep["local_bytes"] == 0, f"spills: {rep}"
