"""``flashseq-tune``: choose and record the fastest kernel configuration per GPU.

Stub for now (the tuning itself is a later issue): it resolves the GPU, says what tuning will
do and, with ``--dry-run``, prints the solver's plans for the tuned workloads when
``flashseq.kernels.fused_rnn.plan`` exists. Exit status: 0 dry run done, 1 tuning not
implemented yet, 2 bad usage or no CUDA GPU for ``--gpu auto``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from flashseq import hardware

OPS = ("fused_rnn",)
# The workloads tuning covers first: the Triton issue's head-wise LSTM and its cells.
TUNED_WORKLOADS = [
    {"cell": cell, "batch": 16, "steps": 1024, "heads": 768 // dh, "head_dim": dh,
     "dtype": "bfloat16"}
    for cell in ("lstm", "gru", "slstm")
    for dh in (16, 32, 64, 128, 256, 384, 768)
]
PLAN_TIME_LIMIT_S = 10.0  # per solve; a dry run must not hang on one hard model
NO_GPU_MESSAGE = ("flashseq-tune: no CUDA GPU found; to see what tuning would do without one, "
                  "run: flashseq-tune --dry-run --gpu h100")


def default_cache_dir() -> Path:
    """$FLASHSEQ_CACHE_DIR/tune, else $XDG_CACHE_HOME (or ~/.cache)/flashseq/tune."""
    root = os.environ.get("FLASHSEQ_CACHE_DIR")
    if root:
        return Path(root) / "tune"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flashseq" / "tune"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashseq-tune",
        description="Tune flashseq's kernels for a GPU and store the result in the tuning cache.")
    parser.add_argument("--gpu", default="auto",
                        help="auto (the CUDA device here) or a GPU name: "
                             + ", ".join(hardware.known_names()) + " (default: auto)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plans and what would be measured; run nothing")
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS, metavar="OP",
                        help=f"op families to tune, from {list(OPS)} (default: all)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="tuning cache folder (default: $FLASHSEQ_CACHE_DIR/tune or "
                             "~/.cache/flashseq/tune)")
    return parser


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


PLAN_FIELDS = ("path", "BB", "BH", "BK", "num_warps", "num_stages", "programs_per_head",
               "cluster_size", "grid", "registers_per_thread", "shared_memory_bytes",
               "predicted_step_ns", "binding")


def format_plan(plan) -> str:
    """One line of a plan's tiles and predictions (fields it lacks are left out)."""
    parts = []
    for name in PLAN_FIELDS:
        if hasattr(plan, name):
            value = getattr(plan, name)
            parts.append(f"{name}={value:.0f}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts) if parts else repr(plan)


def print_plans(spec, ops, backends=("triton", "cuda")) -> None:
    """The fused_rnn plan of each tuned workload for each back end, or why there is none."""
    if "fused_rnn" not in ops:
        return
    try:
        plan_module = importlib.import_module("flashseq.kernels.fused_rnn.plan")
    except ImportError:
        print("fused_rnn: plans not available yet (flashseq.kernels.fused_rnn.plan is not "
              "part of this build)")
        return
    plan_fn = getattr(plan_module, "plan_fused_rnn", None)
    if not callable(plan_fn):
        print("fused_rnn: flashseq.kernels.fused_rnn.plan has no plan_fused_rnn(); plans not "
              "available yet")
        return
    import torch

    for backend in backends:
        print(f"fused_rnn plans for {spec.name}, backend {backend!r}:")
        for w in TUNED_WORKLOADS:
            label = (f"  {w['cell']:<5} B={w['batch']} T={w['steps']} NH={w['heads']} "
                     f"DH={w['head_dim']} {w['dtype']}")
            try:
                plan = plan_fn(w["cell"], w["batch"], w["heads"], w["head_dim"],
                               getattr(torch, w["dtype"]), spec, backend=backend,
                               time_limit=PLAN_TIME_LIMIT_S)
            except Exception as err:  # a dry run reports every workload, planned or not
                print(f"{label}: no plan ({type(err).__name__}: {err})")
            else:
                print(f"{label}: {format_plan(plan)}")


def describe(spec, ops, cache: Path) -> None:
    print(f"flashseq-tune will, for {spec.name} ({spec.sm_count} SMs, "
          f"compute capability {spec.compute_capability[0]}.{spec.compute_capability[1]}):")
    print(f"  1. ask the solver for each op's feasible tilings ({', '.join(ops)}) on "
          f"{len(TUNED_WORKLOADS)} workloads (lstm/gru/slstm, B=16 T=1024, H=768 as NH x DH),")
    print("  2. build and time the best-ranked candidates of each on the GPU, checking each "
          "against the reference first,")
    print(f"  3. write the fastest per workload to {cache / 'fused_rnn.json'} (versioned JSON, "
          "written atomically), which backend=\"auto\" then uses.")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        spec, present = resolve_gpu(args.gpu)
    except ValueError as err:
        parser.error(f"--gpu: {err}")  # exits 2
    if spec is None:
        print(NO_GPU_MESSAGE)
        return 2
    cache = args.cache or default_cache_dir()
    describe(spec, args.ops, cache)
    if args.dry_run:
        print_plans(spec, args.ops)
        return 0
    if not present:
        print(f"flashseq-tune: tuning times kernels on the GPU itself and {spec.name} is not "
              "here; use --dry-run to see the plans")
        return 2
    # TODO(autotune-runner): candidate generation and timing are a later issue.
    print("flashseq-tune: tuning is not implemented yet (a later issue); nothing was written")
    return 1


if __name__ == "__main__":
    sys.exit(main())
