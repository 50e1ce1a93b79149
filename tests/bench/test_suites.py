"""The suite registry, the smoke checks and the quick/fused_rnn suites at tiny sizes on CPU."""
import importlib
import json
import time

import pytest
import torch

import flashseq.ops
from bench import runner, smoke
from bench.__main__ import main
from bench.progress import make_progress
from bench.rnn_workloads import LSTMWorkload, fused_rnn_call, make_tensors, torch_lstm_call
from bench.suites import SUITES, load
from bench.timing import summarize

REQUIRED = ("case", "provider", "median_ms", "min_ms", "iqr_ms", "status")
CPU = torch.device("cpu")


@pytest.fixture
def one_run_timing(monkeypatch):
    """Time each provider by a single call: these tests check the suites' plumbing on a shared
    CPU; bench.timing's statistics are tested in test_timing.py."""
    def measure(fn, *, device, min_run_time):
        start = time.perf_counter()
        fn()
        return summarize([(time.perf_counter() - start) * 1e3])

    monkeypatch.setattr(runner, "measure", measure)


def test_registry_names_our_suites():
    assert SUITES["quick"] == "bench.suites.quick"
    assert SUITES["fused_rnn"] == "bench.suites.fused_rnn"
    with pytest.raises(ValueError, match="allowed"):
        load("nope")


@pytest.mark.parametrize("name", sorted(SUITES))
def test_registered_suite_has_the_interface(name):
    if importlib.util.find_spec(SUITES[name]) is None:
        pytest.skip(f"{SUITES[name]} is registered but not written yet")
    module = load(name)
    assert isinstance(module.DESCRIPTION, str) and module.DESCRIPTION
    assert callable(module.run)


def test_lstm_mapping_matches_torch():
    assert smoke.check_lstm_mapping() is None


def test_headwise_workload_runs_forward_and_backward():
    w = LSTMWorkload(B=2, T=3, I=8, H=8, NH=2, mode="fwd+bwd", dtype=torch.float64, device=CPU)
    t = make_tensors(w)
    grads = fused_rnn_call(w, t, "reference")()
    assert [tuple(g.shape) for g in grads] == [(2, 3, 8), (32, 8), (32,), (4, 2, 4, 4), (4, 2, 4)]
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    with pytest.raises(NotImplementedError, match="head-wise"):
        torch_lstm_call(w, t)


def test_smoke_check_passes_reference():
    assert smoke.check_fused_rnn("reference", CPU, torch.float32, NH=1, DH=8) is None


def test_smoke_check_catches_a_wrong_kernel(monkeypatch):
    real = flashseq.ops.fused_rnn

    def off_by_a_little(*args, **kwargs):
        h, last = real(*args, **kwargs)
        return h * 1.001, last

    monkeypatch.setattr(flashseq.ops, "fused_rnn", off_by_a_little)
    message = smoke.check_fused_rnn("reference", CPU, torch.float32, NH=1, DH=8)
    assert message is not None and "h rel err" in message and "grad wx" in message


def test_smoke_check_catches_nan():
    assert smoke.rel_err(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0])) == float("inf")


def _check_rows(rows):
    for r in rows:
        for key in REQUIRED:
            assert key in r, (r.get("provider"), key)
        timed = r["status"] == "ok"
        assert (r["median_ms"] is not None) == timed
    return {r["provider"]: r for r in rows}


def test_quick_suite_tiny_on_cpu(one_run_timing):
    rows = load("quick").run(CPU, True, make_progress(False, "quick"))
    assert len(rows) == 2 * 5  # fwd and fwd+bwd x (four back ends + torch.nn.LSTM)
    by = _check_rows(rows)
    assert by["flashseq:reference"]["status"] == "ok"
    assert by["torch.nn.LSTM"]["status"] == "ok" and by["torch.nn.LSTM"]["ratio"] == 1.0
    assert by["flashseq:reference"]["ratio"] > 0
    for name in set(flashseq.ops.available_backends(CPU)) - {"triton"}:
        assert by[f"flashseq:{name}"]["status"] == "ok", by[f"flashseq:{name}"]
    assert by["flashseq:triton"]["status"].startswith("skipped: ")  # CPU: interpreter or absent
    for name in {"reference", "cpu", "triton", "cuda"} - set(flashseq.ops.available_backends(CPU)):
        assert by[f"flashseq:{name}"]["status"].startswith("skipped: ")


def test_fused_rnn_suite_tiny_on_cpu(one_run_timing):
    rows = load("fused_rnn").run(CPU, True, make_progress(False, "fused_rnn"))
    by = _check_rows(rows)
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    assert set(by) == {"flashseq:cpu", "flashseq:reference", "flashseq.LSTM:cpu", "torch.nn.LSTM"}
    assert by["flashseq:reference"]["status"] == "ok"
    assert not [r for r in rows if r["status"].startswith("failed")], rows


def test_main_refuses_to_time_a_wrong_kernel(one_run_timing, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(smoke, "check_fused_rnn", lambda *a, **k: "h rel err 1.0e-01 > 1e-05")
    out = tmp_path / "quick.json"
    assert main(["quick", "--tiny", "--no-progress", "--json", str(out)]) == 1
    rows = json.loads(out.read_text())["rows"]
    ref = [r for r in rows if r["provider"] == "flashseq:reference"]
    assert ref and all(r["status"].startswith("failed: smoke check") and r["median_ms"] is None
                       for r in ref)
    assert "failed" in capsys.readouterr().err


def test_main_writes_json_md_and_skips_png_without_matplotlib(one_run_timing, tmp_path, capsys):
    paths = {ext: tmp_path / f"q.{ext}" for ext in ("json", "md", "png")}
    code = main(["quick", "--tiny", "--no-progress", *[a for ext, p in paths.items()
                                                         for a in (f"--{ext}", str(p))]])
    assert code == 0
    result = json.loads(paths["json"].read_text())
    assert result["suite"] == "quick" and result["rows"]
    assert "| case | provider |" in paths["md"].read_text()
    if importlib.util.find_spec("matplotlib") is None:
        assert not paths["png"].exists()
        assert "matplotlib is not installed" in capsys.readouterr().out
    else:
        assert paths["png"].stat().st_size > 0


def test_main_without_suite_lists_suites(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "quick" in out and "fused_rnn" in out
    assert main(["--list-names"]) == 0
    assert capsys.readouterr().out.split() == list(SUITES)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["quick", "fused_rnn"])
def test_suites_tiny_on_cuda(one_run_timing, name):
    rows = load(name).run(torch.device("cuda"), True, make_progress(False, name))
    _check_rows(rows)
    assert not [r for r in rows if r["status"].startswith("failed")], rows
    assert any(r["provider"].startswith("flashseq:") and r["status"] == "ok" for r in rows)
