"""The CUDA persistent BACKWARD kernel compiles for sm_80 and sm_90a at the solver's plans, inside
its predicted register budget, with tensor cores in the reversed step loop and the weights on chip.

For every cell x dtype (bf16, fp16, fp32 on tf32: mma.sync m16n8k8, or wgmma m64nNk8 on sm_90a;
its plan the "tf32" one) x DH
in (64, 256, 768), the backward's own plan (``plan_fused_rnn_backward``: the solver's tiles for the
backward) for batch 16, one head (A100 plan for sm_80, H100 plan for sm_90a, whose split heads
meet inside a cluster) is compiled from csrc/fused/fused_rnn_bwd.cu with nvcc -Xptxas -v, capped
at the plan's predicted ``registers_per_thread``. Asserted: registers <= that prediction, 0 spill
bytes and no stack frame (ptxas); in the SASS (cuobjdump) the loop around the tensor-core instructions
holds HMMA (sm_80; sm_90a where wgmma does not serve) or HGMMA and no HMMA (sm_90a where the
plan's warps form whole warpgroups, ``cuda_compile.uses_wgmma``, with no wgmma serialised by
ptxas: warning C7512), no load of the recurrent weights (tagged loads, csrc/fused/device.cuh)
and no local memory, and every tagged load is in the prologue (one per fragment register). Cubins are cached
under $FLASHSEQ_CACHE_DIR keyed by the sources and flags. ``pytest -s`` prints the numbers.
"""
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from flashseq.cells import CELLS
from flashseq.kernels.fused_rnn import cuda_build, cuda_compile
from flashseq.kernels.fused_rnn.plan import plan_fused_rnn
from flashseq.kernels.fused_rnn.plan_bwd import plan_fused_rnn_backward
from tests.kernels.cuda_test_helpers import HEAD_DIMS, TARGETS, compile_cases

pytestmark = [pytest.mark.nvcc,
              pytest.mark.skipif(cuda_build.find_tool("cuobjdump") is None,
                                 reason="needs cuobjdump (CUDA toolkit or Triton's copy)")]

def _plan(cell, dtype, dh, arch):
    return plan_fused_rnn(cell, 16, 1, dh, cuda_compile.plan_dtype(dtype), TARGETS[arch], backend="cuda")


def _bplan(cell, dtype, dh, arch):
    """The backward kernel's plan (the solver's, flashseq/kernels/fused_rnn/plan_bwd.py)."""
    return plan_fused_rnn_backward(cell, 16, 1, dh, cuda_compile.plan_dtype(dtype), TARGETS[arch])


@pytest.fixture(scope="module")
def reports():
    """{(cell, dtype, DH, arch): (plan, CubinReport)}, compiled by a small pool in parallel."""
    def one(case):
        plan = _bplan(*case)
        return case, plan, cuda_compile.compile_backward(plan, case[3])

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        done = list(pool.map(one, compile_cases()))
    print(f"\ncompiled {len(done)} backward kernels in {time.monotonic() - start:.1f} s")
    out = {}
    for case, plan, rep in done:
        print(f"{case[3]:6s} {case[0]:5s} {case[1]:8s} DH={case[2]:3d} BB={plan.BB} BH={plan.BH} "
              f"W={plan.warps_m}x{plan.warps_n} P={plan.programs_per_head} cluster={rep.defines['FLASHSEQ_CLUSTER']} "
              f"| regs {rep.registers} (plan {plan.registers_per_thread}) spills "
              f"{rep.spill_store_bytes}/{rep.spill_load_bytes} | gmma {rep.defines['FLASHSEQ_GMMA']} "
              f"loop {rep.tensor_ops_in_loop} "
              f"weight loads {rep.weight_loads_total} (in loop {rep.weight_loads_in_loop})")
        out[case] = (plan, rep)
    return out


_PARAMS = [pytest.param(*c, id=f"{c[0]}-{c[1]}-DH{c[2]}-{c[3]}") for c in compile_cases()]


@pytest.mark.parametrize("cell, dtype, DH, arch", _PARAMS)
def test_backward_weights_stay_on_chip_in_the_step_loop(reports, cell, dtype, DH, arch):
    plan, rep = reports[(cell, dtype, DH, arch)]
    assert rep.defines["FLASHSEQ_MAX_REGS"] == str(plan.registers_per_thread), rep
    assert 0 < rep.registers <= plan.registers_per_thread, rep
    assert rep.defines["FLASHSEQ_ELEM"] == {"bfloat16": "Bf16", "float16": "Fp16",
                                            "float32": "Fp32"}[dtype]
    if cuda_compile.uses_wgmma(arch, plan):
        assert rep.defines["FLASHSEQ_GMMA"] == "1", rep
        assert rep.tensor_ops_in_loop["HGMMA"] > 0, f"no HGMMA in the step loop: {rep}"
        assert rep.tensor_ops_in_loop["HMMA"] == 0, f"mma.sync left in the wgmma step loop: {rep}"
        assert not rep.wgmma_serialized, f"ptxas serialised the wgmmas (C7512): {rep}"
    else:
        assert rep.defines["FLASHSEQ_GMMA"] == "0", rep
        assert rep.tensor_ops_in_loop["HMMA"] > 0, f"no HMMA in the step loop: {rep}"
    assert rep.weight_loads_in_loop == 0, f"recurrent weights loaded inside the step loop: {rep}"
    assert rep.local_memory_ops_in_loop == 0, f"local memory inside the step loop: {rep}"
    assert rep.weight_loads_total == cuda_compile.expected_backward_weight_loads(plan, arch), rep
    assert rep.defines["FLASHSEQ_CLUSTER"] == str(int(arch == "sm_90a" and plan.cluster_size > 1))


@pytest.mark.parametrize("cell, dtype, DH, arch", _PARAMS)
def test_backward_no_spills_at_its_register_budget(reports, cell, dtype, DH, arch):
    plan, rep = reports[(cell, dtype, DH, arch)]
    assert rep.spill_store_bytes == 0 and rep.spill_load_bytes == 0 and rep.stack_bytes == 0, rep
    assert rep.local_memory_ops == 0, rep


def test_backward_wgmma_serves_every_h100_plan():
    """Not vacuous: every sm_90a backward plan of the list takes the wgmma path (bf16, fp16 and
    float32 on tf32 wgmma m64nNk8), and each plan says which product its build takes."""
    for cell, dtype, dh, arch in compile_cases():
        plan = _bplan(cell, dtype, dh, arch)
        assert cuda_compile.uses_wgmma(arch, plan) == plan.wgmma == (
            arch == "sm_90a" and cuda_compile.wgmma_serves(plan))
        if arch == "sm_90a":
            assert plan.wgmma, (cell, dtype, dh)


def test_backward_register_model_is_at_least_the_weight_fragments():
    """The prediction is a budget a kernel can miss: it never exceeds the hardware's 255 and
    never drops below the weight fragments plus the base registers."""
    for case in compile_cases():
        plan = _bplan(*case)
        assert cuda_compile.expected_backward_weight_loads(plan, case[3]) + 24 <= \
            plan.registers_per_thread <= 255


def test_backward_defines_are_the_backward_plans_tiles():
    """The backward is built at its own plan's tiles and register cap; a forward plan stands for
    the backward plan of its configuration."""
    bplan = _bplan("lstm", "bfloat16", 256, "sm_90a")
    bwd = cuda_compile.backward_defines(bplan)
    assert bwd == cuda_compile.forward_defines(bplan)  # the same -D names, the backward's values
    assert bwd["FLASHSEQ_MAX_REGS"] == str(bplan.registers_per_thread)
    assert cuda_compile.backward_defines(_plan("lstm", "bfloat16", 256, "sm_90a")) == bwd


# ---- the forward's save mode (FLASHSEQ_FWD_SAVE=1, the training build) ----------------------
SAVE_DTYPES = ("bfloat16", "float32")  # fp16 differs from bf16 only in the mma type


def _save_cases():
    return [(cell, dtype, dh, arch) for arch in TARGETS for cell in sorted(CELLS)
            for dtype in SAVE_DTYPES for dh in HEAD_DIMS]


def _save_params():
    return [pytest.param(*c, id=f"{c[0]}-{c[1]}-DH{c[2]}-{c[3]}") for c in _save_cases()]


@pytest.fixture(scope="module")
def save_reports():
    def one(case):
        cell, dtype, dh, arch = case
        plan = _plan(cell, dtype, dh, arch)
        return case, plan, cuda_compile.compile_forward(plan, arch, save=True)

    cases = _save_cases()
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return {case: (plan, rep) for case, plan, rep in pool.map(one, cases)}


@pytest.mark.parametrize("cell, dtype, DH, arch", _save_params())
def test_save_mode_forward_fits_the_forward_plan(save_reports, cell, dtype, DH, arch):
    """The forward that also writes what the backward reads (bf16, fp16 differing only in the
    mma type, and fp32 on tf32) keeps the inference build's budget: registers <= the plan, no
    spills, tensor cores (sm_90a: HGMMA only, not serialised) and no weight load in the step
    loop, every weight load in the prologue."""
    plan, rep = save_reports[(cell, dtype, DH, arch)]
    assert rep.defines["FLASHSEQ_FWD_SAVE"] == "1"
    assert 0 < rep.registers <= plan.registers_per_thread, rep
    assert sum(rep.tensor_ops_in_loop.values()) > 0 and rep.weight_loads_in_loop == 0, rep
    if arch == "sm_90a":
        assert rep.defines["FLASHSEQ_GMMA"] == "1" and rep.tensor_ops_in_loop["HMMA"] == 0, rep
        assert rep.tensor_ops_in_loop["HGMMA"] > 0 and not rep.wgmma_serialized, rep
    assert rep.weight_loads_total == cuda_compile.expected_weight_loads(plan, arch), rep
    assert rep.local_memory_ops_in_loop == 0, rep
    assert rep.spill_store_bytes == 0 and rep.spill_load_bytes == 0 and rep.stack_bytes == 0, rep


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("DH, arch", [(768, "sm_90a"), (64, "sm_80")])
def test_fp32_backward_rounds_each_operand_to_tf32_once(cell, DH, arch):
    """The float32 backward (wgmma m64nNk8 on sm_90a, mma.sync m16n8k8 on sm_80) rounds each
    weight once after its load and each d(rh) value once when stored to shared memory (G per
    owned element), nothing else: the PTX holds exactly weight loads + G * EL roundings."""
    plan = _bplan(cell, "float32", DH, arch)
    assert cuda_compile.uses_wgmma(arch, plan) == (arch == "sm_90a")
    got = cuda_compile.tf32_roundings(
        "fused_rnn_bwd", cuda_compile.backward_defines(plan, gmma=cuda_compile.uses_wgmma(arch, plan)), arch)
    elems = -(-plan.BB * plan.BH // (32 * plan.warps_m * plan.warps_n))
    assert got["weight_loads"] == cuda_compile.expected_backward_weight_loads(plan, arch), got
    assert got["round"] == got["weight_loads"] + CELLS[cell].num_gates * elems, got
    assert got["mma"] > 0, got
