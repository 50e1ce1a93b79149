"""The fused_rnn suite's barrier-cost floor row (bench/suites/fused_rnn.py, FLOOR): where the
cuda back end cannot run (this CPU machine, or without the opt-in) it is skipped with the
reason, never timed and never failed; its per-step column is each row's median over T."""
import pytest
import torch

from bench import runner
from bench.suites import fused_rnn as suite
from flashseq.kernels.fused_rnn import cuda, cuda_floor


def test_floor_provider_is_listed_and_skipped_without_a_gpu():
    providers = {p.name: p for p in suite.gpu_providers(torch.device("cpu"), torch.bfloat16)}
    assert suite.FLOOR in providers
    status = providers[suite.FLOOR].status
    assert status.startswith("skipped:") and "CUDA tensors" in status
    assert status == providers["flashseq:cuda"].status  # skipped exactly when the cuda row is


def test_floor_call_refuses_with_the_cuda_backends_reason(monkeypatch):
    with pytest.raises(NotImplementedError, match="CUDA tensors"):
        cuda_floor.barrier_floor_call("lstm", 16, 8, 1, 64, torch.bfloat16, "cpu")
    monkeypatch.delenv(cuda.OPT_IN, raising=False)
    with pytest.raises(NotImplementedError, match=cuda.OPT_IN):
        cuda_floor.barrier_floor_call("lstm", 16, 8, 1, 64, torch.bfloat16, "cuda")


def test_floor_extension_spec_is_the_floor_kernel_per_exchange():
    one = cuda_floor.floor_extension_spec("sm_90a", cluster=True)
    assert [s.rsplit("/", 1)[-1] for s in one.sources] == ["barrier_floor_cuda.cpp", "barrier_floor.cu"]
    assert "-DFLASHSEQ_CLUSTER=1" in one.cuda_cflags
    assert one.key() != cuda_floor.floor_extension_spec("sm_90a", cluster=False).key()
    with pytest.raises(ValueError, match="sm_90"):
        cuda_floor.floor_extension_spec("sm_80", cluster=True)


def test_step_times_and_floor_ratio_columns():
    rows = [{"case": "c", "provider": "flashseq:cuda", "median_ms": 8.0, "status": "ok"},
            {"case": "c", "provider": suite.FLOOR, "median_ms": 2.0, "status": "ok"},
            runner.untimed_row("c", "flashrnn:cuda_fused", "skipped: no flashrnn")]
    runner.add_ratios(rows, suite.FLOOR, column="ratio_floor")
    suite.add_step_times(rows, 1000)
    assert [r["step_us"] for r in rows] == [8.0, 2.0, None]
    assert [r["ratio_floor"] for r in rows] == [4.0, 1.0, None]
    assert all(list(r)[-1] == "status" for r in rows)
