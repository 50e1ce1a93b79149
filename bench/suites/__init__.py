"""Registry of benchmark suites: name -> module path, imported only when the suite runs.

A suite module defines ``DESCRIPTION: str`` and ``run(device, quick: bool, progress) ->
list[dict]``: one dict per result row with at least "case" (str), "provider" (str),
"median_ms", "min_ms", "iqr_ms" (float, or None when the row was not timed) and any extra
columns ("ratio" against a baseline provider, "status" such as "ok" or "skipped: <why>").
``progress`` wraps the suite's main loop (tqdm-like). A suite checks its kernels against the
reference before timing them and never times a wrong one; a failed check raises
``bench.suites.CorrectnessError`` (or is reported as a "failed: ..." status row).
"""
from __future__ import annotations

import importlib

SUITES = {
    "quick": "bench.suites.quick",
    "fused_rnn": "bench.suites.fused_rnn",
    "constrint": "bench.suites.constrint",
    "modules": "bench.suites.modules",
    "linear_scan": "bench.suites.linear_scan",
    "plstm": "bench.suites.plstm",
    "microbench": "bench.suites.microbench",
    "parallel_rnn": "bench.suites.parallel_rnn",
    "beyond": "bench.suites.beyond",
}


class CorrectnessError(RuntimeError):
    """A kernel disagreed with the reference in a suite's smoke check; nothing was timed."""


def load(name: str):
    """The suite module registered as ``name``."""
    if name not in SUITES:
        raise ValueError(f"suite {name!r} is not known; allowed: {sorted(SUITES)}")
    return importlib.import_module(SUITES[name])
