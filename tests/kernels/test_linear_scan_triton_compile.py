"""The Triton linear-recurrence kernels compile for real GPU targets without a GPU.

At K = V = 64 and 128 in bf16, every kernel goes through triton.compile to a cubin for
GPUTarget("cuda", 90, 32) and ("cuda", 80, 32), in a subprocess with TRITON_INTERPRET unset,
with the tiles and warps its launcher uses (chunk kernels: the plan's tiles for an H100 / A100,
whose domains stop at ``plan.MAX_TILES``). Registers, spills (stack / local memory) and shared
memory come from cuobjdump on the cubin (``pytest -s`` prints them). No kernel may spill.

The chunk kernels take about 4 minutes to compile on a shared 2-core machine, so their check is
marked slow (``--runslow``); the recurrent kernels' check runs by default.
"""

import pytest

from tests.cubin_reports import compile_reports

DIMS = (64, 128)
ARCHS = (90, 80)
KERNELS = {
    # the delta rule's kernels twice: n_h = 1 and 2 (DeltaProduct)
    "recurrent": ["delta_recurrent_bwd_kernel_dkv"] * 2 + ["delta_recurrent_bwd_kernel_dq"] * 2
                 + ["delta_recurrent_fwd_kernel"] * 2
                 + ["gla_recurrent_bwd_kernel_dkv", "gla_recurrent_bwd_kernel_dq",
                  "gla_recurrent_fwd_kernel", "mlstm_recurrent_bwd_kernel_dkv",
                  "mlstm_recurrent_bwd_kernel_dq", "mlstm_recurrent_fwd_kernel"],
    "chunk": ["delta_chunk_bwd_kernel_da", "delta_chunk_bwd_kernel_dg",
              "delta_chunk_bwd_kernel_dh", "delta_chunk_bwd_kernel_dp",
              "delta_chunk_bwd_kernel_dqk", "delta_chunk_bwd_kernel_du",
              "delta_chunk_fwd_kernel_h", "delta_chunk_fwd_kernel_o", "delta_chunk_fwd_kernel_wy",
              "gla_chunk_bwd_kernel_dh", "gla_chunk_bwd_kernel_dqk", "gla_chunk_bwd_kernel_dv",
              "gla_chunk_fwd_kernel_cumsum", "gla_chunk_fwd_kernel_h", "gla_chunk_fwd_kernel_o",
              # the mLSTM's dq/dk kernel twice: once for dq, once for dk
              "mlstm_chunk_bwd_kernel_dh", "mlstm_chunk_bwd_kernel_dqk",
              "mlstm_chunk_bwd_kernel_dqk", "mlstm_chunk_bwd_kernel_dv",
              "mlstm_chunk_fwd_kernel_gates", "mlstm_chunk_fwd_kernel_h",
              "mlstm_chunk_fwd_kernel_o"],
}

pytest.importorskip("triton")


def _compile(kind):
    args = ["--kernels", kind]
    for dim in DIMS:
        args += ["--dim", str(dim)]
    for arch in ARCHS:
        args += ["--arch", str(arch)]
    reports = {}
    for rep in compile_reports("flashseq.kernels.linear_scan.triton_compile", args, timeout=3600):
        print(f"{rep['kernel']:30s} NH={rep['NH']} K=V={rep['dim']:3d} sm_{rep['arch']} "
              f"BT={rep['BT']} "
              f"BK={rep['BK']} BV={rep['BV']} warps={rep['num_warps']} | regs {rep['n_regs']} "
              f"stack {rep['stack_bytes']} local {rep['local_bytes']} | shared {rep['shared']}")
        reports.setdefault((rep["dim"], rep["arch"]), []).append(rep)
    return reports


def check_reports(reports, kind, dim, arch):
    reports = reports[(dim, arch)]
    assert sorted(rep["kernel"] for rep in reports) == KERNELS[kind]
    for rep in reports:
        assert rep["stage"] == "cubin" and rep["dtype"] == "bfloat16"
        assert 0 < rep["n_regs"] <= 255, rep
        assert rep["shared"] <= (227 if arch == 90 else 163) * 1024, rep
        assert rep["stack_bytes"] == 0 and rep["local_bytes"] == 0, f"spills: {rep}"


@pytest.fixture(scope="module")
def recurrent_reports():
    return _compile("recurrent")


@pytest.fixture(scope="module")
def chunk_reports():
    return _compile("chunk")


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
@pytest.mark.parametrize("dim", DIMS, ids=lambda d: f"KV{d}")
def test_recurrent_kernels_compile_without_spills(recurrent_reports, dim, arch):
    check_reports(recurrent_reports, "recurrent", dim, arch)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
@pytest.mark.parametrize("dim", DIMS, ids=lambda d: f"KV{d}")
def test_chunk_kernels_compile_without_spills(chunk_reports, dim, arch):
    check_reports(chunk_reports, "chunk", dim, arch)
