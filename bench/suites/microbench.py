"""Suite "microbench": one small case per kernel family and mode, each as a paired ratio against a
fixed torch.nn baseline, for CI (``python -m bench microbench --compare BASELINE.json``).

Every row is a paired ratio (``bench.timing.measure_ratio(ours, baseline)``): ours and a
torch.nn module of the same batch, steps and width are called in alternation and the row keeps
the median of the per-pair time ratios. Both sides see the same machine at the same moment, so
the ratio carries over between machines far better than a time does, and a baseline recorded on
one machine can be compared on another (the same CPU family and torch version keep it closest).
On a CPU at one torch thread (the default here) both sides are timed in CPU time of the process
(``uses_cpu_time``), so time slices lost to other processes do not count. Each case is timed
in ROUNDS rounds over all cases, its pairs pooled (``time_cases``).

Cases (float32, one layer, batch_first, on CPU B=8, T=64, width 64; ``--tiny`` B=2, T=8, 8):
- ``fused_rnn`` cells lstm, gru, elman, slstm on the "cpu" back end ("auto" on a GPU), the
  recurrence alone (wx [B, T, G, 1, H] given), against torch.nn.LSTM / GRU / RNN(tanh) / LSTM.
- ``linear_scan`` ops chunk_gla, chunk_delta_rule (gated), chunk_mlstm with backend "auto"
  (B=1, T=128, H=2 heads of K=V=32; tiny T=16, 1 head of 8), against a torch.nn.LSTM of hidden
  size H*K on the same B and T.
- ``modules`` flashseq.LSTM / GRU / RNN / sLSTM (backend "auto") against torch.nn.LSTM / GRU /
  RNN / LSTM of the same sizes (torch's weights loaded into the twins).
Modes: "fwd" under ``torch.no_grad()``; "fwd+bwd" adds the gradients of every input and weight
for a fixed random upstream gradient. On a GPU the baselines are cuDNN's.

Each kernel passes a check against a float64 reference on a small case before it is timed;
one that fails is listed as "failed: ..." and never timed.

``--runs N`` repeats the whole suite N times in one process and keeps, per case, the median
ratio, the run-to-run spread (max - min) / median of the N ratios and the regression margin
derived from it (``margin_from_spread``); a baseline for ``--compare`` is recorded that way.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Callable

import torch

from bench import smoke, timing

DESCRIPTION = ("CI microbenchmarks: small cases of every kernel family (fused_rnn cells, "
               "chunkwise linear recurrences, drop-in modules), forward and forward+backward, "
               "each a paired ratio against torch.nn of the same size (cuDNN on a GPU).")

DEFAULT_CPU_THREADS = 1  # python -m bench applies it on CPU unless --threads is given
RNN_SIZE = {"B": 8, "T": 64, "H": 64}
RNN_TINY = {"B": 2, "T": 8, "H": 8}
SCAN_SIZE = {"B": 1, "T": 128, "H": 2, "D": 32}
SCAN_TINY = {"B": 1, "T": 16, "H": 1, "D": 8}
ROUNDS = 4  # see time_cases
# seconds of timed pairs per case: 22 cases take 36-38 s of timing at a load average of 14 on
# 2 cores, inside the 60 s budget of a CI step
MIN_RUN_TIME_S = 1.2
TINY_MIN_RUN_TIME_S = 0.02
RETRIES = 2  # see retime

CELLS = ("lstm", "gru", "elman", "slstm")
SCAN_OPS = {"chunk_gla": "gla", "chunk_delta_rule": "gated_delta", "chunk_mlstm": "mlstm"}
MODULES = ("LSTM", "GRU", "RNN", "sLSTM")
MODES = ("fwd", "fwd+bwd")
# the torch.nn class each case is timed against
TWIN = {"lstm": "LSTM", "gru": "GRU", "elman": "RNN", "slstm": "LSTM",
        "LSTM": "LSTM", "GRU": "GRU", "RNN": "RNN", "sLSTM": "LSTM",
        "chunk_gla": "LSTM", "chunk_delta_rule": "LSTM", "chunk_mlstm": "LSTM"}

# Regression margin of a case (a fraction: 0.3 allows a ratio 1.3x the baseline's): SAFETY times
# the run-to-run spread measured when the baseline was recorded, at least MARGIN_FLOOR (the
# spread another machine adds, which the recording machine cannot measure) and at most
# MARGIN_CAP, so that a 2x slow-down is always reported. The numbers behind them are in
# bench/results/cpu/microbench.md.
MARGIN_FLOOR = 0.25
SAFETY = 3.0
MARGIN_CAP = 0.75
# How ``bench.compare`` reads this suite's results: the paired ratio, not the time. "median_ci"
# is the width of the ~95 % interval of the median ratio (bench.timing.median_interval); the
# per-pair IQR measures single pairs, which a busy machine scatters far more than the median.
COMPARE = {"value": "ratio", "spread": "median_ci", "max_allowance": MARGIN_CAP}


@dataclass(frozen=True)
class MicroCase:
    """One timed comparison: ``kind`` (a cell, op or module name) of ``family`` in ``mode``."""

    family: str
    kind: str
    mode: str
    B: int
    T: int
    H: int  # hidden width; for linear_scan the number of heads
    D: int = 0  # linear_scan head dim K = V

    @property
    def width(self) -> int:
        """Hidden size of the torch.nn baseline."""
        return self.H * self.D if self.family == "linear_scan" else self.H

    @property
    def name(self) -> str:
        dims = f"H={self.H} D={self.D}" if self.family == "linear_scan" else f"H={self.H}"
        return f"{self.family} {self.kind} B={self.B} T={self.T} {dims} {self.mode}"

    @property
    def baseline(self) -> str:
        return f"torch.nn.{TWIN[self.kind]}"


def cases(tiny: bool) -> list[MicroCase]:
    """Every case of the suite, in the order they are timed."""
    rnn, scan = (RNN_TINY, SCAN_TINY) if tiny else (RNN_SIZE, SCAN_SIZE)
    out = [MicroCase("fused_rnn", cell, mode, **rnn) for cell in CELLS for mode in MODES]
    out += [MicroCase("linear_scan", op, mode, **scan) for op in SCAN_OPS for mode in MODES]
    out += [MicroCase("modules", name, mode, **rnn) for name in MODULES for mode in MODES]
    return out


def fused_rnn_backend(device) -> str:
    """The fused_rnn back end timed: "cpu" on a CPU (so a missing extension shows as skipped
    instead of silently timing the reference), "auto" elsewhere."""
    return "cpu" if torch.device(device).type == "cpu" else "auto"


def _grad_call(forward: Callable[[], torch.Tensor], leaves: list, dy: torch.Tensor, mode: str):
    """A no-argument callable: ``forward()`` under no_grad ("fwd") or with the gradients of
    ``leaves`` for the upstream gradient ``dy`` ("fwd+bwd")."""
    if mode == "fwd":
        def fwd():
            with torch.no_grad():
                return forward()
        return fwd

    def fwd_bwd():
        return torch.autograd.grad(forward(), leaves, dy)
    return fwd_bwd


def _torch_call(case: MicroCase, device, gen: torch.Generator):
    """The torch.nn baseline of ``case``: x [B, T, width] -> output [B, T, width]."""
    module = getattr(torch.nn, TWIN[case.kind])(case.width, case.width, batch_first=True,
                                                 device=device)
    x = torch.randn(case.B, case.T, case.width, generator=gen).to(device)
    dy = torch.randn(case.B, case.T, case.width, generator=gen).to(device)
    x.requires_grad_(case.mode == "fwd+bwd")
    return module, _grad_call(lambda: module(x)[0], [x, *module.parameters()], dy, case.mode)


def _fused_rnn_call(case: MicroCase, device, gen: torch.Generator):
    from flashseq.cells import get_cell
    from flashseq.ops import fused_rnn

    G = get_cell(case.kind).num_gates
    B, T, H = case.B, case.T, case.H
    wx = torch.randn(B, T, G, 1, H, generator=gen).to(device)
    r = (torch.randn(G, 1, H, H, generator=gen) * H ** -0.5).to(device)
    b = (torch.randn(G, 1, H, generator=gen) * 0.1).to(device)
    dh = torch.randn(B, T, 1, H, generator=gen).to(device)
    leaves = [t.requires_grad_(case.mode == "fwd+bwd") for t in (wx, r, b)]
    backend = fused_rnn_backend(device)
    return _grad_call(lambda: fused_rnn(wx, r, b, None, cell=case.kind, backend=backend)[0],
                      leaves, dh, case.mode)


def _scan_call(case: MicroCase, device, gen: torch.Generator):
    import flashseq.ops

    from bench.suites.linear_scan import make_inputs

    fn = getattr(flashseq.ops, case.kind)
    args, kwargs = make_inputs(SCAN_OPS[case.kind], case.B, case.T, case.H, case.D,
                               torch.float32, device, seed=int(gen.initial_seed()))
    do = torch.randn(case.B, case.T, case.H, case.D, generator=gen).to(device)
    leaves = [*args, *kwargs.values()]
    return _grad_call(lambda: fn(*args, backend="auto", **kwargs)[0], leaves, do, case.mode)


def _flashseq_module(case: MicroCase, twin: torch.nn.Module, device):
    import flashseq

    if case.kind == "sLSTM":
        return flashseq.sLSTM(case.H, case.H, batch_first=True, device=device)
    module = getattr(flashseq, case.kind)(case.H, case.H, batch_first=True, device=device)
    module.load_state_dict(twin.state_dict(), strict=True)
    return module


def _module_call(case: MicroCase, twin: torch.nn.Module, device, gen: torch.Generator):
    module = _flashseq_module(case, twin, device)
    x = torch.randn(case.B, case.T, case.H, generator=gen).to(device)
    dy = torch.randn(case.B, case.T, case.H, generator=gen).to(device)
    x.requires_grad_(case.mode == "fwd+bwd")
    return _grad_call(lambda: module(x)[0], [x, *module.parameters()], dy, case.mode)


def build(case: MicroCase, device, seed: int = 0):
    """(ours, baseline): the two no-argument callables timed in alternation for ``case``."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    twin, baseline = _torch_call(case, device, gen)
    if case.family == "fused_rnn":
        ours = _fused_rnn_call(case, device, gen)
    elif case.family == "linear_scan":
        ours = _scan_call(case, device, gen)
    elif case.family == "modules":
        ours = _module_call(case, twin, device, gen)
    else:
        raise ValueError("case.family must be fused_rnn, linear_scan or modules; got "
                         f"{case.family!r}")
    return ours, baseline


def provider(case: MicroCase, device) -> str:
    if case.family == "fused_rnn":
        return f"flashseq:{fused_rnn_backend(device)}"
    if case.family == "linear_scan":
        return "flashseq:auto"
    return f"flashseq.{case.kind}"


def _check_module(kind: str, device) -> str | None:
    """None if flashseq.<kind> in float32 matches a float64 reference (torch's twin, or for
    sLSTM the same module on the reference back end) in output and the gradient of x."""
    import flashseq

    torch.manual_seed(0)
    if kind == "sLSTM":
        ref = flashseq.sLSTM(6, 8, batch_first=True, backend="reference", dtype=torch.float64)
        ours = flashseq.sLSTM(6, 8, batch_first=True, device=device)
    else:
        ref = getattr(torch.nn, kind)(6, 8, batch_first=True, dtype=torch.float64)
        ours = getattr(flashseq, kind)(6, 8, batch_first=True, device=device)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 7, 6, dtype=torch.float64)
    results = []
    for m, dt, dev in ((ref, torch.float64, "cpu"), (ours, torch.float32, device)):
        leaf = x.to(device=dev, dtype=dt).requires_grad_(True)
        y = m(leaf)[0]
        dy = torch.linspace(-1, 1, y.numel(), dtype=dt, device=y.device).view_as(y)
        results.append((y, torch.autograd.grad(y, leaf, dy)[0]))
    tol = smoke.tolerance(torch.float32, device)
    bad = [msg for name, o, r in zip(("output", "grad x"), results[1], results[0])
           if (msg := smoke.check_same_output(f"flashseq.{kind} {name}", o, r, tol))]
    return ", ".join(bad) or None


def check_status(case: MicroCase, device) -> str | None:
    """None if the kernel behind ``case`` may be timed, else its row status ("skipped: ..." when
    it cannot run here, "failed: ..." when it disagrees with the reference or crashes)."""
    from flashseq.kernels.fused_rnn import backends

    try:
        if case.family == "fused_rnn":
            backend = fused_rnn_backend(device)
            reason = backends.unavailable_reason(backend, torch.device(device))
            if reason:
                return f"skipped: {reason}"
            wrong = smoke.check_fused_rnn(backend, device, torch.float32, cell=case.kind,
                                          B=2, T=5, NH=1, DH=8)
        elif case.family == "linear_scan":
            from bench.suites.linear_scan import smoke_status
            return smoke_status(SCAN_OPS[case.kind], "auto", torch.device(device), torch.float32)
        else:
            wrong = _check_module(case.kind, device)
    except NotImplementedError as err:
        return f"skipped: {err}"
    except Exception as err:  # our kernel crashing is a failure, reported in its row
        return f"failed: smoke check raised {type(err).__name__}: {str(err)[:200]}"
    return None if wrong is None else f"failed: smoke check: {wrong}"


def load_average() -> float | None:
    """The 1-minute load average (None where the OS does not report one)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _empty_row(case: MicroCase, device) -> dict:
    return {"case": case.name, "provider": provider(case, device), "median_ms": None,
            "min_ms": None, "iqr_ms": None, "family": case.family, "mode": case.mode,
            "baseline": case.baseline, "baseline_ms": None, "ratio": None, "median_ci": None,
            "paired_iqr": None, "pairs": None, "clock": None, "attempts": None,
            "load1": load_average()}


def _error_status(err: Exception) -> str:
    if isinstance(err, NotImplementedError):  # the documented "cannot serve this call"
        return f"skipped: {err}"
    return f"failed: {type(err).__name__}: {str(err)[:200]}"


def time_cases(work: list[MicroCase], device, min_run_time: float, statuses: dict,
               progress) -> list[dict]:
    """One row per case of ``work``; ``statuses[(family, kind)]`` None means time it, else the
    row carries that status.

    Each case is timed in ROUNDS rounds of ``min_run_time / ROUNDS`` seconds, the rounds going
    over every case in turn, and its pairs are pooled: a slow spell of the machine lasting a
    second or two then touches a part of every case's pairs instead of all of one case's."""
    rows = [_empty_row(case, device) for case in work]
    cpu_time = uses_cpu_time(device)
    calls, pairs = {}, {i: [] for i in range(len(work))}
    for i, case in enumerate(work):
        status = statuses[(case.family, case.kind)]
        if status is not None:
            rows[i]["status"] = status
            continue
        try:
            calls[i] = build(case, device)
        except Exception as err:
            rows[i]["status"] = _error_status(err)
    for _, i in progress([(r, i) for r in range(ROUNDS) for i in list(calls)]):
        if i not in calls:  # failed in an earlier round
            continue
        try:
            r = timing.measure_ratio(*calls[i], device=device, min_run_time=min_run_time / ROUNDS,
                                     cpu_time=cpu_time)
        except Exception as err:
            rows[i]["status"] = _error_status(err)
            del calls[i]
            continue
        pairs[i] += r["pair_ms"]
    for i in calls:
        ratios = [a / b for a, b in pairs[i]]
        low, high = timing.median_interval(ratios)
        rows[i].update({"median_ms": statistics.median(a for a, _ in pairs[i]),
                        "baseline_ms": statistics.median(b for _, b in pairs[i]),
                        "ratio": statistics.median(ratios), "median_ci": high - low,
                        "paired_iqr": timing.summarize(ratios)["iqr_ms"], "pairs": len(ratios),
                        "clock": "cpu" if cpu_time else "wall", "status": "ok"})
    return rows


def uses_cpu_time(device) -> bool:
    """Whether the pairs are timed in CPU time of this process rather than wall time: on a CPU
    at one torch thread, where every call runs in this thread. Time slices lost to other
    processes then do not count; on a loaded 2-core machine (load average 12) that took the
    run-to-run spread of the ratios from up to 2.5x down to 0.2 at most."""
    return torch.device(device).type == "cpu" and torch.get_num_threads() == 1


def _prepare_extension(device) -> None:
    """Load (or build, once: about a minute) the C++ CPU extension before anything is timed,
    saying so, so that a first-use build never lands inside a timed call."""
    if torch.device(device).type != "cpu":
        return
    from flashseq import _jit

    if _jit._load.cache_info().currsize == 0:  # not loaded yet in this process
        print("microbench: loading the C++ CPU extension (if this torch has none built yet, "
              "building it first: about a minute, once)", flush=True)
    _jit.extension_error()


def run(device, quick: bool, progress) -> list[dict]:
    """One row per case (``cases``); ``quick`` (``--tiny``) uses tiny sizes and short timings."""
    device = torch.device(device)
    _prepare_extension(device)
    work = cases(quick)
    checked: dict[tuple[str, str], str | None] = {}
    for case in work:
        key = (case.family, case.kind)
        if key not in checked:
            checked[key] = check_status(case, device)
    min_run_time = TINY_MIN_RUN_TIME_S if quick else MIN_RUN_TIME_S
    return time_cases(work, device, min_run_time, checked, progress)


def retime(rows: list[dict], suspects: set, device, quick: bool, progress) -> list[dict]:
    """``rows`` with every case named in ``suspects`` timed once more (``--compare`` calls this
    for the cases beyond the baseline's allowance, up to RETRIES times). Of a case's attempts
    the one with the lowest ratio is kept and "attempts" lists every attempt's ratio: noise
    seldom strikes one case in every attempt, a real slow-down always does."""
    device = torch.device(device)
    work = [c for c in cases(quick) if c.name in suspects]
    statuses = {(c.family, c.kind): None for c in work}
    min_run_time = TINY_MIN_RUN_TIME_S if quick else MIN_RUN_TIME_S
    again = {r["case"]: r for r in time_cases(work, device, min_run_time, statuses, progress)}
    out = []
    for row in rows:
        new = again.get(row["case"])
        if new is None or row.get("ratio") is None:
            out.append(row)
            continue
        tried = (row.get("attempts") or [row["ratio"]]) + [new.get("ratio")]
        best = new if new.get("ratio") is not None and new["ratio"] < row["ratio"] else row
        out.append({**best, "attempts": [round(v, 4) for v in tried if v is not None],
                    **{k: row[k] for k in ("run_ratios", "run_spread", "margin") if k in row}})
    return out


def margin_from_spread(run_spread: float | None) -> float:
    """The regression margin of a case whose ratio varied by ``run_spread`` ((max - min) /
    median over repeated runs): SAFETY x spread, clipped to [MARGIN_FLOOR, MARGIN_CAP]."""
    spread = 0.0 if run_spread is None else run_spread
    return min(MARGIN_CAP, max(MARGIN_FLOOR, SAFETY * spread))


def merge_runs(runs: list[list[dict]]) -> list[dict]:
    """Rows of several runs of the suite merged per (case, provider): the run with the median
    ratio, plus ``run_ratios`` (every run's ratio), ``run_spread`` and ``margin``. A case that
    failed in any run keeps that failure."""
    if not runs:
        raise ValueError("runs must hold at least one run's rows; got none")
    merged = []
    for i, first in enumerate(runs[0]):
        key = (first["case"], first["provider"])
        rows = [next(r for r in run if (r["case"], r["provider"]) == key) for run in runs]
        failed = [r for r in rows if str(r.get("status", "")).startswith("failed")]
        timed = [r for r in rows if isinstance(r.get("ratio"), (int, float))]
        if failed or len(timed) < len(rows):
            merged.append({**(failed or rows)[0], "run_ratios": None, "run_spread": None,
                           "margin": None})
            continue
        ratios = [r["ratio"] for r in timed]
        middle = statistics.median_low(ratios)
        keep = dict(timed[ratios.index(middle)])
        status = keep.pop("status")
        # one run measures no run-to-run spread: no margin (compare then uses its threshold)
        spread = ((max(ratios) - min(ratios)) / statistics.median(ratios)
                  if len(ratios) > 1 else None)
        merged.append({**keep, "ratio": statistics.median(ratios),
                       "run_ratios": [round(v, 4) for v in ratios], "run_spread": spread,
                       "margin": None if spread is None else margin_from_spread(spread),
                       "status": status})
    return merged


def summary(rows: list[dict]) -> list[str]:
    """Lines above the table: threads, load, the ratio per family and what did not run."""
    loads = [r["load1"] for r in rows if r.get("load1") is not None]
    lines = [f"threads: {torch.get_num_threads()}; 1-minute load average "
             + (f"{min(loads):.2f}-{max(loads):.2f}" if loads else "unknown")
             + f" on {os.cpu_count()} CPUs"]
    for r in rows:
        if r.get("ratio") is None:
            lines.append(f"{r['case']}: {r['status']}")
    timed = [r for r in rows if r.get("ratio")]
    for family in dict.fromkeys(r["family"] for r in timed):
        ratios = [r["ratio"] for r in timed if r["family"] == family]
        lines.append(f"{family}: ratio to torch.nn {min(ratios):.3g}-{max(ratios):.3g} over "
                     f"{len(ratios)} case(s) (below 1: faster than torch.nn)")
    return lines
