"""Suite "constrint" (``python -m bench constrint``): the tiling models of the plans, solved by
constrint and by OR-Tools CP-SAT side by side.

Models: ``flashseq.kernels.fused_rnn.plan.build_model`` for every GPU in the table x cell x
DH in {16, ..., 1024} x backend (triton, cuda), bfloat16, B=16, NH = max(1, 768 // DH); and
``flashseq.kernels.linear_scan.plan.build_model`` for every GPU x op x K=V in {64, 128, 256}
(B=2, T=16384, H=16). What is timed: the wall time of one ``solve()`` call per model, for
constrint ``Model.solve()`` and for CP-SAT ``constrint.cpsat.solve(model)`` (one worker),
which includes translating the model and CP-SAT's start-up. Each model is built afresh before
every timed solve, outside the timing, so neither side can reuse work from an earlier run.

Rows: one per model and solver ("status", "objective", "same_optimum" of the two), with
"ratio" = constrint's median / CP-SAT's median, and a summary pair of rows whose times are the
median, minimum and IQR over the models' medians. Without ortools only constrint is timed.
"""
from __future__ import annotations

import importlib.util
import itertools
import statistics
import time

import torch

from bench.runner import add_ratios, untimed_row
from bench.timing import summarize
from flashseq.cells import CELLS
from flashseq.hardware import GPUS
from flashseq.kernels.fused_rnn import plan as rnn_plan
from flashseq.kernels.linear_scan import plan as scan_plan

DESCRIPTION = ("The fused_rnn and linear_scan tiling models for every GPU x cell/op x size, "
               "solved by constrint and by OR-Tools CP-SAT (1 worker): wall time of one solve() "
               "per model (CP-SAT: translation and start-up included), same optimum?")

BASELINE = "cpsat"
HEAD_DIMS = (16, 32, 64, 128, 256, 512, 768, 1024)
SCAN_DIMS = (64, 128, 256)
REPEATS = {"constrint": 5, "cpsat": 3}
QUICK_REPEATS = {"constrint": 1, "cpsat": 1}


def model_cases(quick: bool):
    """(case name, extra columns, builder) for every model; builder() -> (model, variables)."""
    gpus = ["h100-sxm", "a10"] if quick else sorted(GPUS)
    cells = ["lstm"] if quick else sorted(CELLS)
    dims = (64, 768) if quick else HEAD_DIMS
    for gpu, backend, cell, dh in itertools.product(gpus, ("triton", "cuda"), cells, dims):
        heads = max(1, 768 // dh)
        yield (f"fused_rnn/{backend}/{gpu}/{cell}/DH{dh}",
               dict(family="fused_rnn", gpu=gpu, backend=backend, op=cell, dim=dh),
               lambda gpu=gpu, backend=backend, cell=cell, dh=dh, heads=heads:
               rnn_plan.build_model(cell, 16, heads, dh, torch.bfloat16, gpu, backend=backend))
    ops = ["gla"] if quick else list(scan_plan.OPS)
    for gpu, op, d in itertools.product(gpus, ops, (128,) if quick else SCAN_DIMS):
        yield (f"linear_scan/{gpu}/{op}/K{d}",
               dict(family="linear_scan", gpu=gpu, backend="triton", op=op, dim=d),
               lambda gpu=gpu, op=op, d=d:
               scan_plan.build_model(op, 2, 16384, 16, d, d, torch.bfloat16, gpu))


def _time_solves(build, solve, repeats):
    times, sol = [], None
    for _ in range(repeats):
        model, _ = build()
        start = time.perf_counter()
        sol = solve(model)
        times.append((time.perf_counter() - start) * 1e3)
    return summarize(times), sol


def _summary_rows(rows, n_models, agree):
    out = []
    for provider in ("constrint", BASELINE):
        medians = [r["median_ms"] for r in rows if r["provider"] == provider and r["median_ms"]]
        if not medians:
            continue
        stats = summarize(medians)
        out.append({"case": f"summary over {len(medians)} models", "provider": provider,
                    "median_ms": stats["median_ms"], "min_ms": stats["min_ms"],
                    "iqr_ms": stats["iqr_ms"], "family": "all",
                    "same_optimum": f"{agree}/{n_models}", "status": "ok"})
    return out


def run(device, quick: bool, progress) -> list[dict]:
    """One row per model and solver, plus the summary rows (``device`` is not used: CPU)."""
    import constrint

    has_cpsat = importlib.util.find_spec("ortools") is not None
    if has_cpsat:
        import constrint.cpsat as cpsat
    repeats = QUICK_REPEATS if quick else REPEATS
    rows, agree, n_models, speedups = [], 0, 0, []
    for case, extra, build in progress(list(model_cases(quick))):
        n_models += 1
        ours, ours_sol = _time_solves(build, lambda m: m.solve(), repeats["constrint"])
        ours.pop("runs")
        rows.append({"case": case, "provider": "constrint", **ours, **extra,
                     "objective": ours_sol.objective, "nodes": ours_sol.stats.get("nodes"),
                     "status": ours_sol.status})
        if not has_cpsat:
            rows.append(untimed_row(case, BASELINE, "skipped: ortools is not installed", **extra))
            continue
        theirs, theirs_sol = _time_solves(build, lambda m: cpsat.solve(m), repeats[BASELINE])
        theirs.pop("runs")
        same = (ours_sol.status == theirs_sol.status == "optimal"
                and ours_sol.objective == theirs_sol.objective) or (
                ours_sol.status == theirs_sol.status == "infeasible")
        agree += same
        rows[-1]["same_optimum"] = same
        rows.append({"case": case, "provider": BASELINE, **theirs, **extra,
                     "objective": theirs_sol.objective, "nodes": None, "same_optimum": same,
                     "status": theirs_sol.status})
        speedups.append(theirs["median_ms"] / ours["median_ms"])
    rows = add_ratios(rows, BASELINE)
    summary = _summary_rows(rows, n_models, agree)
    if speedups and summary:
        summary[0]["ratio"] = 1 / statistics.median(speedups)   # median per-model ratio
    return rows + summary
