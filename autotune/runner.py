"""The tuning loop: for each workload, time the default and the solver's best candidates, keep
the fastest (re-timing close ones in alternation), compare it with the default and the peer,
and record the winner in the cache.

Per workload (``tune_workload``):
1. candidates from the target's solver model (``k`` best by its cost model), duplicates dropped;
2. each candidate's forward is checked against the default configuration's (a candidate that
   computes something else is reported and never timed);
3. the default and every candidate are timed (``timing.median_ms``: warm-up, repetitions until
   the median is steady);
4. when the two fastest are within ``timing.CLOSE_MARGIN``, they are re-timed in alternation and
   the median of per-pair ratios decides (the noise check);
5. the winner is timed against the default in alternation (``ratio_vs_untuned``, < 1 is faster);
   a winner not at least ``KEEP_MARGIN`` faster than the default is replaced by the default;
6. each of the target's peers (``target.peers``: torch.nn on CPU; cuDNN and FlashRNN on a GPU)
   against flashseq under the winner, in alternation (``peer_ratios[name]``; a peer that cannot
   run holds "n/a (why)"; ``ratio_vs_peer`` is the first peer's ratio).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import timing


@dataclass
class Result:
    """The outcome of one workload."""

    workload: object
    config: object = None
    config_text: str = ""
    time_ms: float | None = None
    untuned_ms: float | None = None
    ratio_vs_untuned: float | None = None
    ratio_vs_peer: float | None = None
    peer_ratios: dict = field(default_factory=dict)  # peer name -> ratio or "n/a (why)"
    candidates: int = 0
    rejected: list = field(default_factory=list)
    error: str | None = None
    skipped: str | None = None

    def to_json(self) -> dict:
        w = self.workload
        return {"cell": w.cell, "batch": w.batch, "steps": w.steps, "heads": w.heads,
                "head_dim": w.head_dim, "dtype": w.dtype, "config": self.config_text,
                "time_ms": self.time_ms, "untuned_ms": self.untuned_ms,
                "ratio_vs_untuned": self.ratio_vs_untuned, "ratio_vs_peer": self.ratio_vs_peer,
                "peers": dict(self.peer_ratios),
                "candidates": self.candidates, "rejected": self.rejected, "error": self.error,
                "skipped": self.skipped}


# A winner replaces the default only when it is at least this much faster, side by side (the
# paired ratio of two identical calls spread about +-3% on the shared 2-core box).
KEEP_MARGIN = 0.03


@dataclass
class Settings:
    k: int = 6                     # candidates per workload
    min_time: float = 0.15         # seconds of samples per candidate (at least)
    max_time: float = 0.5          # ... and at most (3 samples at least)
    pair_time: float = 0.3         # seconds of alternating pairs for a ratio


def _dedupe(configs: list) -> list:
    out = []
    for c in configs:
        if c not in out:
            out.append(c)
    return out


def tune_workload(target, w, settings: Settings, tick=lambda: None, deadline=None) -> Result:
    """Tune one workload on ``target`` (see the module docstring); ``tick()`` is called once per
    timed candidate (a progress bar), ``deadline`` (time.monotonic()) stops candidate timing."""
    res = Result(w)
    default = target.default()
    cands = [c for c in _dedupe(target.candidates(w, settings.k)) if c != default]
    res.candidates = len(cands)
    device = target.device

    def med(config):
        return timing.median_ms(target.call(w, config), device, min_time=settings.min_time,
                                max_time=settings.max_time)["median_ms"]

    timed = [(med(default), 0, default)]
    for i, config in enumerate(cands, 1):
        if deadline is not None and time.monotonic() > deadline:
            res.skipped = f"budget reached after {i - 1} of {len(cands)} candidates"
            break
        problem = target.check(w, config)
        if problem:
            res.rejected.append(f"{target.describe(config)}: {problem}")
        else:
            timed.append((med(config), i, config))
        tick()
    res.untuned_ms = timed[0][0]
    timed.sort(key=lambda t: (t[0], t[1]))
    best_ms, _, best = timed[0]
    if len(timed) > 1 and timing.close(timed[0][0], timed[1][0]):
        pair = timing.paired_ratio(target.call(w, timed[0][2]), target.call(w, timed[1][2]),
                                   device, min_time=settings.pair_time)
        if pair["ratio"] > 1.0:
            best_ms, _, best = timed[1]
    if best != default:
        pair = timing.paired_ratio(target.call(w, best), target.call(w, default), device,
                                   min_time=settings.pair_time)
        res.ratio_vs_untuned = pair["ratio"]
        if pair["ratio"] > 1.0 - KEEP_MARGIN:  # not clearly faster side by side: the default
            best, best_ms, res.ratio_vs_untuned = default, res.untuned_ms, 1.0
    else:
        res.ratio_vs_untuned = 1.0
    res.config, res.time_ms = best, best_ms
    res.config_text = target.describe(best)
    if hasattr(target, "peers"):
        found = target.peers(w, best)
    else:  # a target with one unnamed peer
        found = [("peer", target.peer_calls(w, best))]
    for name, calls in found:
        if calls is None or isinstance(calls, str):
            res.peer_ratios[name] = calls or "n/a"
            continue
        if deadline is not None and time.monotonic() > deadline:  # a peer's first call may
            res.peer_ratios[name] = "n/a (budget reached)"        # compile for minutes
            continue
        try:
            res.peer_ratios[name] = timing.paired_ratio(*calls, device,
                                                        min_time=settings.pair_time)["ratio"]
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as err:
            # a peer's failure is the peer's row, not a failed tuning run
            first_line = (str(err).splitlines() or [""])[0][:120]
            res.peer_ratios[name] = f"n/a ({type(err).__name__}: {first_line})"
    first = next(iter(res.peer_ratios.values()), None)
    res.ratio_vs_peer = None if isinstance(first, str) else first
    return res


def entry(target, res: Result) -> dict:
    """The cache entry of a tuned workload."""
    w = res.workload
    return {"kernel": target.kernel, "bucket": target.bucket(w), "dtype": w.dtype,
            "config": target.to_json(res.config), "shape": w.label, "time_ms": res.time_ms,
            "untuned_ms": res.untuned_ms, "ratio_vs_untuned": res.ratio_vs_untuned}


def tune(target, workloads, settings: Settings, progress=None, budget_s=None) -> list[Result]:
    """Tune every workload in turn; workloads not started before the budget ran out are
    returned with ``skipped`` set. ``progress`` is a bar with update(n) (or None)."""
    deadline = None if budget_s is None else time.monotonic() + budget_s
    results = []
    for w in workloads:
        if deadline is not None and time.monotonic() > deadline:
            results.append(Result(w, skipped="budget reached before this workload"))
            continue
        if progress is not None and hasattr(progress, "set_description"):
            progress.set_description(w.label)
        try:
            res = tune_workload(target, w, settings,
                                tick=(lambda: progress.update(1)) if progress else (lambda: None),
                                deadline=deadline)
        except (RuntimeError, ValueError, TypeError) as err:
            res = Result(w, error=f"{type(err).__name__}: {err}")
        results.append(res)
    return results


__all__ = ["Result", "Settings", "tune_workload", "tune", "entry"]
