"""Suite "parallel_rnn": ``flashseq.ops.parallel_rnn`` (Newton iterations + parallel scan)
against the sequential ``flashseq.ops.fused_rnn`` on the same weights.

LSTM, structure "block": B=16, heads of DH=8 (NH=4 on the CPU, NH=8 on CUDA). Each case times
the two calls in alternation (``bench.timing.measure_ratio``, median of per-pair ratios);
``ratio`` = parallel time / sequential time (below 1: parallel wins), ``newton_iterations`` the
iterations the parallel call took on these inputs.
CPU: float32, forward (no_grad), T in {256, ..., 65536}, one torch thread for both calls
(``DEFAULT_CPU_THREADS``; ``--threads`` overrides): on the shared 2-core machine these results
come from, two threads measured 20x slower for the parallel call (thousands of small parallel
regions, each waiting for a core other processes hold) and 3.6x slower for the sequential one.
A parallel call at T=65536 takes about a minute on the CPU.
CUDA: bfloat16 inputs (Newton runs in float32), forward and forward+backward,
T in {256, 1024, 4096, 16384, 65536}.
Before anything is timed, parallel_rnn must match fused_rnn (backend "reference") on a small case.
"""
from __future__ import annotations

import torch

from bench.suites import CorrectnessError
from bench.timing import measure_ratio

DESCRIPTION = ("Parallel-in-time LSTM (Newton + parallel scan, structure block, DH=8 heads, B=16) "
               "vs the sequential fused_rnn, same weights; ratio = parallel / sequential time.")

CPU = dict(B=16, NH=4, DH=8, T=(256, 1024, 4096, 16384, 65536), dtype=torch.float32,
           modes=("fwd",))
DEFAULT_CPU_THREADS = 1  # python -m bench applies it on CPU unless --threads is given
CPU_QUICK = dict(B=2, NH=1, DH=8, T=(32,), dtype=torch.float32, modes=("fwd",))
GPU = dict(B=16, NH=8, DH=8, T=(256, 1024, 4096, 16384, 65536), dtype=torch.bfloat16,
           modes=("fwd", "fwd+bwd"))
GPU_QUICK = dict(B=2, NH=2, DH=8, T=(256,), dtype=torch.bfloat16, modes=("fwd", "fwd+bwd"))
CELL, STRUCTURE = "lstm", "block"


def make_inputs(B, T, NH, DH, dtype, device, seed=0):
    """(wx, r, b, states) with requires_grad; r scaled so the recurrence neither saturates nor
    vanishes (1/sqrt(DH))."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device, dtype).requires_grad_()

    return (rnd(B, T, 4, NH, DH), rnd(4, NH, DH, DH, scale=DH ** -0.5), rnd(4, NH, DH, scale=0.1),
            rnd(2, B, NH, DH, scale=0.5))


def _calls(inputs, mode, stats):
    from flashseq.ops import fused_rnn, parallel_rnn

    def par():
        return parallel_rnn(*inputs, cell=CELL, structure=STRUCTURE, stats=stats)

    def seq():
        return fused_rnn(*inputs, cell=CELL)

    def timed(fn):
        def fwd():
            with torch.no_grad():
                fn()

        def fwd_bwd():
            h, last = fn()
            torch.autograd.grad(h.float().sum() + last.float().sum(), inputs)

        return fwd if mode == "fwd" else fwd_bwd

    return timed(par), timed(seq)


def smoke_check(device):
    """Raise CorrectnessError unless parallel_rnn matches fused_rnn on a small float32 case."""
    from flashseq.ops import fused_rnn, parallel_rnn
    wx, r, b, s = (t.detach().float() for t in make_inputs(2, 300, 2, 8, torch.float32, device, 1))
    h, last = parallel_rnn(wx, r, b, s, cell=CELL, structure=STRUCTURE)
    h_ref, _ = fused_rnn(wx.double(), r.double(), b.double(), s.double(), cell=CELL,
                         backend="reference")
    err = float((h.double() - h_ref).norm() / h_ref.norm())
    if not err <= 1e-5:
        raise CorrectnessError(f"parallel_rnn vs fused_rnn: relative error {err:.2e} > 1e-5")


def run(device, quick: bool, progress) -> list[dict]:
    """Two rows per (T, mode): the parallel call (with its ratio) and the sequential baseline."""
    from flashseq.ops import ParallelRNNStats
    device = torch.device(device)
    grid = (GPU_QUICK if quick else GPU) if device.type == "cuda" else (CPU_QUICK if quick else CPU)
    smoke_check(device)
    cases = [(T, mode) for T in grid["T"] for mode in grid["modes"]]
    rows = []
    for T, mode in progress(cases):
        inputs = make_inputs(grid["B"], T, grid["NH"], grid["DH"], grid["dtype"], device)
        stats = ParallelRNNStats()
        par, seq = _calls(inputs, mode, stats)
        case = f"lstm block B={grid['B']} T={T} NH={grid['NH']} DH={grid['DH']} {mode}"
        extra = {"T": T, "mode": mode, "dtype": str(grid["dtype"]).removeprefix("torch.")}
        m = measure_ratio(par, seq, device=device, min_run_time=0.05 if quick else 0.5)
        rows.append({"case": case, "provider": "flashseq:parallel_rnn", "median_ms": m["fn_ms"],
                     "min_ms": None, "iqr_ms": None, **extra, "ratio": m["ratio"],
                     "ratio_ci": m["ratio_ci"], "pairs": m["pairs"],
                     "newton_iterations": stats.iterations, "fell_back": stats.fell_back,
                     "status": "ok"})
        rows.append({"case": case, "provider": "flashseq:fused_rnn", "median_ms": m["baseline_ms"],
                     "min_ms": None, "iqr_ms": None, **extra, "ratio": 1.0, "status": "ok"})
    return rows


def summary(rows: list[dict]) -> list[str]:
    """Where parallel wins, and its speed-up (sequential / parallel time) at the largest T."""
    lines = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        par = [r for r in rows if r["mode"] == mode and r["provider"] == "flashseq:parallel_rnn"]
        if not par:
            continue
        wins = [r["T"] for r in par if r["ratio"] is not None and r["ratio"] < 1]
        last = max(par, key=lambda r: r["T"])
        lines.append(f"{mode}: parallel wins from T = {min(wins)}" if wins else
                     f"{mode}: parallel never wins up to T = {last['T']}")
        lines.append(f"{mode}: speed-up at T = {last['T']}: {1 / last['ratio']:.3g}x "
                     f"(ratio {last['ratio']:.3g}, {last['newton_iterations']} Newton iterations)")
    return lines
