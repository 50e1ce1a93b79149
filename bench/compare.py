"""``python -m bench compare old.json new.json``: which cases got slower beyond the noise.

A case regressed when its new median exceeds the old one by more than the noise allowance:
the larger of ``threshold`` (relative) and the two runs' inter-quartile ranges added together.
Rows are matched by (case, provider); rows without a time (skipped) are not compared.
"""
from __future__ import annotations

import math

from . import report

DEFAULT_THRESHOLD = 0.10


def _time_problem(value) -> str | None:
    # a time is null (not timed) or a finite number >= 0; bool is an int to Python, not a time
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"is {type(value).__name__} {value!r}, not a number or null"
    if not math.isfinite(value) or value < 0:
        return f"is {value!r}, not a finite time >= 0"
    return None


def check_result(result: dict, name) -> None:
    """Raise ``ValueError`` (one line naming ``name``, the key and the row) unless ``result``
    has what ``compare`` reads: "suite" (str), "machine" (dict) and "rows", a list of dicts with
    "case" and "provider" (str), "median_ms" (number or null) and optionally "iqr_ms"."""
    for key, kind in (("suite", str), ("machine", dict), ("rows", list)):
        if key not in result:
            raise ValueError(f"{name}: missing key {key!r}")
        if not isinstance(result[key], kind):
            raise ValueError(f"{name}: {key!r} must be a {kind.__name__}; got "
                             f"{type(result[key]).__name__}")
    for i, row in enumerate(result["rows"]):
        where = f"{name}: rows[{i}]"
        if not isinstance(row, dict):
            raise ValueError(f"{where} must be an object; got {type(row).__name__} {row!r:.60}")
        for key in ("case", "provider", "median_ms"):
            if key not in row:
                raise ValueError(f"{where}: missing key {key!r}")
        for key in ("case", "provider"):
            if not isinstance(row[key], str):
                raise ValueError(f"{where}: {key!r} must be a string; got {row[key]!r:.60}")
        for key in ("median_ms", "iqr_ms"):
            problem = _time_problem(row.get(key))
            if problem:
                raise ValueError(f"{where}: {key!r} {problem:.80}")


def _timed(rows: list[dict]) -> dict:
    out = {}
    for row in rows:
        if isinstance(row.get("median_ms"), (int, float)) and row["median_ms"] > 0:
            out[(row["case"], row["provider"])] = row
    return out


def compare(old: dict, new: dict, threshold: float = DEFAULT_THRESHOLD) -> list[dict]:
    """One row per (case, provider) timed in both results.

    Args:
        old, new: results as written by ``bench.report.write_json``.
        threshold: relative slow-down always tolerated as noise (0.10 = 10 %). Default: 0.10.

    Returns:
        rows with case, provider, old_ms, new_ms, ratio (new/old), allowed (largest ratio
        still called noise) and verdict ("regression", "faster" or "same").
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0 (a fraction, 0.1 = 10 %); got {threshold!r}")
    old_rows, new_rows = _timed(old["rows"]), _timed(new["rows"])
    out = []
    for key in old_rows:
        if key not in new_rows:
            continue
        o, n = old_rows[key], new_rows[key]
        noise = ((o.get("iqr_ms") or 0.0) + (n.get("iqr_ms") or 0.0)) / o["median_ms"]
        allowed = 1.0 + max(threshold, noise)
        ratio = n["median_ms"] / o["median_ms"]
        verdict = "regression" if ratio > allowed else "faster" if ratio < 1.0 / allowed else "same"
        out.append({"case": key[0], "provider": key[1], "old_ms": o["median_ms"],
                    "new_ms": n["median_ms"], "ratio": ratio, "allowed": allowed,
                    "verdict": verdict})
    return out


def main(old_path, new_path, threshold: float = DEFAULT_THRESHOLD) -> int:
    """Print the comparison; return 1 if any case regressed, 2 if nothing could be compared.
    A file that is not a result raises ``ValueError`` (the CLI exits 2 with its message)."""
    old, new = report.load_json(old_path), report.load_json(new_path)
    check_result(old, old_path)
    check_result(new, new_path)
    notes = []
    if old["suite"] != new["suite"]:
        notes.append(f"different suites: {old['suite']!r} vs {new['suite']!r}")
    if old["machine"].get("device_name") != new["machine"].get("device_name"):
        notes.append(f"different devices: {old['machine'].get('device_name')!r} vs "
                     f"{new['machine'].get('device_name')!r}; ratios compare machines, not code")
    rows = compare(old, new, threshold)
    for note in notes:
        print(f"note: {note}")
    if not rows:
        print(f"nothing to compare: no (case, provider) is timed in both {old_path} and {new_path}")
        return 2
    print(report.markdown_table(rows, cols=list(rows[0])))
    bad = [r for r in rows if r["verdict"] == "regression"]
    print(f"{len(bad)} regression(s) in {len(rows)} compared case(s) "
          f"(noise allowance: max({threshold:.0%}, IQR_old + IQR_new))")
    return 1 if bad else 0
