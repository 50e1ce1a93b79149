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

FlashRNN-class models (``tests/constrint/tiling_models.py``, ``fused_step_tiling_model``: ~57
variables, ~58 constraints, domains up to 2**30, products and divisibility, forward and backward
tiling of a fused RNN step; its docstring describes the class) in a few configurations, each
twice: without objective ("first_feasible": the time to a first feasible point) and with the
register objective ("optimum": the time to a proven optimum). These are timed as pairs in
alternation (``bench.timing.measure_ratio``: constrint, CP-SAT, constrint, ...) so that both see
the same load; "ratio" is the median of the per-pair ratios, the times the medians per call.
They are timed twice, by the wall clock and by this process's CPU time ("cpu_ms",
"cpu_pair_ratio": on a shared machine the other processes' load inflates the first only), with
the targets set for constrint ("target_ms": 1.3 ms to a first point, 15 ms to an optimum).
Before its timed pairs each case gets its own untimed warm-up (alternating pairs of both solvers
on its model for WARM_UP_SECONDS). "cpu_alone_ms" is constrint's CPU time per solve back to back
(paired with a no-op instead of CP-SAT): alternating with CP-SAT leaves the CPU's caches cold
at every constrint call, which adds ~0.3-0.4 ms to a ~0.8 ms first point; the two columns
bracket what a caller sees. The penalty is not CP-SAT's: a 64 MB copy, or a few MB of unrelated
Python allocations, between two solves costs the same. It is paid where each code path of the
solve (the interpreter's C code and constrint's bytecode) first runs after the eviction: most in
the flattening, which runs many different paths a few times each (0.22 ms of its 0.5 ms cold),
while the search repeats a few propagators hundreds of times; flattening another model first
takes most of it away.
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
               "and FlashRNN-class tiling models (~57 variables, domains up to 2**30; time to "
               "the first feasible point and to a proven optimum, timed in alternating pairs), "
               "solved by constrint and by OR-Tools CP-SAT (1 worker): wall time of one solve() "
               "per model (CP-SAT: translation and start-up included), same optimum?")

BASELINE = "cpsat"
HEAD_DIMS = (16, 32, 64, 128, 256, 512, 768, 1024)
SCAN_DIMS = (64, 128, 256)
REPEATS = {"constrint": 5, "cpsat": 3}
# fused_step_tiling_model configurations: LSTM (4 gates) and GRU-like (3 gates), bf16 and fp32,
# one head of 768 to 16 heads of 64, batch 8 to 64, on the H100-like limits of the generator
FLASHRNN_CLASS = [dict(), dict(batch=64, head_dim=256, heads=3), dict(batch=8, head_dim=512, heads=4),
                  dict(dtype="float32"), dict(batch=32, head_dim=384, heads=2),
                  dict(batch=8, head_dim=1024, gates=3), dict(batch=16, head_dim=64, heads=16)]
QUICK_FLASHRNN_CLASS = [dict(), dict(batch=64, head_dim=256, heads=3)]
# the targets for constrint on this machine (ms per solve): first feasible point, optimum
TARGET_MS = {"first_feasible": 1.3, "optimum": 15.0}
# seconds of alternating pairs per model (at least 5 pairs: bench.timing.MIN_RUNS)
PAIR_SECONDS = 1.0
# seconds of untimed alternating pairs before each FlashRNN-class case is timed
WARM_UP_SECONDS = 0.3
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


def _config_label(config):
    return ",".join(f"{k}={v}" for k, v in config.items()) or "B16,D768,NH1,G4,bf16"


def flashrnn_class_rows(quick: bool, progress, cpsat) -> list[dict]:
    """Rows for the FlashRNN-class models: first feasible point and proven optimum, constrint and
    CP-SAT timed in alternating pairs (cpsat None: constrint alone, untimed baseline rows)."""
    from bench.timing import measure_ratio
    from tests.constrint.tiling_models import fused_step_tiling_model

    rows = []
    configs = QUICK_FLASHRNN_CLASS if quick else FLASHRNN_CLASS
    cases = [(c, phase) for c in configs for phase in ("first_feasible", "optimum")]
    for config, phase in progress(cases):
        model, _ = fused_step_tiling_model(objective=None if phase == "first_feasible"
                                           else "registers", **config)
        case = f"flashrnn_class/{_config_label(config)}/{phase}"
        extra = dict(family="flashrnn_class", gpu="h100-like", backend="-", op=phase,
                     dim=config.get("head_dim", 768))
        ours = model.solve()
        if cpsat is None:
            start = time.perf_counter()
            model.solve()
            rows.append({"case": case, "provider": "constrint",
                         "median_ms": (time.perf_counter() - start) * 1e3, **extra,
                         "objective": ours.objective, "nodes": ours.stats["nodes"],
                         "status": ours.status})
            rows.append(untimed_row(case, BASELINE, "skipped: ortools is not installed", **extra))
            continue
        theirs = cpsat.solve(model)
        if phase == "optimum":
            same = ours.status == theirs.status == "optimal" and ours.objective == theirs.objective
        else:  # any feasible point will do: both must find one, each a true solution
            same = bool(ours) and bool(theirs) and all(
                c.is_satisfied(p.values) for p in (ours, theirs) for c in model.constraints)
        seconds = 0.3 if quick else PAIR_SECONDS
        # each case's own untimed warm-up of both solvers on this model (pairs for
        # WARM_UP_SECONDS, at least one): the first case used to be timed right after the 657
        # plan models and was the slowest in every run (constrint alone too)
        _warm_up(model.solve, lambda: cpsat.solve(model), WARM_UP_SECONDS)
        paired = measure_ratio(model.solve, lambda: cpsat.solve(model), device="cpu",
                               min_run_time=seconds)
        # the same pairs timed by this process's CPU time: what the other engineers' load on
        # a shared machine adds to the wall clock does not count there (CP-SAT runs 1 worker)
        cpu = measure_ratio(model.solve, lambda: cpsat.solve(model), device="cpu",
                            min_run_time=seconds, cpu_time=True)
        # constrint alone, back to back (a no-op in CP-SAT's place): CP-SAT's solve between two
        # of constrint's evicts the CPU's caches and adds ~0.3-0.4 ms to a ~0.8 ms first point
        alone = measure_ratio(model.solve, _no_op, device="cpu", min_run_time=seconds,
                              cpu_time=True)
        rows.append({"case": case, "provider": "constrint", "median_ms": paired["fn_ms"],
                     "cpu_ms": cpu["fn_ms"], "cpu_alone_ms": alone["fn_ms"],
                     "pairs": paired["pairs"], **extra,
                     "objective": ours.objective, "nodes": ours.stats["nodes"],
                     "runs": ours.stats["runs"], "same_optimum": same,
                     "pair_ratio": paired["ratio"], "pair_ratio_iqr": paired["ratio_iqr"],
                     "cpu_pair_ratio": cpu["ratio"], "target_ms": TARGET_MS[phase],
                     "status": ours.status})
        rows.append({"case": case, "provider": BASELINE, "median_ms": paired["baseline_ms"],
                     "cpu_ms": cpu["baseline_ms"], "pairs": paired["pairs"], **extra,
                     "objective": theirs.objective, "nodes": None, "same_optimum": same,
                     "pair_ratio": 1.0, "cpu_pair_ratio": 1.0, "status": theirs.status})
    return rows


def _warm_up(fn, baseline, seconds):
    """Call fn and baseline in alternation, untimed, for `seconds` (at least one pair)."""
    start = time.perf_counter()
    while True:
        fn()
        baseline()
        if time.perf_counter() - start >= seconds:
            return


def _no_op():
    return None


def summary(rows: list[dict]) -> list[str]:
    """The FlashRNN-class rows as one table (printed before the full one): per configuration
    and target, constrint and CP-SAT side by side, wall and CPU medians, the target."""
    pairs = {}
    for r in rows:
        if r.get("family") == "flashrnn_class":
            pairs.setdefault(r["case"], {})[r["provider"]] = r
    if not pairs:
        return []
    lines = ["FlashRNN-class models, ms per solve (medians of alternating pairs; wall clock, "
             "then this process's CPU time):", "",
             "| configuration | target | constrint wall | CP-SAT wall | pair ratio | constrint CPU "
             "| CP-SAT CPU | CPU pair ratio | constrint CPU alone | target ms | nodes | runs "
             "| same answer |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case, both in pairs.items():
        ours, theirs = both.get("constrint", {}), both.get(BASELINE, {})
        _, config, phase = case.split("/")

        def ms(row, key):
            value = row.get(key)
            return f"{value:.2f}" if isinstance(value, (int, float)) else "-"

        lines.append(f"| {config} | {phase.replace('_', ' ')} | {ms(ours, 'median_ms')} | "
                     f"{ms(theirs, 'median_ms')} | {ms(ours, 'pair_ratio')} | "
                     f"{ms(ours, 'cpu_ms')} | {ms(theirs, 'cpu_ms')} | "
                     f"{ms(ours, 'cpu_pair_ratio')} | {ms(ours, 'cpu_alone_ms')} | "
                     f"{ours.get('target_ms', '-')} | "
                     f"{ours.get('nodes', '-')} | {ours.get('runs', '-')} | "
                     f"{'yes' if ours.get('same_optimum') else 'NO'} |")
    return lines


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
    flashrnn = flashrnn_class_rows(quick, progress, cpsat if has_cpsat else None)
    flashrnn = add_ratios(flashrnn, BASELINE)  # "pair_ratio" is the one to read
    return rows + summary + flashrnn
