"""Timing one callable: warm-up, then many runs; median, min and inter-quartile range in ms.

CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` at torch's current thread count (its
default of one thread would make every CPU comparison a single-core one).
CUDA: ``triton.testing.do_bench`` (which flushes L2 between runs) when triton imports, else CUDA
events around each call.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import torch

# Enough runs that the IQR means something even for calls of a second or more.
MIN_RUNS = 5
# A call so slow (or a machine so busy) that MIN_RUNS would take longer than this gets fewer
# runs, but never fewer than FEW_RUNS: a suite must finish in bounded time.
MAX_RUN_TIME_S = 30.0
FEW_RUNS = 3


def summarize(times_ms: list[float]) -> dict:
    """median_ms, min_ms, iqr_ms (75th - 25th percentile) and runs of a list of times in ms."""
    if not times_ms:
        raise ValueError("times_ms must hold at least one time; got an empty list")
    ordered = sorted(float(t) for t in times_ms)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median_ms": statistics.median(ordered),
        "min_ms": ordered[0],
        "iqr_ms": q3 - q1,
        "runs": len(ordered),
    }


def _measure_cpu(fn: Callable[[], object], min_run_time: float) -> dict:
    from torch.utils.benchmark import Timer

    start = time.perf_counter()
    fn()  # warm-up: first-call allocations, lazy builds, caches
    estimate = time.perf_counter() - start
    # A slow call gets a longer budget so that at least MIN_RUNS of it are timed.
    budget = min(max(min_run_time, MIN_RUNS * estimate * 1.2), max(min_run_time, MAX_RUN_TIME_S))
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    start = time.perf_counter()
    measurement = timer.blocked_autorange(min_run_time=budget)
    times = list(measurement.times)
    # a run slowed down by a busy machine can eat the budget: top up to MIN_RUNS, time allowing
    while len(times) < FEW_RUNS or (len(times) < MIN_RUNS
                                    and time.perf_counter() - start < MAX_RUN_TIME_S):
        times.append(timer.timeit(measurement.number_per_run).times[0])
    return summarize([t * 1e3 for t in times])


def _measure_cuda(fn: Callable[[], object], min_run_time: float) -> dict:
    rep_ms = max(1.0, min_run_time * 1e3)
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        times = do_bench(fn, warmup=max(1, int(rep_ms / 4)), rep=int(rep_ms), return_mode="all")
        return summarize(list(times))
    fn()
    torch.cuda.synchronize()
    times, deadline = [], time.perf_counter() + min_run_time
    while len(times) < MIN_RUNS or time.perf_counter() < deadline:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return summarize(times)


def median_interval(values: list[float]) -> tuple[float, float]:
    """A distribution-free ~95 % confidence interval (low, high) of the median of ``values``:
    the order statistics of ranks n/2 -+ 0.98 sqrt(n) (binomial with p = 1/2, normal
    approximation), rounded outwards.
    Unlike the inter-quartile range it narrows as samples are added, so it says how far the
    median itself may move, not how far single samples scatter."""
    if not values:
        raise ValueError("values must hold at least one number; got an empty list")
    ordered = sorted(float(v) for v in values)
    n = len(ordered)
    half = 0.98 * math.sqrt(n)
    # 1-based ranks floor(n/2 - half) and ceil(1 + n/2 + half), rounded outwards
    low = max(0, math.floor(n / 2 - half) - 1)
    high = min(n - 1, math.ceil(n / 2 + half))
    return ordered[low], ordered[high]


def measure(fn: Callable[[], object], *, device, min_run_time: float = 0.5) -> dict:
    """Time ``fn()`` (no arguments; its result is ignored) on ``device``.

    Args:
        fn: the work to time; it must leave its inputs as it found them so runs are alike.
        device: torch.device or str; "cuda" timings are GPU times of the launched work.
        min_run_time: seconds of timed runs at least (after warm-up). Default: 0.5.

    Returns:
        dict with median_ms, min_ms, iqr_ms (floats, milliseconds per call) and runs (int).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable with no arguments; got {type(fn).__name__}")
    if not min_run_time > 0:
        raise ValueError(f"min_run_time must be > 0 seconds; got {min_run_time!r}")
    device = torch.device(device)
    if device.type == "cuda":
        return _measure_cuda(fn, min_run_time)
    if device.type == "cpu":
        return _measure_cpu(fn, min_run_time)
    raise ValueError(f"device must be a cpu or cuda device; got {device}")


def _timed_calls(fn: Callable[[], object], calls: int, device: torch.device,
                 clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds that ``calls`` back-to-back calls of fn take (GPU work included on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - start


def measure_ratio(fn: Callable[[], object], baseline: Callable[[], object], *, device,
                  min_run_time: float = 0.5, cpu_time: bool = False) -> dict:
    """The time of ``fn`` over the time of ``baseline``, timed in alternation.

    Two cases timed minutes apart on a shared machine can drift by 20% against each other;
    alternating fn and baseline (fn, baseline, baseline, fn, fn, baseline, ...) exposes both
    to the same load, so the ratio of each pair is steadier than a ratio of two separate
    medians; the order within a pair flips so neither side always runs first.

    Args:
        fn, baseline: the work to compare (no arguments, results ignored).
        device: torch.device or str; on CUDA each sample ends with a synchronize.
        min_run_time: seconds of timed pairs at least (after one warm-up of each). At least
            MIN_RUNS pairs are timed, fewer only (never below FEW_RUNS) when that would take
            longer than MAX_RUN_TIME_S.
        cpu_time: time each side by the CPU time of this process (``time.process_time``)
            instead of the wall clock; CPU only. Time slices lost to other processes on a busy
            machine then do not count, but work on other threads does (so only meaningful at
            one torch thread, where all the work runs in this one). Default: False.

    Returns:
        dict with ratio (median over pairs of fn / baseline), ratio_iqr, ratio_ci (the
        ``median_interval`` of the pair ratios, [low, high]), pairs (int), fn_ms,
        baseline_ms (median milliseconds per call of each) and pair_ms (per pair, [fn ms,
        baseline ms] per call, pairs in the order timed).
    """
    if not callable(fn) or not callable(baseline):
        raise TypeError("fn and baseline must be callable with no arguments; got "
                        f"{type(fn).__name__} and {type(baseline).__name__}")
    if not min_run_time > 0:
        raise ValueError(f"min_run_time must be > 0 seconds; got {min_run_time!r}")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a cpu or cuda device; got {device}")
    if cpu_time and device.type != "cpu":
        raise ValueError(f"cpu_time=True times CPU work only; got device {device}")
    clock = time.process_time if cpu_time else time.perf_counter
    pair_s = _timed_calls(fn, 1, device) + _timed_calls(baseline, 1, device)  # warm-up
    calls = max(1, int(1e-3 / max(pair_s, 1e-9)))  # a sample of >= ~1 ms swamps the timer
    ratios, fn_ms, base_ms = [], [], []
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if len(ratios) >= FEW_RUNS and elapsed >= MAX_RUN_TIME_S:
            break
        if len(ratios) >= MIN_RUNS and elapsed >= min_run_time:
            break
        # Whichever side runs first in a pair pays for the other's cache and allocator
        # footprint (identical calls measured 1.02-1.19 in a fixed order here), so the
        # order flips every pair.
        if len(ratios) % 2 == 0:
            a = _timed_calls(fn, calls, device, clock)
            b = _timed_calls(baseline, calls, device, clock)
        else:
            b = _timed_calls(baseline, calls, device, clock)
            a = _timed_calls(fn, calls, device, clock)
        ratios.append(a / b)
        fn_ms.append(a * 1e3 / calls)
        base_ms.append(b * 1e3 / calls)
    spread = summarize(ratios)
    return {"ratio": spread["median_ms"], "ratio_iqr": spread["iqr_ms"],
            "ratio_ci": list(median_interval(ratios)), "pairs": len(ratios),
            "pair_ms": [[a, b] for a, b in zip(fn_ms, base_ms)],
            "fn_ms": statistics.median(fn_ms), "baseline_ms": statistics.median(base_ms)}
