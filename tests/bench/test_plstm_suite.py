"""The plstm suite at tiny sizes on CPU: both providers pass the smoke check and are timed."""
import time
import warnings

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


def test_triton_provider_passes_the_smoke_check_in_the_interpreter():
    """The CUDA-only Triton provider runs ``backend="triton"`` and matches plstm_dag (here on
    CPU through TRITON_INTERPRET=1, set by tests/conftest.py)."""
    suite = load("plstm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no fallback to the PyTorch form
        assert suite.smoke_status(suite.TRITON, torch.device("cpu"), torch.float32) is None
