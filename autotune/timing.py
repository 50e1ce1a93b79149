"""Timing for the tuner: warm-up, repetitions until the median is steady, paired re-timing of
close winners; on a GPU, an L2 flush between repetitions.

The tuner ships inside the package (``flashseq.autotune``), so this is its own small timer rather
than the benchmark suite's.

- ``median_ms(fn, device)``: one candidate's time per call. After ``warmup`` calls (first-use
  builds, caches), samples of at least ``MIN_SAMPLE_S`` each (several calls when one is short)
  until ``min_reps`` samples and ``min_time`` seconds are reached, stopping early at
  ``max_time``. On CUDA, ``triton.testing.do_bench`` when Triton is importable (it flushes L2 by
  writing a buffer larger than L2 before every call and times with CUDA events), else CUDA events
  around each call after an L2-sized flush of our own.
- ``paired_ratio(fn, baseline, device)``: fn's time over baseline's, timed in alternation, the
  median of the per-pair ratios: both see the same load, which a shared machine needs. The order
  within a pair flips every pair (fn first, then baseline first), so a penalty of going first
  cancels out.
- ``close(a_ms, b_ms, margin)``: whether two medians are within the margin (then the tuner
  re-times them as a pair to decide; see ``autotune.runner``).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

MIN_SAMPLE_S = 2e-3          # a sample shorter than this is mostly timer and loop overhead
CLOSE_MARGIN = 0.05          # medians within 5% are re-timed in alternation


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _calls_per_sample(fn: Callable[[], object], device: torch.device) -> int:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    once = time.perf_counter() - start
    return max(1, int(MIN_SAMPLE_S / max(once, 1e-9)))


def _cpu_samples(fn, calls: int, min_reps: int, min_time: float, max_time: float) -> list:
    samples = []
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if len(samples) >= min_reps and elapsed >= min_time:
            break
        if len(samples) >= 3 and elapsed >= max_time:
            break
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) * 1e3 / calls)
    return samples


def _l2_flush_buffer(device: torch.device) -> torch.Tensor:
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or (64 << 20)
    return torch.empty(2 * l2 // 4, dtype=torch.int32, device=device)


def _cuda_event_samples(fn, device, reps: int) -> list:
    """Per-call milliseconds from CUDA events, L2 flushed (a buffer twice its size zeroed)
    before each call so every repetition reads its operands from memory, as the first does."""
    flush = _l2_flush_buffer(device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def _do_bench():
    """triton.testing.do_bench, or None when Triton is not importable."""
    try:
        from triton.testing import do_bench
    except ImportError:
        return None
    return do_bench


def median_ms(fn: Callable[[], object], device, *, warmup: int = 1, min_reps: int = 5,
              min_time: float = 0.2, max_time: float = 2.0) -> dict:
    """Median milliseconds per call of ``fn`` on ``device`` (see the module docstring).

    Returns {"median_ms", "iqr_ms", "samples"}.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable with no arguments; got {type(fn).__name__}")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a cpu or cuda device; got {device}")
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        do_bench = _do_bench()
        if do_bench is not None:
            # warmup/rep in milliseconds of do_bench's own; it flushes L2 before each call
            times = do_bench(fn, warmup=25, rep=max(25, int(min_time * 1e3)),
                             quantiles=None, return_mode="all")
        else:
            times = _cuda_event_samples(fn, device, max(min_reps, 20))
    else:
        times = _cpu_samples(fn, _calls_per_sample(fn, device), min_reps, min_time, max_time)
    return _summary(times)


def _summary(times: list) -> dict:
    times = sorted(float(t) for t in times)
    if len(times) >= 4:
        q = statistics.quantiles(times, n=4)
        iqr = q[2] - q[0]
    else:
        iqr = times[-1] - times[0]
    return {"median_ms": statistics.median(times), "iqr_ms": iqr, "samples": len(times)}


def paired_ratio(fn: Callable[[], object], baseline: Callable[[], object], device, *,
                 min_pairs: int = 7, min_time: float = 0.3, max_time: float = 1.5) -> dict:
    """fn's time over baseline's, the two timed in alternation (fn, baseline, fn, ...).

    Returns {"ratio": median of per-pair ratios, "ratio_iqr", "pairs", "fn_ms", "baseline_ms"}.
    """
    device = torch.device(device)
    fn()
    baseline()  # warm-up of both
    calls = min(_calls_per_sample(fn, device), _calls_per_sample(baseline, device))
    ratios, a_ms, b_ms = [], [], []
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if len(ratios) >= min_pairs and elapsed >= min_time:
            break
        if len(ratios) >= 3 and elapsed >= max_time:
            break
        # the order flips every pair: on the shared box the first of two identical calls
        # measured 2-19% slower (1 thread, LSTM B=1 T=32 H=64), a bias a fixed order keeps
        if len(ratios) % 2:
            b = _timed(baseline, calls, device)
            a = _timed(fn, calls, device)
        else:
            a = _timed(fn, calls, device)
            b = _timed(baseline, calls, device)
        ratios.append(a / b)
        a_ms.append(a * 1e3 / calls)
        b_ms.append(b * 1e3 / calls)
    spread = _summary(ratios)
    return {"ratio": spread["median_ms"], "ratio_iqr": spread["iqr_ms"], "pairs": len(ratios),
            "fn_ms": statistics.median(a_ms), "baseline_ms": statistics.median(b_ms)}


def _timed(fn, calls: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return time.perf_counter() - start


def close(a_ms: float, b_ms: float, margin: float = CLOSE_MARGIN) -> bool:
    """Whether two medians differ by less than ``margin`` (relative to the smaller)."""
    low, high = sorted((a_ms, b_ms))
    return high <= low * (1 + margin)


__all__ = ["median_ms", "paired_ratio", "close", "MIN_SAMPLE_S", "CLOSE_MARGIN"]
