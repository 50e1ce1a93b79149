"""The Triton extras kernels (triton_extras_fwd/_bwd: dropconnect is applied before the launch;
lengths, variational dropout, zoneout, reset and every step's states inside the step loop; the
LayerNorm cells) compile for a real GPU target without a GPU, and do not spill. Same method as
test_fused_rnn_triton_compile.py: one subprocess with TRITON_INTERPRET unset, resources from
cuobjdump on the cubin (``pytest -s`` prints them), at the launch the extras use
(``triton_extras.extras_launch``: 8 warps, 16 for the light forwards, 1 stage, and a few
measured overrides: a register cap or 3 stages).

Measured before that launch and the kernels' slimmer live state (2026-12, bf16, DH 64, sm_90,
plan warps: 8 forward, 16 backward), stack bytes forward/backward: lstm 8/56, gru 0/8, slstm
24/168, layernorm_lstm 136/448, layernorm_gru 24/232.
"""
import pytest

from tests.cubin_reports import compile_reports

pytest.importorskip("triton")

CELL_NAMES = ("lstm", "gru", "slstm", "elman", "layernorm_lstm", "layernorm_gru")
# the padded head sizes the persistent kernel serves (elman up to 128; others up to 64)
HEAD_DIMS = (16, 32, 64, 128)
ARCHS = (80, 90)
DTYPES = ("bfloat16", "float16", "float32")
KERNELS = ["fused_rnn_bwd_extras_kernel", "fused_rnn_fwd_extras_kernel"]
# Spills left (2026-12, the ptxas triton 3.7 ships), bytes of stack: (cell, DH, arch, dtype,
# kernel) -> the most allowed. The backward of the LayerNorm LSTM at DH 64 on sm_90, bf16/fp16:
# 8 B at 8 warps (16 warps: 216 B and more; 2 or 3 stages: 16 B and more); every other served
# kernel: none.
RESIDUAL_STACK = {("layernorm_lstm", 64, 90, dtype, "fused_rnn_bwd_extras_kernel"): 8
                  for dtype in ("bfloat16", "float16")}


def _compile(cells, head_dims, arch, dtype) -> list[dict]:
    args = ["--extras", "--dtype", dtype, "--arch", str(arch)]
    for dh in head_dims:
        args += ["--head-dim", str(dh)]
    for name in cells:
        args += ["--cell", name]
    reports = compile_reports("flashseq.kernels.fused_rnn.triton_compile", args, timeout=3600)
    for rep in reports:
        if rep.get("skipped"):
            continue
        print(f"{rep['kernel']:28s} {rep['cell']:15s} DH={rep['head_dim']:3d} sm_{rep['arch']} "
              f"{rep['dtype']:8s} warps={rep['num_warps']} maxnreg={rep['maxnreg']} | regs "
              f"{rep['n_regs']} stack {rep['stack_bytes']} local {rep['local_bytes']} | shared "
              f"{rep['shared']}")
    return reports


def _served(cell_name, head_dim, arch, dtype) -> bool:
    import torch

    from flashseq.cells import get_cell
    from flashseq.kernels.fused_rnn.plan import plan_fused_rnn
    from flashseq.kernels.fused_rnn.triton_extras import base_cell_name
    plan = plan_fused_rnn(get_cell(base_cell_name(cell_name)), 16, 1, head_dim,
                          getattr(torch, dtype), "h100" if arch >= 90 else "a100", "triton", None)
    return plan.path == "fused"


def _check(reports, cells, head_dims, arch, dtype):
    compiled = {}
    for rep in reports:
        if not rep.get("skipped"):
            compiled.setdefault((rep["cell"], rep["head_dim"]), []).append(rep)
    # every served combination compiled; the rest were reported as skipped
    assert sorted(compiled) == sorted((c, d) for c in cells for d in head_dims
                                      if _served(c, d, arch, dtype))
    assert compiled, "nothing compiled"
    for key, got in compiled.items():
        assert sorted(rep["kernel"] for rep in got) == KERNELS, key
        for rep in got:
            assert rep["stage"] == "cubin" and rep["path"] == "fused", rep
            assert 0 < rep["n_regs"] <= 255 and rep["shared"] <= 227 * 1024, rep
            assert "R" in rep["reads_from"] and "R" not in rep["loop_reads_from"], rep
            # spills land in the stack frame / local memory
            allowed = RESIDUAL_STACK.get((*key, arch, dtype, rep["kernel"]), 0)
            assert rep["stack_bytes"] <= allowed and rep["local_bytes"] == 0, f"spills: {rep}"


def test_extras_kernels_do_not_spill():
    """Every extra on, bf16, DH 64, sm_90 (H100 plan), the cells that spilled before (see the
    module docstring): forward and backward reach a cubin with no spills (the LayerNorm LSTM
    backward: at most the 8 B of ``RESIDUAL_STACK``), within the register and shared-memory
    limits, and keep R out of the step loop."""
    cells = ("lstm", "slstm", "layernorm_lstm", "layernorm_gru")
    _check(_compile(cells, (64,), 90, "bfloat16"), cells, (64,), 90, "bfloat16")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
def test_extras_kernels_do_not_spill_anywhere(arch, dtype):
    """Every cell and every head size the persistent kernel serves (DH 16/32/64, elman also
    128; float32 serves fewer) on sm_80 and sm_90: no spills beyond ``RESIDUAL_STACK`` (about
    2-4 minutes each without a warm Triton cache)."""
    _check(_compile(CELL_NAMES, HEAD_DIMS, arch, dtype), CELL_NAMES, HEAD_DIMS, arch, dtype)
