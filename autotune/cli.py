"""``flashseq-tune``: time the solver's best kernel configurations on this machine and record the
fastest per (kernel, shape bucket, dtype, device) in the tuning cache that dispatch reads.

    flashseq-tune --device cpu --ops lstm,gru --shapes small
    flashseq-tune --gpu auto --ops lstm,gru,slstm --shapes default
    flashseq-tune --dry-run --gpu h100            # candidates with predicted registers/smem

The cache is one JSON file per device under ``--cache`` (default ``$FLASHSEQ_CACHE_DIR/tune``,
else ``~/.cache/flashseq/tune``), which ``fused_rnn`` consults before its plan;
``FLASHSEQ_TUNING=off`` makes it ignore the cache (see ``flashseq.tuning``).

Exit status:
    0  done: every workload tuned and recorded (or, with --dry-run, the candidates listed)
    1  tuning ran but some workloads failed, or a candidate's output differed from the default
       configuration's (the others were recorded)
    2  bad usage, no CUDA GPU for --gpu auto, the named GPU is not this machine's, or (with
       --device cpu) the compiled CPU loop cannot be built or loaded here
    3  --budget ran out before every workload was tuned (the finished ones were recorded)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from flashseq import hardware

from . import workloads as wl

NO_GPU_MESSAGE = ("flashseq-tune: no CUDA GPU found; to see what tuning would do without one, "
                  "run: flashseq-tune --dry-run --gpu h100")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUDGET = 0, 1, 2, 3
EPILOG = """exit status:
  0  done: every workload tuned and recorded (or, with --dry-run, the candidates listed)
  1  tuning ran but some workloads failed, or a candidate's output differed from the
     default configuration's (the others were recorded)
  2  bad usage, no CUDA GPU for --gpu auto, the named GPU is not this machine's, or
     (--device cpu) the compiled CPU loop cannot be built or loaded here
  3  --budget ran out before every workload was tuned (the finished ones were recorded)

The cache is read by fused_rnn on every call of a tuned kernel (once per process from disk);
FLASHSEQ_TUNING=off ignores it."""


def default_cache_dir() -> Path:
    """$FLASHSEQ_CACHE_DIR/tune, else $XDG_CACHE_HOME (or ~/.cache)/flashseq/tune: the folder
    dispatch reads (flashseq.tuning.tune_dir)."""
    root = os.environ.get("FLASHSEQ_CACHE_DIR")
    if root:
        return Path(root) / "tune"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flashseq" / "tune"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashseq-tune", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Time the solver's best kernel configurations on this machine and record "
                    "the fastest in the tuning cache that flashseq's dispatch reads.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--gpu", default=None,
                       help="auto (the CUDA device here) or a GPU name: "
                            + ", ".join(hardware.known_names()) + " (default: auto)")
    where.add_argument("--device", choices=("cpu", "cuda"), default=None,
                       help="cpu: tune the compiled CPU loop's knobs; cuda: same as --gpu auto")
    parser.add_argument("--ops", default="lstm,gru",
                        help=f"comma-separated cells of fused_rnn: {', '.join(wl.OPS)}, or "
                             "fused_rnn for all (default: lstm,gru)")
    parser.add_argument("--shapes", default="small",
                        help="a preset (small, default; on a GPU also fused_rnn and "
                             "fused_rnn-tiny, the fused_rnn benchmark's shapes) or "
                             "comma-separated BxTxH / BxTxNHxDH shapes, e.g. "
                             "16x64x128,16x1024x12x64 (default: small)")
    parser.add_argument("--dtype", default=None, choices=("float32", "float64", "float16",
                                                          "bfloat16"),
                        help="default: float32 on CPU, bfloat16 on a GPU")
    parser.add_argument("-k", "--candidates", type=int, default=6, metavar="K",
                        help="candidates timed per workload, the solver's K best (default: 6)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU: tune for N torch threads (torch.set_num_threads; entries are "
                             "kept per thread count). Default: torch's current setting")
    parser.add_argument("--cache", type=Path, default=None,
                        help="tuning cache folder (default: $FLASHSEQ_CACHE_DIR/tune or "
                             "~/.cache/flashseq/tune, which dispatch reads)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the candidates (GPU: predicted registers and shared memory); "
                             "time nothing, write nothing")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the results table as JSON to PATH")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (for logs)")
    parser.add_argument("--md", type=Path, default=None, metavar="PATH",
                        help="also write the results table as Markdown to PATH")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="stop starting new candidates after this many seconds (exit 3 if "
                             "some workloads were left)")
    return parser


def device_text(identity: dict) -> str:
    """One line naming the device of a cache identity (GPU name and capability, or CPU model)."""
    if identity.get("kind") == "cuda":
        cap = ".".join(str(c) for c in identity.get("capability") or ())
        return f"{identity.get('name')} (sm {cap}, CUDA {identity.get('cuda')})"
    return f"{identity.get('model')} ({identity.get('isa')})"


def resolve_gpu(name: str):
    """(spec, present): the GPUSpec for ``name`` and whether that GPU is the one here.
    ``name="auto"`` returns (None, False) when there is no CUDA GPU."""
    import torch

    here = hardware.detect() if torch.cuda.is_available() else None
    if name == "auto":
        return here, here is not None
    spec = hardware.GPUSpec.from_name(name)  # ValueError names the known GPUs
    present = here is not None and hardware.match_device_name(here.name) == \
        hardware.match_device_name(spec.name)
    return spec, present


class _PlainBar:
    """The progress bar when tqdm is not installed: one line per workload on stderr."""

    def __init__(self, total):
        self.total, self.n = total, 0

    def update(self, n=1):
        self.n += n

    def set_description(self, text):
        print(f"[{self.n}/{self.total} candidates] {text}", file=sys.stderr, flush=True)

    def close(self):
        print(f"[{self.n}/{self.total} candidates] done", file=sys.stderr, flush=True)


def progress_bar(total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainBar(total)
    return tqdm(total=total, unit="cand", file=sys.stderr, leave=False)


def _speedup(ratio) -> str:
    if isinstance(ratio, str):  # "n/a (why)": the peer could not run
        return ratio.replace("|", "/")
    return "-" if ratio is None else f"{1 / ratio:.2f}x"


def format_table(results, peer_names) -> str:
    """The final table (Markdown): best config, time, speed-up over the untuned configuration
    and over each peer (from alternating timings: median of per-pair ratios, inverted); a peer
    that could not run shows "n/a (why)"."""
    if isinstance(peer_names, str):
        peer_names = (peer_names,)
    peer_names = tuple(peer_names)
    head = "".join(f" speed-up vs {p} |" for p in peer_names)
    lines = ["| workload | best config | time ms | untuned ms | speed-up vs untuned |" + head,
             "|---|---|---:|---:|---:|" + "---:|" * len(peer_names)]
    for r in results:
        if r.time_ms is None:
            why = r.error or r.skipped or "not tuned"
            lines.append(f"| {r.workload.label} | {why} | - | - | - |" + " - |" * len(peer_names))
            continue
        ratios = getattr(r, "peer_ratios", None) or {}
        if not ratios and len(peer_names) == 1:
            ratios = {peer_names[0]: r.ratio_vs_peer}
        cells = "".join(f" {_speedup(ratios.get(p))} |" for p in peer_names)
        lines.append(f"| {r.workload.label} | {r.config_text} | {r.time_ms:.3f} | "
                     f"{r.untuned_ms:.3f} | {_speedup(r.ratio_vs_untuned)} |" + cells)
    return "\n".join(lines)


def dry_run_cpu(work, k: int) -> None:
    from flashseq.kernels.fused_rnn import cpu_config
    import torch

    print(f"CPU candidates (solver's best {k} by estimated ns per step; "
          f"{torch.get_num_threads()} threads):")
    for w in work:
        print(f"  {w.label}:")
        for config, est in cpu_config.candidates(w.cell, w.batch, w.heads, w.head_dim,
                                                 getattr(torch, w.dtype), k=k):
            print(f"    {config.describe():<40} est {est / 1000:.1f} us/step")


def dry_run_gpu(spec, work, k: int) -> None:
    from .candidates import gpu_candidates
    import torch

    print(f"{spec.name} candidates (plan model's best {k} by predicted step time; Triton):")
    for w in work:
        print(f"  {w.label}:")
        try:
            found = gpu_candidates(w.cell, w.batch, w.heads, w.head_dim, getattr(torch, w.dtype),
                                   spec, k=k)
        except (ValueError, TypeError) as err:
            print(f"    no candidates ({err})")
            continue
        for c in found:
            print(f"    {c['path']:<8} BB={c['BB']:<3} BH={c['BH']:<4} BK={c['BK']:<4} "
                  f"warps={c['num_warps']:<2} stages={c['num_stages']} "
                  f"P={c['programs_per_head']:<2} registers={c['registers_per_thread']} "
                  f"smem={c['shared_memory_bytes']} B "
                  f"predicted {c['predicted_step_ns']:.0f} ns/step")


def run_tuning(target, work, args) -> int:
    from . import cache, runner

    settings = runner.Settings(k=args.candidates)
    bar = None if args.no_progress else progress_bar(len(work) * args.candidates)
    start = time.monotonic()
    try:
        results = runner.tune(target, work, settings, progress=bar, budget_s=args.budget)
    finally:
        if bar is not None:
            bar.close()
    done = [r for r in results if r.time_ms is not None]
    folder = args.cache or default_cache_dir()
    path = None
    if done:
        path = cache.record(target.identity(), [runner.entry(target, r) for r in done], folder)
    table = format_table(results, target.peer_names)
    print(table)
    import torch
    footer = (f"{len(done)} of {len(results)} workloads tuned in {time.monotonic() - start:.0f} s "
              f"({torch.get_num_threads()} torch threads)")
    print(f"\n{footer}" + (f"; cache: {path}" if path else "; nothing recorded"))
    if args.cache is not None and Path(args.cache).resolve() != default_cache_dir().resolve():
        print(f"note: dispatch reads {default_cache_dir()}; set FLASHSEQ_CACHE_DIR so that "
              "its tune/ folder is this one to use these results")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": target.identity(),
                                         "command": "flashseq-tune " + " ".join(args.argv),
                                         "peers": list(target.peer_names),
                                         "results": [r.to_json() for r in results]}, indent=1))
    if args.md is not None:
        from .targets import PEER_NOTES

        notes = "".join(f"- {p}: {PEER_NOTES[p]}\n" for p in target.peer_names
                        if p in PEER_NOTES)
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(f"# flashseq-tune on {device_text(target.identity())}\n\n"
                           f"Command: `flashseq-tune {' '.join(args.argv)}`\n\n{table}\n\n"
                           f"{footer}. Speed-ups are medians of per-pair ratios (the two calls "
                           "timed in alternation), forward + backward.\n\n" + notes)
    # a candidate whose output differs from the default's is a kernel bug: fail loudly
    if any(r.error or r.rejected for r in results):
        for r in results:
            for why in r.rejected:
                print(f"rejected: {r.workload.label}: {why}")
        return EXIT_FAILED
    if any(r.skipped for r in results):
        return EXIT_BUDGET
    return EXIT_OK


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.candidates < 1:
        parser.error("--candidates must be >= 1")
    if args.budget is not None and not args.budget > 0:
        parser.error("--budget must be > 0 seconds")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        import torch
        torch.set_num_threads(args.threads)
    on_cpu = args.device == "cpu"
    try:
        ops = wl.parse_ops(args.ops)
        shapes = wl.parse_shapes(args.shapes, "cpu" if on_cpu else "gpu")
    except ValueError as err:
        parser.error(str(err))  # exits 2
    dtype = args.dtype or ("float32" if on_cpu else "bfloat16")
    work = wl.workloads(ops, shapes, dtype)
    if on_cpu:
        if dtype not in ("float32", "float64"):
            parser.error(f"--dtype {dtype}: the CPU loop serves float32 and float64")
        if args.dry_run:
            dry_run_cpu(work, args.candidates)
            return EXIT_OK
        from flashseq import _jit
        if _jit.extension_error() is not None:
            print(f"flashseq-tune: the compiled CPU loop is not available here: "
                  f"{_jit.extension_error()}")
            return EXIT_USAGE
        _jit.extension()  # a first-use build happens here, not inside the first timing
        from .targets import CpuTarget
        return run_tuning(CpuTarget(), work, args)
    try:
        spec, present = resolve_gpu(args.gpu or "auto")
    except ValueError as err:
        parser.error(f"--gpu: {err}")  # exits 2
    if spec is None:
        print(NO_GPU_MESSAGE)
        return EXIT_USAGE
    if args.dry_run:
        dry_run_gpu(spec, work, args.candidates)
        return EXIT_OK
    if not present:
        print(f"flashseq-tune: tuning times kernels on the GPU itself and {spec.name} is not "
              "here; use --dry-run to see the candidates")
        return EXIT_USAGE
    from .targets import GpuTarget
    return run_tuning(GpuTarget(spec), work, args)


if __name__ == "__main__":
    sys.exit(main())
