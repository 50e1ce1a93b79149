"""The CUDA backward compiles at the plans of sizes the backward's solver newly covers
(flashseq/kernels/fused_rnn/plan_bwd.py): small and odd padded heads on sm_90a where no tiling
wgmma serves fits (the mma.sync fallback, as the forward's), and heads the backward pads wider
than the forward (DHP with more factors of two, so more warps split the rows k); and plans
whose registers the model once under-counted (several owned elements per thread), with a
sample of others (cluster and global exchange, wgmma, BB 8/16/32, odd padded heads).

Each case is compiled from csrc/fused/fused_rnn_bwd.cu with nvcc -Xptxas -v at its GPU's
backward plan (H100 plan for sm_90a, A100 plan for sm_80), capped at the plan's predicted
``registers_per_thread``. Asserted: ptxas's registers <= the prediction, 0 spill bytes, no stack
frame; in the SASS the product the build takes (``cuda_compile.uses_wgmma``: HGMMA and no HMMA,
or HMMA) inside the reversed step loop, no recurrent-weight load and no local memory in it, one
tagged weight load per fragment register in the prologue.
"""
import pytest

from flashseq.kernels.fused_rnn import cuda_build, cuda_compile
from flashseq.kernels.fused_rnn.plan_bwd import plan_fused_rnn_backward

pytestmark = [pytest.mark.nvcc,
              pytest.mark.skipif(cuda_build.find_tool("cuobjdump") is None,
                                 reason="needs cuobjdump (CUDA toolkit or Triton's copy)")]

GPU_OF = {"sm_80": "a100", "sm_90a": "h100"}
# (cell, dtype, DH, batch, heads, arch, wgmma on that arch, the DHP the backward runs at)
CASES = [
    ("elman", "bfloat16", 40, 16, 1, "sm_90a", False, 48),   # no backward plan before
    ("elman", "bfloat16", 40, 16, 1, "sm_80", False, 48),
    ("gru", "tf32", 16, 1, 1, "sm_90a", False, 16),          # tf32 on mma.sync m16n8k8, sm_90a
    ("lstm", "tf32", 208, 64, 4, "sm_90a", True, 224),       # padded wider, wgmma, cluster
    ("lstm", "tf32", 176, 64, 4, "sm_80", False, 192),       # padded wider
    # plans the register model missed before it counted each owned element's offsets and
    # masks (past the first) through the whole step: uncapped ptxas wanted more than predicted
    ("lstm", "bfloat16", 288, 64, 4, "sm_80", False, 288),   # BB16 BH48 8 warps: 230 > 224, spilled
    ("lstm", "bfloat16", 272, 64, 4, "sm_80", False, 288),   # pads to the same plan
    ("gru", "bfloat16", 336, 64, 4, "sm_80", False, 384),    # BB16 BH64: 238 > 232 uncapped
    ("lstm", "tf32", 112, 64, 4, "sm_80", False, 112),       # BB32: 217 > 216, spilled
    ("lstm", "bfloat16", 200, 64, 4, "sm_90a", False, 208),  # BB16 BH16: spilled even at 255
    # a sample of other shapes, within their plans before and after
    ("slstm", "tf32", 208, 64, 4, "sm_90a", True, 224),      # wgmma, cluster of 7
    ("lstm", "bfloat16", 464, 16, 1, "sm_90a", True, 480),   # wgmma, 60 blocks via global memory
    ("elman", "bfloat16", 368, 64, 4, "sm_80", False, 384),  # padded wider, global exchange
]


@pytest.mark.parametrize("cell, dtype, dh, batch, heads, arch, wgmma, dhp", [
    pytest.param(*c, id=f"{c[0]}-{c[1]}-DH{c[2]}-B{c[3]}-NH{c[4]}-{c[5]}") for c in CASES])
def test_newly_covered_backward_compiles_within_its_plan(cell, dtype, dh, batch, heads, arch,
                                                         wgmma, dhp):
    plan = plan_fused_rnn_backward(cell, batch, heads, dh, dtype, GPU_OF[arch])
    assert plan.padded_head_dim == dhp and plan.wgmma == wgmma
    assert cuda_compile.uses_wgmma(arch, plan) == wgmma
    rep = cuda_compile.compile_backward(plan, arch)
    print(f"\n{arch} {cell} {dtype} DH={dh} DHP={dhp} BB={plan.BB} BH={plan.BH} "
          f"W={plan.warps_m}x{plan.warps_n} P={plan.programs_per_head} | regs {rep.registers} "
          f"(plan {plan.registers_per_thread}) | loop {rep.tensor_ops_in_loop}")
    assert rep.defines["FLASHSEQ_DHP"] == str(dhp)
    assert rep.defines["FLASHSEQ_MAX_REGS"] == str(plan.registers_per_thread), rep
    assert 0 < rep.registers <= plan.registers_per_thread, rep
    assert rep.spill_store_bytes == 0 and rep.spill_load_bytes == 0 and rep.stack_bytes == 0, rep
    assert rep.local_memory_ops == 0, rep
    if wgmma:
        assert rep.defines["FLASHSEQ_GMMA"] == "1", rep
        assert rep.tensor_ops_in_loop["HGMMA"] > 0 and rep.tensor_ops_in_loop["HMMA"] == 0, rep
        assert not rep.wgmma_serialized, rep
    else:
        assert rep.defines["FLASHSEQ_GMMA"] == "0", rep
        assert rep.tensor_ops_in_loop["HMMA"] > 0 and rep.tensor_ops_in_loop["HGMMA"] == 0, rep
    assert rep.weight_loads_in_loop == 0 and rep.local_memory_ops_in_loop == 0, rep
    assert rep.weight_loads_total == cuda_compile.expected_backward_weight_loads(plan, arch), rep
