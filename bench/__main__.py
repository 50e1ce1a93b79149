"""``python -m bench [suite] [--tiny] [--threads N] [--json out.json] [--md out.md] [--png out.png]
[--runs N] [--compare baseline.json]`` and ``python -m bench compare old.json new.json
[--threshold 0.1]``.

With no suite, lists the suites. ``--tiny`` runs a suite at tiny sizes (does it run end to end?);
``--threads`` sets torch's CPU threads (default: the suite's ``DEFAULT_CPU_THREADS`` if it has
one, e.g. 1 for ``quick``, else torch's own default). A suite may define ``summary(rows)``, lines
printed above the table. ``--runs N`` repeats a suite that defines ``merge_runs`` (microbench)
and keeps its run-to-run spread; ``--compare`` compares the run with a result file as
``python -m bench compare`` does. Exit status: 0 done, 1 a kernel failed its correctness check
(or, for compare and ``--compare``, a regression), 2 bad usage (for compare also a malformed
result file, or no case timed in both; for a suite an output path that cannot be written or a
``--compare`` file that is not a result, found before the suite runs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from . import compare, report
from .outputs import check_outputs
from .peers import PEER_MODULES, import_reason
from .progress import make_progress
from .runner import failures
from .suites import SUITES, CorrectnessError, load


def _list_suites() -> int:
    print("suites (run one with: python -m bench SUITE):")
    for name in SUITES:
        try:
            description = load(name).DESCRIPTION
        except ImportError as err:
            description = f"(not importable here: {err})"
        print(f"  {name:<10} {description}")
    print("compare two results: python -m bench compare old.json new.json")
    return 0


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def _load_baseline(path):
    """The checked result at ``path`` for ``--compare``; ``ValueError`` if it is not one."""
    try:
        baseline = report.load_json(path)
    except OSError as err:
        raise ValueError(f"cannot read --compare file {path}: {err.strerror or err}") from None
    compare.check_result(baseline, path)
    return baseline


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def run_suite(args) -> int:
    problem = check_outputs({"--json": args.json, "--md": args.md, "--png": args.png})
    if problem:  # before the suite runs, not after it
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    try:
        module = load(args.suite)
    except ImportError as err:
        print(f"bench: suite {args.suite!r} is registered but does not import: {err}", file=sys.stderr)
        return 1
    if args.headline and not getattr(module, "HEADLINE", False):
        print(f"bench: --headline needs a suite with headline workloads (fused_rnn); "
              f"{args.suite!r} has none", file=sys.stderr)
        return 2
    if args.runs > 1 and not hasattr(module, "merge_runs"):
        print(f"bench: --runs needs a suite that merges runs (microbench); {args.suite!r} does "
              "not", file=sys.stderr)
        return 2
    args.baseline = None
    if args.compare:
        try:  # a bad baseline is found before the suite runs, not after it
            args.baseline = _load_baseline(args.compare)
        except ValueError as err:
            print(f"bench: {err}", file=sys.stderr)
            return 2
    device = torch.device(args.device or _default_device())
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"bench: --device {args.device} asked for, but torch sees no CUDA device", file=sys.stderr)
        return 2
    threads = args.threads or getattr(module, "DEFAULT_CPU_THREADS", None)
    if device.type != "cpu" or not threads:
        return _run_and_report(module, device, args)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_and_report(module, device, args)
    finally:  # main() may be called in-process (tests): leave torch as it was
        torch.set_num_threads(before)


def _retime_suspects(module, rows, device, args) -> list[dict]:
    """Time again, up to ``module.RETRIES`` times, the cases beyond the baseline's allowance
    (the suite keeps each case's best attempt), so one noisy moment fails no CI run."""
    for attempt in range(module.RETRIES):
        suspects = {r["case"] for r in compare.compare(args.baseline, {"rows": rows},
                                                       args.threshold)
                    if r["verdict"] == "regression"}
        if not suspects:
            break
        print(f"bench: {len(suspects)} case(s) beyond the baseline's allowance; timing them "
              f"again ({attempt + 1}/{module.RETRIES})", flush=True)
        rows = module.retime(rows, suspects, device, args.tiny,
                             make_progress(not args.no_progress, f"{args.suite} again"))
    return rows


def _run_and_report(module, device, args) -> int:
    start, load_before = time.perf_counter(), _load_average()
    runs = []
    try:
        for i in range(args.runs):
            label = args.suite if args.runs == 1 else f"{args.suite} {i + 1}/{args.runs}"
            extra = {"headline": True} if args.headline else {}
            runs.append(module.run(device, args.tiny, make_progress(not args.no_progress, label),
                                   **extra))
    except CorrectnessError as err:
        print(f"bench: suite {args.suite!r} refused to time: {err}", file=sys.stderr)
        return 1
    rows = module.merge_runs(runs) if hasattr(module, "merge_runs") else runs[0]
    if args.baseline is not None and hasattr(module, "retime"):
        rows = _retime_suspects(module, rows, device, args)
    result = report.make_result(args.suite, module.DESCRIPTION, device, rows)
    # the load others put on the machine is part of how to read the numbers
    result["conditions"] = {"torch_threads": torch.get_num_threads(), "runs": args.runs,
                            "load_average_before": load_before,
                            "load_average_after": _load_average(),
                            "wall_s": round(time.perf_counter() - start, 1)}
    if hasattr(module, "COMPARE"):
        result["compare"] = dict(module.COMPARE)
    if hasattr(module, "summary"):
        print("\n".join(module.summary(rows)) + "\n")
    print(report.markdown(result))
    if args.json:
        report.write_json(result, args.json)
    if args.md:
        report.write_markdown(result, args.md)
    if args.png:
        from .plot import write_png
        write_png(result, args.png)
    code = 0
    if args.baseline is not None:
        print(f"\ncompared with {args.compare}:")
        # 2 when no case is timed in both: a baseline of another suite or device is bad usage
        code = compare.report_comparison(args.baseline, result, args.compare, "this run",
                                         args.threshold)
    failed = failures(rows)
    if failed:
        names = sorted({r["provider"] for r in failed})
        print(f"bench: {len(failed)} row(s) failed (providers {names}); see the status column",
              file=sys.stderr)
        return 1
    return code


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--quick" in argv:  # the flag's old name, easy to mix up with the suite "quick"
        print("bench: --quick is now --tiny (tiny sizes); the suite `quick` is "
              "`python -m bench quick`", file=sys.stderr)
        return 2
    if argv[:1] == ["compare"]:
        parser = argparse.ArgumentParser(prog="python -m bench compare",
                                         description="Compare two result files; exit 1 on a "
                                                     "regression beyond the noise threshold.")
        parser.add_argument("old", help="baseline result JSON")
        parser.add_argument("new", help="new result JSON")
        parser.add_argument("--threshold", type=float, default=compare.DEFAULT_THRESHOLD,
                            help="relative slow-down always counted as noise (default: 0.10)")
        args = parser.parse_args(argv[1:])
        try:
            return compare.main(args.old, args.new, args.threshold)
        except (OSError, ValueError) as err:
            print(f"bench compare: {err}", file=sys.stderr)
            return 2
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description="Run a benchmark suite and print a table.")
    parser.add_argument("suite", nargs="?", choices=list(SUITES),
                        help="the suite to run; none lists them")
    parser.add_argument("--json", help="write the result (machine, versions, rows) as JSON here")
    parser.add_argument("--md", help="write the Markdown report here")
    parser.add_argument("--png", help="write a bar chart here (needs matplotlib; skipped without)")
    parser.add_argument("--device", help="cpu or cuda[:N] (default: cuda when present, else cpu)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes and short timings: checks the suite runs, numbers mean little")
    parser.add_argument("--headline", action="store_true",
                        help="only the workloads the README quotes (fused_rnn; a GPU session's "
                             "first benchmark)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch threads on CPU (default: 1 for the quick suite, torch's "
                             "default for the others)")
    parser.add_argument("--runs", type=_positive_int, default=1,
                        help="run the suite N times and keep each case's run-to-run spread "
                             "(microbench: how a --compare baseline is recorded)")
    parser.add_argument("--compare", metavar="BASELINE",
                        help="compare the run with this result file; exit 1 on a regression "
                             "beyond the noise (as python -m bench compare)")
    parser.add_argument("--threshold", type=float, default=compare.DEFAULT_THRESHOLD,
                        help="with --compare: relative slow-down always counted as noise "
                             "(default: 0.10; a baseline's per-case margin may allow more)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--list-names", action="store_true", help="print the suite names, one a line")
    parser.add_argument("--machine", action="store_true",
                        help="print the machine, versions and importable peers as JSON")
    args = parser.parse_args(argv)
    if args.list_names:
        print("\n".join(SUITES))
        return 0
    if args.machine:
        info = report.machine_info(args.device or _default_device())
        info["peers"] = {m: import_reason(m) or "importable" for m in PEER_MODULES}
        print(json.dumps(info, indent=2))
        return 0
    if args.suite is None:
        return _list_suites()
    return run_suite(args)


if __name__ == "__main__":
    sys.exit(main())
