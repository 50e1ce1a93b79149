"""The plstm suite at tiny sizes on CPU: both providers pass the smoke check and are timed."""
import time

import torch

from bench import runner
from bench.suites import load
from bench.timing import summarize


def test_plstm_suite_tiny_cpu(monkeypatch):
    def measure(fn, *, device, min_run_time):
        start = time.perf_counter()
        fn()
        return summarize([(time.perf_counter() - start) * 1e3])

    monkeypatch.setattr(runner, "measure", measure)
    rows = load("plstm").run(torch.device("cpu"), quick=True, progress=lambda x: x)
    assert {r["provider"] for r in rows} == {"flashseq:plstm_2d", "dense-einsum"}
    assert all(r["status"] == "ok" for r in rows), rows
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}


def test_dense_form_is_skipped_when_too_big():
    suite = load("plstm")
    B, H, X = suite.GPU["B"], suite.GPU["H"], 128
    assert 4 * B * H * (X * X) * (X * X + 2 * X) > suite.DENSE_LIMIT_BYTES
