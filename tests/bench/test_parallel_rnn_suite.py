"""The parallel_rnn suite at tiny sizes on CPU: smoke check, paired timing rows and summary."""
import pytest
import torch

from bench.suites import CorrectnessError, load


def test_parallel_rnn_suite_tiny_cpu(monkeypatch):
    suite = load("parallel_rnn")

    def one_pair(fn, baseline, *, device, min_run_time):  # plumbing only; timing has its tests
        fn()
        baseline()
        return {"ratio": 2.0, "ratio_ci": [1.5, 2.5], "pairs": 1, "fn_ms": 2.0, "baseline_ms": 1.0}

    monkeypatch.setattr(suite, "measure_ratio", one_pair)
    rows = suite.run(torch.device("cpu"), quick=True, progress=lambda x: x)
    assert {r["provider"] for r in rows} == {"flashseq:parallel_rnn", "flashseq:fused_rnn"}
    par = [r for r in rows if r["provider"] == "flashseq:parallel_rnn"]
    assert all(r["status"] == "ok" and r["newton_iterations"] >= 1 and not r["fell_back"]
               for r in par)
    assert suite.summary(rows) == ["fwd: parallel never wins up to T = 32",
                                   f"fwd: speed-up at T = 32: 0.5x (ratio 2, "
                                   f"{par[0]['newton_iterations']} Newton iterations)"]


def test_parallel_rnn_suite_refuses_to_time_a_wrong_kernel(monkeypatch):
    suite = load("parallel_rnn")
    import flashseq.ops
    real = flashseq.ops.parallel_rnn
    monkeypatch.setattr(flashseq.ops, "parallel_rnn",
                        lambda *a, **k: tuple(t * 1.01 for t in real(*a, **k)))
    with pytest.raises(CorrectnessError, match="relative error"):
        suite.smoke_check(torch.device("cpu"))
