"""Suite "quick" (``python -m bench quick``): one small LSTM workload on whatever device is here,
every flashseq.ops.fused_rnn back end against torch.nn.LSTM, forward and forward+backward.

Back ends that cannot run here are listed as skipped; one that fails its smoke check against
the float64 reference is listed as failed and never timed. On CPU it runs at one torch thread
unless ``--threads`` says otherwise: on a shared machine two threads fight other processes for
the cores, and the spread of the runs can then exceed the median. ``summary`` gives the few
lines printed above the table, with a warning when a spread is large against its median.
"""
from __future__ import annotations

import torch

from bench import runner, smoke
from bench.rnn_workloads import MODES, LSTMWorkload, fused_rnn_call, make_tensors, torch_lstm_call
from bench.suites import CorrectnessError
from bench.suites.fused_rnn import BASELINE, backend_status
from flashseq.kernels.fused_rnn.backends import BACKEND_MODULES

DESCRIPTION = ("A small float32 LSTM (B=8, T=64, H=128) on the device at hand: every "
               "fused_rnn back end (projection GEMM included) vs torch.nn.LSTM.")

WORKLOAD = {"B": 8, "T": 64, "H": 128}
TINY_WORKLOAD = {"B": 2, "T": 8, "H": 16}
DEFAULT_CPU_THREADS = 1  # python -m bench applies it on CPU unless --threads is given
# A spread (inter-quartile range of the runs) above this fraction of the median makes the
# summary warn: the machine was busy and the ratios are not to be trusted.
SPREAD_WARNING = 0.25


def run(device, quick: bool, progress) -> list[dict]:
    """Rows for each back end and torch.nn.LSTM on the small workload (tiny when ``quick``,
    i.e. ``--tiny``)."""
    wrong = smoke.check_lstm_mapping()
    if wrong:
        raise CorrectnessError(f"the benchmark's LSTM set-up is not torch.nn.LSTM: {wrong}")
    device = torch.device(device)
    # float32 everywhere: the reference back end in bfloat16 is not accurate enough to pass
    # the smoke check, and this suite is about whether each back end runs, not peak speed.
    dtype = torch.float32
    size = TINY_WORKLOAD if quick else WORKLOAD
    providers = [runner.Provider(f"flashseq:{name}",
                                 lambda data, name=name: fused_rnn_call(*data, name),
                                 status=backend_status(name, device, dtype, NH=1))
                 for name in BACKEND_MODULES]
    providers.append(runner.Provider(BASELINE, lambda data: torch_lstm_call(*data), peer=True))
    rows = []
    for mode in progress(MODES):
        w = LSTMWorkload(B=size["B"], T=size["T"], I=size["H"], H=size["H"], NH=1, mode=mode,
                         dtype=dtype, device=device)
        rows += runner.time_case(w.case, (w, make_tensors(w)), providers, device=device,
                                 min_run_time=0.05 if quick else 0.3, extra={"mode": mode})
    return runner.add_ratios(rows, BASELINE)


def _spread(row: dict) -> float | None:
    median, iqr = row.get("median_ms"), row.get("iqr_ms")
    return iqr / median if median and iqr is not None else None


def summary(rows: list[dict]) -> list[str]:
    """A few plain lines for a person: per mode, each timed provider's median with its spread
    and its ratio to torch.nn.LSTM; then which back ends did not run and why; then a warning
    per timing whose spread exceeds SPREAD_WARNING of its median."""
    lines = [f"threads: {torch.get_num_threads()} (change with --threads N)"]
    for mode in dict.fromkeys(r.get("mode") for r in rows):
        timed = [r for r in rows if r.get("mode") == mode and r.get("median_ms")]
        parts = []
        for r in sorted(timed, key=lambda r: r["median_ms"]):
            ratio = r.get("ratio")
            vs = "" if r["provider"] == BASELINE or ratio is None else f", {ratio:.2f}x torch's time"
            parts.append(f"{r['provider']} {r['median_ms']:.3g} ms "
                         f"(spread {r['iqr_ms']:.2g} ms{vs})")
        lines.append(f"{mode}: " + ("; ".join(parts) if parts else "nothing timed"))
    not_run = {r["provider"]: r["status"] for r in rows if not r.get("median_ms")}
    for provider, status in not_run.items():
        lines.append(f"{provider}: {status}")
    advice = "rerun on a quiet machine" + (" or with fewer --threads"
                                           if torch.get_num_threads() > 1 else "")
    for r in rows:
        spread = _spread(r)
        if spread is not None and spread > SPREAD_WARNING:
            lines.append(f"warning: {r['provider']} ({r['mode']}) varied by {spread:.0%} of its "
                         f"median between runs: the machine is busy, so these times and ratios "
                         f"are rough; {advice}")
    return lines
