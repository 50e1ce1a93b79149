"""The Triton fused_rnn kernels compile for real GPU targets without a GPU.

For every cell at DH 64 and 256, the forward and backward kernels the plan picks (H100 plan for
sm_90, A100 plan for sm_80; bf16, batch 16) go through triton.compile to a cubin for
GPUTarget("cuda", 90, 32) and ("cuda", 80, 32). That runs in one subprocess with
TRITON_INTERPRET unset (under the interpreter @triton.jit returns interpreter wrappers that the
compiler cannot take). Registers, spills and shared memory come from cuobjdump on the cubin and
are printed next to the plan's predictions (``pytest -s`` shows them). The persistent (fused
path) kernels' step loops are checked for tensor-core instructions and for loads of the
recurrent weights (test_step_loop_keeps_the_weights_on_chip explains the method).
"""

import pytest

from tests.cubin_reports import compile_reports

from flashseq.cells import CELLS
from flashseq.kernels._triton_compile_common import ptx_step_loop_reads, sass_step_loop

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
              f"{rep['local_bytes']} | shared {rep['shared']} (plan {rep['plan_shared']}) | loop "
              f"{rep['loop_tensor_ops']} reads {rep['loop_reads_from']} "
              f"(SASS {rep['loop_global_reads_sass']}, PTX {rep['loop_global_reads_ptx']})")
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
    PTX has the gpu-scope release add and acquire reads the barrier relies on; their step loops
    run on tensor cores without reading R."""
    reports = _compile(["lstm"], [256], [arch], "--force-split")[("lstm", 256, arch)]
    assert sorted(rep["kernel"] for rep in reports) == ["fused_rnn_bwd_kernel_split",
                                                         "fused_rnn_fwd_kernel_split"]
    for rep in reports:
        assert rep["stage"] == "cubin" and rep["path"] == "split" and rep["barrier"], rep
        assert 0 < rep["n_regs"] <= 255, rep
        # one launch for all steps: the slice's weights stay on chip too (method as in
        # test_step_loop_keeps_the_weights_on_chip; h comes through global memory)
        assert sum(rep["loop_tensor_ops"].values()) > 0, rep
        assert "R" in rep["reads_from"] and "R" not in rep["loop_reads_from"], rep
        assert rep["loop_global_reads_sass"] == rep["loop_global_reads_ptx"], rep


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
@pytest.mark.parametrize("DH", HEAD_DIMS, ids=lambda d: f"DH{d}")
@pytest.mark.parametrize("cell_name", CELL_NAMES)
def test_step_loop_keeps_the_weights_on_chip(compiled, cell_name, DH, arch):
    """The persistent kernels (fused path, forward and backward) run their step loop on tensor
    cores and never read the recurrent weights R from global memory inside it.

    Method (flashseq/kernels/_triton_compile_common.py, ``step_loop_report``):
    1. SASS (cuobjdump): the step loop is the range from a backward branch's target to the
       branch that holds tensor-core instructions; it must contain HMMA or HGMMA (Triton emits
       HMMA on sm_90 too for these tiles: a dot of BB = 16 rows is below wgmma's 64).
    2. PTX (the same compile): the loop between a label and the branch back to it around the
       mma; each global read in it (ld.global, cp.async from global) is traced back through the
       registers its address is computed from to the kernel parameters (flow-insensitive union
       over every definition, so a read reported free of R cannot derive from R). None may
       derive from R, every one must derive from some pointer argument, and R must show up
       among the kernel's reads outside the loop (the tracing does see the weight loads).
    3. SASS and PTX agree on the number of global reads (LDG, LDGSTS, UTMALDG vs ld.global,
       cp.async) in the loop, so ptxas added none (e.g. re-loading weights it had evicted).
    """
    for rep in compiled[(cell_name, DH, arch)]:
        if rep["path"] != "fused":
            continue  # stepwise: one launch per step, the weights are reloaded by design
        name = rep["kernel"]
        assert rep["step_loops_sass"] >= 1 and rep["step_loops_ptx"] >= 1, f"no step loop: {rep}"
        ops = rep["loop_tensor_ops"]
        if arch == 80:
            assert ops["HMMA"] > 0, f"{name}: no HMMA in the step loop: {rep}"
        else:
            assert ops["HMMA"] + ops["HGMMA"] > 0, f"{name}: no tensor cores in the step loop: {rep}"
        assert "R" in rep["reads_from"], f"{name}: the weight loads were not found at all: {rep}"
        assert "R" not in rep["loop_reads_from"], f"{name}: R read inside the step loop: {rep}"
        assert "?" not in rep["loop_reads_from"], f"{name}: an unattributed read in the loop: {rep}"
        assert rep["loop_global_reads_sass"] == rep["loop_global_reads_ptx"], rep


# ---- the reading itself, on hand-made listings (no compiler needed) ----------------------------
_PTX_LOOP = """
.visible .entry k(
	.param .u64 .ptr .global .align 1 k_param_0,
	.param .u64 .ptr .global .align 1 k_param_1
)
{
	ld.param.b64 	%rd1, [k_param_0];
	ld.param.b64 	%rd2, [k_param_1];
	add.s64 	%rd3, %rd2, 64;
	ld.global.b32 	%r1, [%rd3];
$L__BB0_1:
	mad.wide.s32 	%rd4, %r2, 2, %rd1;
	@%p1 ld.global.b16 { %rs1 }, [ %rd4 + 0 ];
	mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 { %r3 }, { %r1 }, { %r4 }, { %r3 };
	mov.b64 	%rd5, %rd6;
	ld.global.b32 	%r5, [%rd5];
	@%p2 bra 	$L__BB0_1;
	add.s64 	%rd6, %rd3, 128;
	ret;
}
"""


def test_ptx_reading_traces_loop_reads_to_their_parameter():
    """The check can fail: a read in the loop whose address comes (through a register defined
    after the loop, i.e. on the back edge) from param 1 is attributed to it; one from param 0
    is not; a read before the loop is outside it."""
    got = ptx_step_loop_reads(_PTX_LOOP)
    assert got["step_loops"] == 1
    assert got["loop_reads"] == [[0], [1]]
    assert got["reads"] == [[1], [0], [1]]
    # the branch now goes forward, to a label after it: no loop
    no_loop = ptx_step_loop_reads(_PTX_LOOP.replace("$L__BB0_1:\n", "").replace(
        "\tret;", "$L__BB0_1:\n\tret;"))
    assert no_loop["step_loops"] == 0 and no_loop["loop_reads"] == []


def test_sass_reading_counts_loop_reads():
    """LDG/LDGSTS inside the loop around HMMA count as loop reads, an LDG before it does not."""
    sass = """
        /*0010*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0020*/                   LDGSTS.E [R3], desc[UR4][R6.64] ;
        /*0030*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;
        /*0040*/                   LDG.E.U16 R9, desc[UR4][R2.64+0x40] ;
        /*0050*/              @P0 BRA 0x20 ;
        /*0060*/                   EXIT ;
"""
    got = sass_step_loop(sass)
    assert got["global_reads_in_loop"] == 2 and got["global_reads"] == 3
    assert got["tensor_ops_in_loop"]["HMMA"] == 1 and got["step_loops"] == 1
