"""``python -m bench compare old.json new.json``: which cases got slower beyond the noise.

A case regressed when its new median exceeds the old one by more than the noise allowance:
the larger of ``threshold`` (relative), the old row's own "margin" when it has one, and the two
runs' inter-quartile ranges added together. Rows are matched by (case, provider); rows without
a time (skipped) are not compared.

A result may say how it is compared in a "compare" object: "value" (the column compared,
default "median_ms"), "spread" (its inter-quartile range column, default "iqr_ms") and
"max_allowance" (the largest allowance ever granted, so noise never hides a slow-down of that
size). The microbench suite compares its paired ratios that way.
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
    "case" and "provider" (str), "median_ms" (number or null) and optionally "iqr_ms", "margin"
    and the columns its "compare" object names (each a number >= 0 or null)."""
    for key, kind in (("suite", str), ("machine", dict), ("rows", list)):
        if key not in result:
            raise ValueError(f"{name}: missing key {key!r}")
        if not isinstance(result[key], kind):
            raise ValueError(f"{name}: {key!r} must be a {kind.__name__}; got "
                             f"{type(result[key]).__name__}")
    try:
        spec = comparison(result)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
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
        for key in ("median_ms", "iqr_ms", spec["value"], spec["spread"], "margin"):
            problem = _time_problem(row.get(key))
            if problem:
                raise ValueError(f"{where}: {key!r} {problem:.80}")


def comparison(result: dict) -> dict:
    """How ``result`` is compared: {"value", "spread", "max_allowance"} from its "compare"
    object, defaulting to the median time, its IQR and no cap (``ValueError`` if malformed)."""
    spec = result.get("compare") or {}
    if not isinstance(spec, dict):
        raise ValueError(f"'compare' must be an object; got {type(spec).__name__}")
    out = {"value": spec.get("value", "median_ms"), "spread": spec.get("spread", "iqr_ms"),
           "max_allowance": spec.get("max_allowance")}
    for key in ("value", "spread"):
        if not isinstance(out[key], str):
            raise ValueError(f"'compare'.{key} must be a column name; got {out[key]!r:.60}")
    cap = out["max_allowance"]
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float))
                            or not cap > 0):
        raise ValueError(f"'compare'.max_allowance must be a number > 0 or null; got {cap!r:.60}")
    return out


def _timed(rows: list[dict], value: str) -> dict:
    out = {}
    for row in rows:
        if isinstance(row.get(value), (int, float)) and row[value] > 0:
            out[(row["case"], row["provider"])] = row
    return out


def compare(old: dict, new: dict, threshold: float = DEFAULT_THRESHOLD) -> list[dict]:
    """One row per (case, provider) timed in both results.

    Args:
        old, new: results as written by ``bench.report.write_json``; the old one's "compare"
            object (see the module docstring) says which column is compared.
        threshold: relative slow-down always tolerated as noise (0.10 = 10 %). Default: 0.10.

    Returns:
        rows with case, provider, old and new value (``old_ms``/``new_ms`` for times, else
        ``old_<value>``/``new_<value>``), ratio (new/old), allowed (largest ratio still called
        noise) and verdict ("regression", "faster" or "same").
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0 (a fraction, 0.1 = 10 %); got {threshold!r}")
    spec = comparison(old)
    value, spread, cap = spec["value"], spec["spread"], spec["max_allowance"]
    old_rows, new_rows = _timed(old["rows"], value), _timed(new["rows"], value)
    names = ("old_ms", "new_ms") if value == "median_ms" else (f"old_{value}", f"new_{value}")
    out = []
    for key in old_rows:
        if key not in new_rows:
            continue
        o, n = old_rows[key], new_rows[key]
        noise = ((o.get(spread) or 0.0) + (n.get(spread) or 0.0)) / o[value]
        allowance = max(threshold, o.get("margin") or 0.0, noise)
        allowed = 1.0 + (allowance if cap is None else min(cap, allowance))
        ratio = n[value] / o[value]
        verdict = "regression" if ratio > allowed else "faster" if ratio < 1.0 / allowed else "same"
        out.append({"case": key[0], "provider": key[1], names[0]: o[value], names[1]: n[value],
                    "ratio": ratio, "allowed": allowed, "verdict": verdict})
    return out


def report_comparison(old: dict, new: dict, old_name, new_name,
                      threshold: float = DEFAULT_THRESHOLD) -> int:
    """Print the comparison of two checked results; return 1 if any case regressed, 2 if
    nothing could be compared, else 0. Rows timed in ``old`` but not in ``new`` are listed."""
    notes = []
    if old["suite"] != new["suite"]:
        notes.append(f"different suites: {old['suite']!r} vs {new['suite']!r}")
    if old["machine"].get("device_name") != new["machine"].get("device_name"):
        notes.append(f"different devices: {old['machine'].get('device_name')!r} vs "
                     f"{new['machine'].get('device_name')!r}; ratios compare machines, not code")
    rows = compare(old, new, threshold)
    value = comparison(old)["value"]
    compared = {(r["case"], r["provider"]) for r in rows}
    status = {(r["case"], r["provider"]): r.get("status") for r in new["rows"]}
    for key in _timed(old["rows"], value):
        if key not in compared:
            notes.append(f"not compared: {key[0]} ({key[1]}): "
                         f"{status.get(key) or 'not in ' + str(new_name)}")
    for note in notes:
        print(f"note: {note}")
    if not rows:
        print(f"nothing to compare: no (case, provider) is timed in both {old_name} and {new_name}")
        return 2
    print(report.markdown_table(rows, cols=list(rows[0])))
    bad = [r for r in rows if r["verdict"] == "regression"]
    spec = comparison(old)
    what = "" if value == "median_ms" else f"{value}; "
    spread = "IQR" if spec["spread"] == "iqr_ms" else spec["spread"]
    cap = "" if spec["max_allowance"] is None else f", at most {spec['max_allowance']:.0%}"
    print(f"{len(bad)} regression(s) in {len(rows)} compared case(s) ({what}noise allowance: "
          f"max({threshold:.0%}, the baseline's margin, ({spread}_old + {spread}_new) / old)"
          f"{cap})")
    for r in bad:
        print(f"regression: {r['case']} ({r['provider']}): {r['ratio']:.2f}x the baseline's "
              f"{value}, allowed up to {r['allowed']:.2f}x")
    return 1 if bad else 0


def main(old_path, new_path, threshold: float = DEFAULT_THRESHOLD) -> int:
    """Print the comparison; return 1 if any case regressed, 2 if nothing could be compared.
    A file that is not a result raises ``ValueError`` (the CLI exits 2 with its message)."""
    old, new = report.load_json(old_path), report.load_json(new_path)
    check_result(old, old_path)
    check_result(new, new_path)
    return report_comparison(old, new, old_path, new_path, threshold)
