"""bench.timing: the statistics and the measurement of a trivial function."""
import time

import pytest
import torch

from bench.timing import MIN_RUNS, measure, measure_ratio, summarize


def test_summarize_known_list():
    stats = summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert stats == {"median_ms": 3.0, "min_ms": 1.0, "iqr_ms": 2.0, "runs": 5}


def test_summarize_single_time_has_zero_iqr():
    assert summarize([7.5]) == {"median_ms": 7.5, "min_ms": 7.5, "iqr_ms": 0.0, "runs": 1}


def test_summarize_rejects_empty():
    with pytest.raises(ValueError, match="times_ms"):
        summarize([])


def test_measure_cpu_sleep_is_at_least_its_duration():
    # sleep() never returns early, so 2 ms is a hard lower bound on every run
    stats = measure(lambda: time.sleep(0.002), device="cpu", min_run_time=0.05)
    assert stats["runs"] >= MIN_RUNS
    assert 2.0 <= stats["min_ms"] <= stats["median_ms"]
    assert stats["median_ms"] < 1000.0
    assert stats["iqr_ms"] >= 0.0


def test_measure_cpu_runs_the_function():
    calls = []
    x = torch.randn(64, 64)
    stats = measure(lambda: calls.append(x @ x), device=torch.device("cpu"), min_run_time=0.02)
    assert len(calls) >= stats["runs"] >= MIN_RUNS
    assert 0.0 < stats["min_ms"] <= stats["median_ms"]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"fn": 3, "device": "cpu"}, TypeError, "fn must be callable"),
    ({"fn": lambda: None, "device": "cpu", "min_run_time": 0}, ValueError, "min_run_time"),
    ({"fn": lambda: None, "device": "meta"}, ValueError, "device"),
])
def test_measure_bad_arguments(kwargs, error, match):
    fn = kwargs.pop("fn")
    with pytest.raises(error, match=match):
        measure(fn, **kwargs)


def test_measure_ratio_alternates_and_compares():
    order = []
    slow = lambda: (order.append("fn"), time.sleep(0.006))  # noqa: E731
    fast = lambda: (order.append("base"), time.sleep(0.002))  # noqa: E731
    stats = measure_ratio(slow, fast, device="cpu", min_run_time=0.05)
    assert stats["pairs"] >= MIN_RUNS
    # sleep never returns early, so the ratio is 3 give or take each side's overshoot; on a busy
    # machine the overshoot of one side alone can reach a few ms (seen: 3.21 at load 9), so the
    # upper bound only rules out a swapped or summed ratio (1/3 or 4 and up)
    assert 1.2 < stats["ratio"] < 4.0
    assert stats["fn_ms"] >= 6.0 and stats["baseline_ms"] >= 2.0
    assert order[:4] == ["fn", "base", "fn", "base"]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"fn": 3, "baseline": lambda: None, "device": "cpu"}, TypeError, "callable"),
    ({"fn": lambda: None, "baseline": lambda: None, "device": "cpu", "min_run_time": -1},
     ValueError, "min_run_time"),
    ({"fn": lambda: None, "baseline": lambda: None, "device": "meta"}, ValueError, "device"),
])
def test_measure_ratio_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        measure_ratio(**kwargs)


@pytest.mark.gpu
def test_measure_cuda_matmul():
    x = torch.randn(256, 256, device="cuda")
    stats = measure(lambda: x @ x, device="cuda", min_run_time=0.05)
    assert stats["runs"] >= MIN_RUNS
    assert 0.0 < stats["min_ms"] <= stats["median_ms"] < 100.0
