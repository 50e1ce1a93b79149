"""The beyond suite at tiny sizes on CPU: every feature's fused call passes the check against the
user's loop fed the same masks, every (feature, mode) row is timed and names its back end, and
a loop that computes something else stops the suite before anything is timed."""
import pytest
import torch

from bench import timing
from bench.suites import CorrectnessError, load


def one_pair(fn, baseline, *, device, min_run_time, cpu_time=False):
    fn()
    baseline()
    return {"ratio": 1.0, "ratio_iqr": 0.0, "pairs": 1, "fn_ms": 1.0, "baseline_ms": 1.0}


def test_beyond_suite_tiny_cpu(monkeypatch):
    monkeypatch.setattr(timing, "measure_ratio", one_pair)
    suite = load("beyond")
    rows = suite.run(torch.device("cpu"), quick=True, progress=lambda x: x)
    assert [(r["feature"], r["mode"]) for r in rows] == [
        (f, m) for f in suite.FEATURES for m in suite.MODES]
    assert all(r["status"] == "ok" for r in rows), rows
    assert all(r["backend"] in ("reference", "cpu", "triton") for r in rows), rows
    assert "dropconnect -> " in suite.summary(rows)[0]


def test_a_loop_with_other_math_is_refused(monkeypatch):
    suite = load("beyond")
    right = suite.loop_masks

    def wrong(*args, **kwargs):  # the loop's zoneout keeps where the fused call updates
        masks = right(*args, **kwargs)
        return {k: ~v if k == "zone" else v for k, v in masks.items()}

    monkeypatch.setattr(suite, "loop_masks", wrong)
    with pytest.raises(CorrectnessError, match="zoneout"):
        suite.run(torch.device("cpu"), quick=True, progress=lambda x: x)


@pytest.mark.parametrize("feature", ["dropconnect", "variational", "layernorm_gru"])
def test_masks_from_the_generator_match(feature):
    """The check itself: the fused call and the loop agree when fed one generator seed."""
    assert load("beyond").check_feature(feature, torch.device("cpu")) is None
