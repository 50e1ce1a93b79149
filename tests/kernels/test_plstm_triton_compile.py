"""The Triton plstm_2d forward and backward kernels compile for real GPU targets without a GPU.

At K = V = 64 and 128 in bf16 and fp32, with the tile, BV and warps ``plan_plstm_2d_triton``
picks for each on a 64 x 64 grid (B * H = 64), the kernel goes through triton.compile to a cubin for
GPUTarget("cuda", 90, 32) and ("cuda", 80, 32) in a subprocess with TRITON_INTERPRET unset;
registers, spills (stack / local memory) and shared memory come from cuobjdump on the cubin
(``pytest -s`` prints them). The planned kernel must not spill, and the plan's register model
must not predict fewer registers than ptxas allocates (else the plan could pick a tile that
spills). The backward's five launches (coefficients, adjoint walk, the tiles' own terms, their
mark reads, their leaving edges) are compiled at the same tile with their own warps and must not
spill either; the within-tile kernel, the tightest, is also compiled once (K = V = 64, fp32
and bf16, sm_80 and sm_90) in the default run. Compiling takes ~3-20 s per kernel and target on
a 2-core machine: slow.

The plstm_1d kernels (sequential forward, backward, the tree forward's summary, scan and output)
compile the same way at the chunk ``plan_plstm_1d_triton`` picks on CUDA, K = V = 64 and 128,
bf16 and fp32, sm_80 and sm_90, and must not spill (slow); the backward, the tightest, is also
compiled once (K = V = 64, bf16, sm_80) in the default run.
"""

import pytest

from tests.cubin_reports import compile_reports

ARCHS = (90, 80)
DIMS = (64, 128)
DTYPES = ("bfloat16", "float32")

pytest.importorskip("triton")


def _compile_all(args):
    """triton_compile's reports for ``args`` at every DIMS, ARCHS and DTYPES (one subprocess per
    dtype)."""
    for dim in DIMS:
        args = args + ["--dim", str(dim)]
    for arch in ARCHS:
        args = args + ["--arch", str(arch)]
    reps = []
    for dtype in DTYPES:
        reps += compile_reports("flashseq.kernels.plstm.triton_compile", args + ["--dtype", dtype],
                                timeout=1800)
    return reps


@pytest.fixture(scope="module")
def reports():
    reps = _compile_all([])
    for rep in reps:
        print(f"{rep['kernel']} K=V={rep['dim']} sm_{rep['arch']} BX={rep['BX']} BY={rep['BY']} "
              f"BV={rep.get('BV')} warps={rep['num_warps']} {rep['PREC']} | regs {rep['n_regs']} "
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


BWD_KERNELS = ("plstm2d_coef_kernel", "plstm2d_bwd_walk_kernel", "plstm2d_bwd_kernel",
               "plstm2d_bwd_mark_kernel", "plstm2d_bwd_leaving_kernel")
CASES_BWD = [(kernel, *case) for kernel in BWD_KERNELS for case in CASES]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES_BWD, ids=lambda c: f"{c[0]}-{_ids(c[1:])}")
def test_plstm_2d_backward_kernels_compile_and_do_not_spill(reports, case):
    # the single backward kernel these five replaced spilled 176-368 B of stack in bf16 and
    # 664-1176 B in fp32 at this tile
    rep = reports[case]
    assert rep["stage"] == "cubin" and rep["dtype"] == case[3]
    assert 0 < rep["n_regs"] <= 255, rep
    assert rep["shared"] <= (227 if case[2] == 90 else 163) * 1024, rep
    assert rep["stack_bytes"] == 0 and rep["local_bytes"] == 0, f"spills: {rep}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_plstm_2d_tile_backward_does_not_spill_at_planned_tile(dtype):
    # fp32 (FMA dots) needs 8 warps there, bf16 BK 16: one subprocess, both targets
    reps = compile_reports("flashseq.kernels.plstm.triton_compile",
                           ["--dim", "64", "--arch", "80", "--arch", "90", "--dtype", dtype,
                            "--kernel", "plstm2d_bwd_kernel"], timeout=600)
    assert [(rep["kernel"], rep["arch"]) for rep in reps] == [("plstm2d_bwd_kernel", 80),
                                                               ("plstm2d_bwd_kernel", 90)]
    for rep in reps:
        print(rep)
        assert rep["stack_bytes"] == 0 and rep["local_bytes"] == 0, f"spills: {rep}"


# ---- plstm_1d ------------------------------------------------------------------------------------
KERNELS_1D = ("plstm1d_fwd_kernel", "plstm1d_bwd_kernel", "plstm1d_fwd_kernel_summary",
              "plstm1d_fwd_kernel_scan", "plstm1d_fwd_kernel_output")


def _print_1d(reps):
    for rep in reps:
        print(f"{rep['kernel']} K=V={rep['dim']} sm_{rep['arch']} {rep['dtype']} "
              f"BT={rep.get('BT')} BV={rep['BV']} warps={rep['num_warps']} | regs {rep['n_regs']} "
              f"stack {rep['stack_bytes']} local {rep['local_bytes']} | shared {rep['shared']}")


@pytest.fixture(scope="module")
def reports_1d():
    reps = _compile_all(["--family", "1d"])
    _print_1d(reps)
    return {(rep["kernel"], rep["dim"], rep["arch"], rep["dtype"]): rep for rep in reps}


CASES_1D = [(kernel, *case) for kernel in KERNELS_1D for case in CASES]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES_1D, ids=lambda c: f"{c[0]}-{_ids(c[1:])}")
def test_plstm_1d_kernels_do_not_spill(reports_1d, case):
    rep = reports_1d[case]
    assert rep["stage"] == "cubin" and 0 < rep["n_regs"] <= 255, rep
    assert rep["shared"] <= (227 if case[2] == 90 else 163) * 1024, rep
    assert rep["stack_bytes"] == 0 and rep["local_bytes"] == 0, f"spills: {rep}"


def test_plstm_1d_backward_does_not_spill_at_planned_chunk():
    # the backward holds the most; ptxas puts a kernel that cannot fit 255 registers at 32
    # registers and spills nearly everything (as the whole-K, whole-V backward did: 19 KB)
    reps = compile_reports("flashseq.kernels.plstm.triton_compile",
                           ["--family", "1d", "--dim", "64", "--arch", "80", "--dtype",
                            "bfloat16", "--kernel", "plstm1d_bwd_kernel"], timeout=600)
    _print_1d(reps)
    assert [rep["kernel"] for rep in reps] == ["plstm1d_bwd_kernel"]
    rep = reps[0]
    assert rep["stack_bytes"] == 0 and rep["local_bytes"] == 0, f"spills: {rep}"
