"""Check that dispatch uses the tuning cache and what it gains: ``fused_rnn`` forward + backward
with the cache against the same calls with ``FLASHSEQ_TUNING=off``, timed in alternation (the
median of per-pair ratios), on the CPU loop.

    python -m autotune.verify --ops lstm,gru --shapes small      # prints a Markdown table

Each tuned call must report a cached config (``cpu_config.last_run().source == "cache"``) and
each untuned one the default; otherwise the row says so. The cache read is the one dispatch uses
(``$FLASHSEQ_CACHE_DIR/tune``). Exit status 0, or 1 when a workload had no cache entry.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from flashseq import tuning
from flashseq.kernels.fused_rnn import cpu_config

from . import timing
from .targets import CpuTarget
from .workloads import parse_ops, parse_shapes, workloads


def _with_tuning(on: bool, fn):
    def run():
        os.environ[tuning.ENV] = "on" if on else "off"
        fn()
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autotune.verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default="lstm,gru")
    parser.add_argument("--shapes", default="small")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--time", type=float, default=1.0, help="seconds of pairs per workload")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (the cache keeps entries per thread count)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    target = CpuTarget()
    saved = os.environ.get(tuning.ENV)
    status = 0
    print("| workload | cached config | tuned ms | untuned ms | tuned / untuned (paired) | "
          "pairs |\n|---|---|---:|---:|---:|---:|")
    try:
        for w in workloads(parse_ops(args.ops), parse_shapes(args.shapes, "cpu"), args.dtype):
            fn = target.call(w, None)  # no override: dispatch decides
            _with_tuning(True, fn)()
            run = cpu_config.last_run()
            if run.source != "cache":
                print(f"| {w.label} | no cache entry | - | - | - | - |")
                status = 1
                continue
            _with_tuning(False, fn)()
            if cpu_config.last_run().source != "default":
                print(f"| {w.label} | FLASHSEQ_TUNING=off still used a tuned config | - | - | "
                      "- | - |")
                status = 1
                continue
            pair = timing.paired_ratio(_with_tuning(True, fn), _with_tuning(False, fn), "cpu",
                                       min_time=args.time, max_time=3 * args.time)
            print(f"| {w.label} | {run.config.describe()} | {pair['fn_ms']:.3f} | "
                  f"{pair['baseline_ms']:.3f} | {pair['ratio']:.3f} | {pair['pairs']} |")
    finally:
        if saved is None:
            os.environ.pop(tuning.ENV, None)
        else:
            os.environ[tuning.ENV] = saved
    print(f"\n{torch.get_num_threads()} torch threads; load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return status


if __name__ == "__main__":
    sys.exit(main())
