"""The loop every suite shares: for each case, time each provider side by side in one process.

A provider is ours (a flashseq kernel) or a peer. A row's "status" says what happened:
"ok" (timed), "skipped: <why>" (cannot run here: not built, not importable, unsupported size,
a peer that raised) or "failed: <why>" (our kernel was wrong in the smoke check or raised
while being timed; ``python -m bench`` then exits 1).
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from .timing import measure


@dataclass
class Provider:
    """``build(case_data) -> fn`` makes the timed callable; ``status`` set means do not time
    (the reason from an availability or smoke check)."""

    name: str
    build: Callable[[object], Callable[[], object]]
    peer: bool = False
    status: str | None = None


def untimed_row(case: str, provider: str, status: str, **extra) -> dict:
    return {"case": case, "provider": provider, "median_ms": None, "min_ms": None,
            "iqr_ms": None, **extra, "status": status}


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"


def time_case(case: str, data, providers: Iterable[Provider], *, device, min_run_time: float,
              extra: dict | None = None) -> list[dict]:
    """One row per provider for one case; ``data`` is handed to every ``build``."""
    extra = extra or {}
    rows = []
    for p in providers:
        if p.status is not None:
            rows.append(untimed_row(case, p.name, p.status, **extra))
            continue
        try:
            fn = p.build(data)
            stats = measure(fn, device=device, min_run_time=min_run_time)
        except NotImplementedError as err:  # the documented "cannot serve this call"
            rows.append(untimed_row(case, p.name, f"skipped: {_one_line(err)}", **extra))
        except Exception as err:
            verdict = "skipped" if p.peer else "failed"
            rows.append(untimed_row(case, p.name, f"{verdict}: {_one_line(err)}", **extra))
        else:
            rows.append({"case": case, "provider": p.name, **stats, **extra, "status": "ok"})
        fn = None
        if torch.device(device).type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
    return rows


def add_ratios(rows: list[dict], baseline: str, column: str = "ratio") -> list[dict]:
    """Set ``column`` = median / the ``baseline`` provider's median in the same case (None if
    either is untimed). Below 1 means faster than the baseline."""
    base = {r["case"]: r["median_ms"] for r in rows
            if r["provider"] == baseline and r.get("median_ms")}
    for r in rows:
        b = base.get(r["case"])
        status = r.pop("status", None)  # keep "status" the last column
        r[column] = r["median_ms"] / b if b and r.get("median_ms") else None
        if status is not None:
            r["status"] = status
    return rows


def failures(rows: list[dict]) -> list[dict]:
    """The rows whose status starts with "failed"."""
    return [r for r in rows if str(r.get("status", "")).startswith("failed")]
