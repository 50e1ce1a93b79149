"""``python -m bench [suite] [--tiny] [--threads N] [--json out.json] [--md out.md] [--png out.png]``
and ``python -m bench compare old.json new.json [--threshold 0.1]``.

With no suite, lists the suites. ``--tiny`` runs a suite at tiny sizes (does it run end to end?);
``--threads`` sets torch's CPU threads (default: the suite's ``DEFAULT_CPU_THREADS`` if it has
one, e.g. 1 for ``quick``, else torch's own default). A suite may define ``summary(rows)``, lines
printed above the table. Exit status: 0 done, 1 a kernel failed its correctness check (or, for
compare, a regression), 2 bad usage (for compare also a malformed result file; for a suite an
output path that cannot be written, found before the suite runs).
"""
from __future__ import annotations

import argparse
import json
import sys

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


def _run_and_report(module, device, args) -> int:
    progress = make_progress(not args.no_progress, args.suite)
    try:
        rows = module.run(device, args.tiny, progress)
    except CorrectnessError as err:
        print(f"bench: suite {args.suite!r} refused to time: {err}", file=sys.stderr)
        return 1
    result = report.make_result(args.suite, module.DESCRIPTION, device, rows)
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
    failed = failures(rows)
    if failed:
        names = sorted({r["provider"] for r in failed})
        print(f"bench: {len(failed)} row(s) failed (providers {names}); see the status column",
              file=sys.stderr)
        return 1
    return 0


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
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch threads on CPU (default: 1 for the quick suite, torch's "
                             "default for the others)")
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
