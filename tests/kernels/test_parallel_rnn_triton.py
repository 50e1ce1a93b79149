"""parallel_rnn's Triton scan (interpreter on CPU): scan vs the PyTorch scan, and the whole op vs
the sequential fused_rnn, forward and gradients."""
from __future__ import annotations

import os

import pytest
import torch

from flashseq.kernels.parallel_rnn import ParallelRNNStats, scan_torch, triton_unavailable_reason
from flashseq.ops import parallel_rnn
from tests.helpers import assert_close
from tests.kernels.parallel_rnn_cases import NEWTON_CELLS, STRUCTURES, make_inputs
from tests.kernels.test_parallel_rnn import check_against_sequential

pytestmark = pytest.mark.skipif(triton_unavailable_reason(torch.device("cpu")) is not None
                                and not torch.cuda.is_available(),
                                reason="needs triton with TRITON_INTERPRET=1 or a CUDA device")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# The interpreter runs every program in Python: shapes stay small but cover several chunks
# (BT >= 16), more groups than one program holds (BG = 64 for m <= 2) and every padding of m.
@pytest.mark.parametrize("N, T, m, dtype", [(3, 1, 1, torch.float64), (70, 17, 1, torch.float32),
                                            (5, 33, 2, torch.float64), (2, 17, 5, torch.float32),
                                            (2, 17, 16, torch.float64), (1, 9, 32, torch.float32)],
                         ids=["T1-f64", "m1-many-groups-f32", "m2-f64", "m5-f32", "m16-f64",
                              "m32-f32"])
def test_triton_scan_equals_torch_scan(N, T, m, dtype):
    from flashseq.kernels.parallel_rnn import triton_scan
    g = torch.Generator().manual_seed(N + T + m)
    A = torch.randn(N, T, m, m, generator=g, dtype=torch.float64) * (0.6 / m ** 0.5)
    c = torch.randn(N, T, m, generator=g, dtype=torch.float64)
    x0 = torch.randn(N, m, generator=g, dtype=torch.float64)
    tol = 1e-13 if dtype == torch.float64 else 1e-6
    ref = scan_torch.affine_scan(A, c, x0)
    out = triton_scan.affine_scan(A.to(DEVICE, dtype), c.to(DEVICE, dtype), x0.to(DEVICE, dtype))
    assert_close("x", out, ref, tol)
    out_rev = triton_scan.affine_scan_reverse(A.to(DEVICE, dtype), c.to(DEVICE, dtype))
    assert_close("lam", out_rev, scan_torch.affine_scan_reverse(A, c), tol)


# float64 through the interpreter once (lstm, block) keeps the suite short
INTERPRETER_CASES = [(c, s, torch.float32) for c in NEWTON_CELLS for s in STRUCTURES] + \
    [("lstm", "block", torch.float64)]


@pytest.mark.skipif(DEVICE != "cpu", reason="interpreter comparison; on a GPU test_gpu_* runs")
@pytest.mark.parametrize("cell, structure, dtype", INTERPRETER_CASES,
                         ids=[f"{c}-{s}-{str(d)[6:]}" for c, s, d in INTERPRETER_CASES])
def test_triton_parallel_equals_sequential(cell, structure, dtype):
    stats = check_against_sequential(cell, structure, B=1, T=18, NH=2, DH=2, dtype=dtype,
                                     seed=21, backend="triton")
    assert stats.backend == "triton"


def test_auto_picks_torch_scan_on_cpu():
    stats = ParallelRNNStats()
    parallel_rnn(*make_inputs("elman", "diag", 1, 4, 1, 2, torch.float64, 0), cell="elman",
                 structure="diag", stats=stats)
    assert stats.backend == "reference"


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setitem(os.environ, "TRITON_INTERPRET", "0")
    with pytest.raises(NotImplementedError, match="TRITON_INTERPRET"):
        parallel_rnn(*make_inputs("elman", "diag", 1, 4, 1, 2, torch.float64, 0), cell="elman",
                     structure="diag", backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("cell", NEWTON_CELLS)
def test_gpu_triton_parallel_equals_sequential(cell, structure):
    from tests.kernels.parallel_rnn_cases import outputs_and_grads, sequential
    from tests.helpers import TOLERANCE
    inputs = [t.cuda() for t in make_inputs(cell, structure, 4, 2048, 2, 8, torch.float32, 5)]
    d_h = torch.randn(4, 2048, 2, 8, device="cuda")
    d_last = torch.randn(inputs[3].shape, device="cuda")
    def run(*a):
        return parallel_rnn(*a, cell=cell, structure=structure, backend="triton")
    h, last, grads = outputs_and_grads(run, inputs, d_h, d_last)
    ref = outputs_and_grads(sequential(cell, structure), [t.double() for t in inputs],
                            d_h.double(), d_last.double())
    for name, out, r in zip(("h", "last", "d_wx", "d_r", "d_b", "d_states"), (h, last, *grads),
                            (ref[0], ref[1], *ref[2])):
        assert_close(name, out, r, TOLERANCE[torch.float32])


@pytest.mark.slow  # ~15 s: ptxas for 3 kernels x 4 group sizes x 2 architectures
def test_scan_kernels_compile_for_sm90_and_sm80_without_spills():
    from tests.cubin_reports import compile_reports
    reports = compile_reports("flashseq.kernels.parallel_rnn.triton_compile",
                              ["--m", "1", "--m", "2", "--m", "16", "--m", "32",
                               "--arch", "90", "--arch", "80"], timeout=900)
    assert len(reports) == 3 * 4 * 2
    for r in reports:
        assert r["stage"] == "cubin" and r["local_bytes"] == 0, r
