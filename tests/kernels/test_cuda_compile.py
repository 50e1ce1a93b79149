"""The CUDA persistent kernels compile for sm_80 and sm_90a at the solver's plans, inside the
plan's register budget, with tensor cores in the step loop and the weights on chip.

For every cell x dtype (bf16, fp16, fp32) x DH in (64, 256, 768), the plan for batch 16, one
head (A100 plan for sm_80, H100 plan for sm_90a, whose split heads exchange h inside a cluster;
fp32 inputs are planned as tf32, the tensor-core type their product runs on) is compiled with
nvcc -Xptxas -v, capped at the plan's predicted registers per thread. Asserted: registers <= the
plan's prediction; in the SASS (cuobjdump) the loop around the tensor-core instructions holds
HMMA on sm_80 (mma.sync; tf32 m16n8k8 for fp32) and, on sm_90a, HGMMA and no HMMA for every
dtype (wgmma, tf32 m64nNk8 for fp32: the whole product is on the warpgroup path), no load of
the recurrent weights (their loads carry a tag no other load has,
csrc/fused/device.cuh) and no local memory, and every tagged load is in the prologue (one per
fragment register); ptxas reports 0 spill bytes and no stack frame. On sm_90a the weights stay
in registers (wgmma's A operand) and h is read from shared memory (B, through a matrix
descriptor), so "on chip" is the same proof on both targets.
Cubins are cached under $FLASHSEQ_CACHE_DIR keyed by the sources and flags, so a rerun with
unchanged sources compiles nothing. ``pytest -s`` prints each kernel's numbers.
"""
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from flashseq.kernels.fused_rnn import cuda_build, cuda_compile
from flashseq.kernels.fused_rnn.plan import plan_fused_rnn
from tests.kernels.cuda_test_helpers import TARGETS, compile_cases

pytestmark = [pytest.mark.nvcc,
              pytest.mark.skipif(cuda_build.find_tool("cuobjdump") is None,
                                 reason="needs cuobjdump (CUDA toolkit or Triton's copy)")]

def _params():
    return [pytest.param(cell, dtype, dh, arch, id=f"{cell}-{dtype}-DH{dh}-{arch}")
            for cell, dtype, dh, arch in compile_cases()]


@pytest.fixture(scope="module")
def reports():
    """{(cell, dtype, DH, arch): (plan, CubinReport)}, compiled by a small pool in parallel."""
    def one(case):
        cell, dtype, dh, arch = case
        plan = plan_fused_rnn(cell, 16, 1, dh, cuda_compile.plan_dtype(dtype), TARGETS[arch],
                              backend="cuda")
        return case, plan, cuda_compile.compile_forward(plan, arch)

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        done = list(pool.map(one, compile_cases()))
    print(f"\ncompiled {len(done)} kernels in {time.monotonic() - start:.1f} s (cached cubins "
          "compile nothing)")
    out = {}
    for case, plan, rep in done:
        print(f"{case[3]:6s} {case[0]:5s} {case[1]:8s} DH={case[2]:3d} BB={plan.BB} BH={plan.BH} "
              f"WMxWK={plan.warps_m}x{plan.warps_n} P={plan.programs_per_head} "
              f"cluster={plan.cluster_size} | regs {rep.registers} (plan {plan.registers_per_thread}) "
              f"spills {rep.spill_store_bytes}/{rep.spill_load_bytes} | loop {rep.tensor_ops_in_loop} "
              f"weight loads {rep.weight_loads_total} (in loop {rep.weight_loads_in_loop}) | "
              f"wgmma {rep.defines['FLASHSEQ_GMMA']} serialized {list(rep.wgmma_serialized)} | "
              f"nvcc {rep.compile_s} s")
        out[case] = (plan, rep)
    return out


@pytest.mark.parametrize("cell, dtype, DH, arch", _params())
def test_weights_stay_on_chip_in_the_step_loop(reports, cell, dtype, DH, arch):
    """Tensor cores in the step loop (HMMA on sm_80; on sm_90a, bf16, fp16 and fp32 on tf32,
    HGMMA, no HMMA, and ptxas does not serialise the wgmmas for lack of registers, its warning
    C7512), no weight load and no local memory in it, every weight load in the prologue,
    registers within the plan's prediction."""
    plan, rep = reports[(cell, dtype, DH, arch)]
    assert 0 < rep.registers <= plan.registers_per_thread, rep
    assert rep.local_memory_ops_in_loop == 0, f"spills inside the step loop: {rep}"
    assert rep.defines["FLASHSEQ_ELEM"] == {"bfloat16": "Bf16", "float16": "Fp16",
                                            "float32": "Fp32"}[dtype]
    if arch == "sm_90a":
        assert cuda_compile.uses_wgmma(arch, plan), plan  # every plan of the list: whole warpgroups
        assert rep.defines["FLASHSEQ_GMMA"] == "1", rep
        assert rep.tensor_ops_in_loop["HGMMA"] > 0, f"no HGMMA in the step loop: {rep}"
        assert rep.tensor_ops_in_loop["HMMA"] == 0, f"mma.sync left in the sm_90a loop: {rep}"
        assert not rep.wgmma_serialized, f"ptxas serialises the wgmmas (C7512): {rep}"
    else:  # sm_80: mma.sync (fp32: tf32 m16n8k8)
        assert rep.defines["FLASHSEQ_GMMA"] == "0", rep
        assert rep.tensor_ops_in_loop["HMMA"] > 0, f"no HMMA in the step loop: {rep}"
    assert rep.weight_loads_in_loop == 0, f"recurrent weights loaded inside the step loop: {rep}"
    assert rep.weight_loads_total == cuda_compile.expected_weight_loads(plan, arch), rep
    if arch == "sm_90a" and plan.cluster_size > 1:
        assert rep.defines["FLASHSEQ_CLUSTER"] == "1"


@pytest.mark.parametrize("cell, dtype, DH, arch", _params())
def test_no_spills_at_the_plan_register_budget(reports, cell, dtype, DH, arch):
    """ptxas: 0 spill bytes and no stack frame anywhere in the kernel."""
    plan, rep = reports[(cell, dtype, DH, arch)]
    assert rep.spill_store_bytes == 0 and rep.spill_load_bytes == 0 and rep.stack_bytes == 0, rep
    assert rep.local_memory_ops == 0, rep


# ---- the barrier-cost floor (csrc/fused/barrier_floor.cu) ----------------------------------------
@pytest.mark.parametrize("arch, cluster", [("sm_80", False), ("sm_90a", False), ("sm_90a", True)])
def test_barrier_floor_is_the_step_loop_barriers_without_work(arch, cluster):
    """The empty persistent loop the benchmark measures the forward against: no spills, and its
    step loop holds the forward's barriers (two block barriers; the head's cluster barrier, or
    the flag barrier's release add and acquire poll) and nothing of the work (no tensor core,
    no shared or local memory)."""
    rep, ops = cuda_compile.compile_barrier_floor(arch, cluster)
    print(f"\nbarrier floor {arch} cluster={int(cluster)}: regs {rep.registers} | loop {ops}")
    assert rep.spill_store_bytes == 0 and rep.stack_bytes == 0 and rep.local_memory_ops == 0, rep
    assert ops["block_barrier"] >= 2, ops
    if cluster:
        assert ops["cluster_arrive"] == 1 and ops["cluster_wait"] == 1 and ops["flag_add"] == 0, ops
    else:
        assert ops["flag_add"] == 1 and ops["flag_poll"] >= 1 and ops["cluster_arrive"] == 0, ops
    assert ops["tensor"] == 0 and ops["shared_memory"] == 0 and ops["local_memory"] == 0, ops


def test_floor_sass_reading_finds_the_barriers():
    """The floor check can fail: a listing without the cluster barrier or with an HMMA in the
    loop is seen as such."""
    listing = """
        /*0010*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0020*/                   UCGABAR_ARV ;
        /*0030*/                   UCGABAR_WAIT ;
        /*0040*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0050*/              @P0 BRA 0x10 ;
        /*0060*/                   EXIT ;
"""
    ops = cuda_compile.analyse_floor_sass(listing)
    assert ops["block_barrier"] == 2 and ops["cluster_arrive"] == 1 and ops["tensor"] == 0
    worse = cuda_compile.analyse_floor_sass(listing.replace("UCGABAR_ARV", "HMMA.16816.F32.BF16 R8, R12, R16, R8"))
    assert worse["cluster_arrive"] == 0 and worse["tensor"] == 1


# ---- the SASS reading itself, on hand-made listings -------------------------------------------
_LOOP_WITH_WEIGHT_LOAD = """
        /*0010*/                   LDG.E.NA.CONSTANT R4, [R2.64] ;
        /*0020*/                   LDG.E.EF.U16 R5, [R6.64] ;
        /*0030*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;
        /*0040*/                   LDG.E.NA.CONSTANT R9, [R2.64+0x40] ;
        /*0050*/              @P0 BRA 0x20 ;
        /*0060*/                   EXIT ;
"""


def test_sass_reading_finds_weight_loads_in_the_loop():
    """The check can fail: a tagged load between a loop's start and its backward branch counts
    as in the loop, one before it does not; HMMA in the loop is seen."""
    found = cuda_compile.analyse_sass(_LOOP_WITH_WEIGHT_LOAD)
    assert found["weight_loads_total"] == 2 and found["weight_loads_in_loop"] == 1
    assert found["tensor_ops_in_loop"]["HMMA"] == 1
    no_loop = cuda_compile.analyse_sass(_LOOP_WITH_WEIGHT_LOAD.replace("@P0 BRA 0x20", "@P0 BRA 0x60"))
    assert no_loop["weight_loads_in_loop"] == 0 and no_loop["tensor_ops_in_loop"]["HMMA"] == 0


# ---- tf32: every operand rounded once (the PTX's cvt.rna.tf32.f32) -----------------------------
@pytest.mark.parametrize("cell", ["elman", "gru", "lstm", "slstm"])
@pytest.mark.parametrize("DH, arch", [(768, "sm_90a"), (64, "sm_80")])
def test_fp32_forward_rounds_each_operand_to_tf32_once(cell, DH, arch):
    """The float32 forward (wgmma m64nNk8 on sm_90a, mma.sync m16n8k8 on sm_80) rounds each
    weight once after its load and each h value once when stored to shared memory (the h_0
    copy's loop, and each of the thread's EL elements per step), nothing else: the PTX holds
    exactly weight loads + 1 + EL roundings, beside tensor-core instructions of its path."""
    plan = plan_fused_rnn(cell, 16, 1, DH, "tf32", TARGETS[arch], backend="cuda")
    wgmma = cuda_compile.uses_wgmma(arch, plan)
    assert wgmma == (arch == "sm_90a")
    got = cuda_compile.tf32_roundings("fused_rnn_fwd", cuda_compile.forward_defines(plan, gmma=wgmma), arch)
    elems = -(-plan.BB * plan.BH // (32 * plan.warps_m * plan.warps_n))
    assert got["weight_loads"] == cuda_compile.expected_weight_loads(plan, arch), got
    assert got["round"] == got["weight_loads"] + 1 + elems, got
    assert got["mma"] > 0, got
