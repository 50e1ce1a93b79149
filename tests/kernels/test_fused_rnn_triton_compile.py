"""The Triton fused_rnn kernels compile for real GPU targets without a GPU.

For every cell at DH 64 and 256, the forward and backward kernels the plan picks (H100 plan for
sm_90, A100 plan for sm_80; bf16, batch 16) go through triton.compile to a cubin for
GPUTarget("cuda", 90, 32) and ("cuda", 80, 32). That runs in one subprocess with
TRITON_INTERPRET unset (under the interpreter @triton.jit returns interpreter wrappers that the
compiler cannot take). Registers, spills and shared memory come from cuobjdump on the cubin and
are printed next to the plan's predictions (``pytest -s`` shows them).
"""

import pytest

from tests.cubin_reports import compile_reports

from flashseq.cells import CELLS

CELL_NAMES = sorted(CELLS)
HEAD_DIMS = (64, 256)
ARCHS = (90, 80)

pytest.importorskip("triton")


def _compile(cells, head_dims, archs, *extra):
    """{(cell, DH, arch): [fwd report, bwd report]} from one compile subprocess."""
    args = list(extra)
    for name in cells:
        args += ["--cell", name]
    for dh in head_dims:
        args += ["--head-dim", str(dh)]
    for arch in archs:
        args += ["--arch", str(arch)]
    reports = {}
    for rep in compile_reports("flashseq.kernels.fused_rnn.triton_compile", args, timeout=1800):
        print(f"{rep['kernel']:28s} {rep['cell']:5s} DH={rep['head_dim']:3d} sm_{rep['arch']} "
              f"{rep['path']:8s} BB={rep['BB']} BH={rep['BH']} BK={rep['BK']} "
              f"warps={rep['num_warps']} stages={rep['num_stages']} | regs {rep['n_regs']} "
              f"(plan {rep['plan_registers']}) stack {rep['stack_bytes']} local "
              f"{rep['local_bytes']} | shared {rep['shared']} (plan {rep['plan_shared']})")
        reports.setdefault((rep["cell"], rep["head_dim"], rep["arch"]), []).append(rep)
    return reports


@pytest.fixture(scope="module")
def compiled():
    return _compile(CELL_NAMES, HEAD_DIMS, ARCHS)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
@pytest.mark.parametrize("DH", HEAD_DIMS, ids=lambda d: f"DH{d}")
@pytest.mark.parametrize("cell_name", CELL_NAMES)
def test_kernels_compile_to_cubin(compiled, cell_name, DH, arch):
    """Forward and backward reach a cubin within the target's register and shared-memory
    limits; the persistent (fused-path) forward kernel must not spill.

    Not asserted (reported by ``-s`` instead): spills of the backward and of the split/stepwise
    kernels. Measured 2026-11 (bf16, plan tiles): the stepwise kernels at DH 256 (plan: BH 16,
    2 warps) spill 16-400 B; the sLSTM fused backward at DH 64 on sm_80 spills 16 B.
    """
    reports = compiled[(cell_name, DH, arch)]
    kinds = sorted(rep["kernel"].split("_")[2] for rep in reports)
    assert kinds == ["bwd", "fwd"], reports
    for rep in reports:
        assert rep["stage"] == "cubin"
        assert 0 < rep["n_regs"] <= 255, rep
        assert rep["shared"] <= (227 if arch == 90 else 163) * 1024, rep
        # spills land in the stack frame / local memory
        if rep["path"] == "fused" and rep["kernel"] == "fused_rnn_fwd_kernel":
            assert rep["stack_bytes"] == 0 and rep["local_bytes"] == 0, f"spills: {rep}"


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
def test_split_path_barrier_compiles(arch):
    """The split path's kernels (one launch, per-step barrier on an atomic counter) compile too
    (the plan may not pick them at DH 64/256): LSTM, DH 256 in 16 slices of 16 units, and the
    PTX has the gpu-scope release add and acquire reads the barrier relies on."""
    reports = _compile(["lstm"], [256], [arch], "--force-split")[("lstm", 256, arch)]
    assert sorted(rep["kernel"] for rep in reports) == ["fused_rnn_bwd_kernel_split",
                                                         "fused_rnn_fwd_kernel_split"]
    for rep in reports:
        assert rep["stage"] == "cubin" and rep["path"] == "split" and rep["barrier"], rep
        assert 0 < rep["n_regs"] <= 255, rep
