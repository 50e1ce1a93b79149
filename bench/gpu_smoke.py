"""``python -m bench.gpu_smoke``: the first check of a GPU session, each fused_rnn back end's
forward and every gradient against the float64 reference, one small case per cell and dtype.

    python -m bench.gpu_smoke [--device cuda|cpu] [--backends triton cuda] [--cells ...]
                              [--dtypes bfloat16 ...] [--no-extra] [--jobs N]
                              [--case-timeout S] [--strict] [--json F] [--md F]

Each case checks the inference call (under ``torch.no_grad()``: h [B, T, NH, DH] and the last
states) and then ``bench.smoke.check_fused_rnn`` (h, last states and the gradients of wx, r, b
and the initial states under random upstream gradients), relative error within the project's
bound per dtype. Cases start in value order, bfloat16 LSTM first, the back
ends interleaved; on a GPU the bfloat16 round is followed by one run of the CUDA barrier floor
kernel (back end "cuda-floor", nothing to compare) and ``EXTRA_SHAPES``: the split head
bench.gpu_sanitize runs and the shapes ``python -m bench fused_rnn --headline`` times (B=16,
H=768 as NH=1 and 12 x 64; T=3, since the kernels' plans do not depend on T), which checks them
and leaves their builds in the session's cache for those steps; then float16 and float32.
With ``--jobs N`` (default on a GPU: up to 12) each case runs in its own process, N at a time:
the nvcc and Triton builds of different cases overlap (the build cache's lock builds each one
once), and a kernel that corrupts its CUDA context fails its own case only; a case over
``--case-timeout`` seconds is killed and recorded as failed. The JSON/Markdown files are
rewritten after every case, so a run killed at a time limit still leaves every finished case.

On a CPU (CI) the Triton back end runs under the interpreter (``TRITON_INTERPRET=1`` is set here
when the device is cpu, before triton is imported) at tiny shapes in float32; the CUDA back end
is then a skipped row. Exit status: 0 no case failed, 1 a case failed (or, with ``--strict``,
a back end asked for cannot run here at all, e.g. no nvcc: on a GPU session that means its
kernels went unchecked; a shape a back end does not serve is a plain skip), 2 bad usage.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

CELLS = ("lstm", "gru", "slstm", "elman")
GPU_DTYPES = ("bfloat16", "float16", "float32")
CPU_DTYPES = ("float32",)
BACKENDS = ("cuda", "triton")
FLOOR = "cuda-floor"  # a case that runs the CUDA barrier floor kernel once (it has no output)
# the status of a case whose back end cannot run here at all (not one shape it does not serve)
UNAVAILABLE = "skipped (back end unavailable)"
# one small case per (back end, cell, dtype): several heads, a head dim the kernels tile
GPU_SHAPE = {"B": 3, "T": 9, "NH": 2, "DH": 64}
CPU_SHAPE = {"B": 2, "T": 3, "NH": 1, "DH": 8}
# bfloat16 shapes beyond GPU_SHAPE, checked after the first dtype's round: the head split over
# blocks that bench.gpu_sanitize runs, and the headline benchmark's plans
# (bench/suites/fused_rnn.py: B=16, H=768), so the later steps find their kernels built
EXTRA_SHAPES = (("lstm", {"B": 3, "T": 5, "NH": 2, "DH": 256}),
                ("lstm", {"B": 16, "T": 3, "NH": 1, "DH": 768}),
                ("lstm", {"B": 16, "T": 3, "NH": 12, "DH": 64}),
                ("gru", {"B": 16, "T": 3, "NH": 1, "DH": 768}))


def plan_cases(backends, cells, dtypes, shape: dict, extra: bool = False) -> list[dict]:
    """The cases in the order they start: the first dtype's cells (bfloat16 LSTM first), each
    cell on every back end; then, with ``extra``, one run of the CUDA barrier floor kernel
    (back end FLOOR) and EXTRA_SHAPES in bfloat16 for the cells asked for; then the other
    dtypes."""
    def round_of(dt):
        return [{"backend": be, "cell": cell, "dtype": dt, "shape": shape}
                for cell in cells for be in backends]
    out = round_of(dtypes[0])
    if extra and "cuda" in backends:  # the barrier floor kernel (benchmark and sanitizer)
        out.append({"backend": FLOOR, "cell": "lstm", "dtype": "bfloat16", "shape": shape})
    if extra:
        out += [{"backend": be, "cell": cell, "dtype": "bfloat16", "shape": es}
                for cell, es in EXTRA_SHAPES if cell in cells for be in backends]
    for dt in dtypes[1:]:
        out += round_of(dt)
    return out


def check_inference(backend: str, device, dtype, *, cell: str, B: int, T: int, NH: int,
                    DH: int, seed: int = 0) -> str | None:
    """None if ``fused_rnn`` under ``torch.no_grad()`` (the inference kernels, which differ from
    the forward that saves for the backward) matches the float64 reference in h [B, T, NH, DH]
    and the last states [S, B, NH, DH], else what differs."""
    import torch

    from bench import smoke
    from flashseq.cells import get_cell
    from flashseq.kernels.fused_rnn.reference import fused_rnn_reference
    from flashseq.ops import fused_rnn

    inputs = smoke._random_rnn_inputs(get_cell(cell), B, T, NH, DH, seed)
    with torch.no_grad():
        out = fused_rnn(*(t.to(device=device, dtype=dtype) for t in inputs), cell=cell,
                        backend=backend)
        ref = fused_rnn_reference(*inputs, cell=get_cell(cell))
    tol = smoke.tolerance(dtype, device)
    bad = [f"no_grad {name} rel err {e:.2e}" for name, o, r in zip(("h", "last_states"), out, ref)
           if (e := smoke.rel_err(o, r)) > tol]
    return ", ".join(bad) + f" > {tol:.0e}" if bad else None


def run_case(backend: str, cell: str, dtype_name: str, device, shape: dict) -> dict:
    """One row: status "ok", "failed: ..." or "skipped: ..." and the seconds it took."""
    import torch

    from bench import smoke
    from flashseq.kernels.fused_rnn import backends

    dtype = getattr(torch, dtype_name)
    start = time.perf_counter()
    row = {"backend": backend, "cell": cell, "dtype": dtype_name, **shape}
    reason = backends.unavailable_reason("cuda" if backend == FLOOR else backend,
                                         torch.device(device))
    if reason:
        status = f"{UNAVAILABLE}: {reason}"
    elif backend == FLOOR:
        status = _run_floor(cell, dtype, device, shape)
    else:
        try:
            wrong = (check_inference(backend, device, dtype, cell=cell, **shape)
                     or smoke.check_fused_rnn(backend, device, dtype, cell=cell, **shape))
            status = f"failed: {wrong}" if wrong else "ok"
        except NotImplementedError as err:
            status = f"skipped: {err}"
        except Exception as err:  # a crash in a kernel is a failed case, recorded with its type
            status = f"failed: raised {type(err).__name__}: {str(err)[:300]}"
    row["seconds"] = round(time.perf_counter() - start, 2)
    row["status"] = status
    return row


def _run_floor(cell: str, dtype, device, shape: dict) -> str:
    """Run the barrier floor kernel once at the forward's launch shape: "ok" when it returns."""
    import torch

    from flashseq.kernels.fused_rnn.cuda_floor import barrier_floor_call

    try:
        barrier_floor_call(cell, shape["B"], shape["T"], shape["NH"], shape["DH"], dtype, device)()
        torch.cuda.synchronize(device)
    except NotImplementedError as err:
        return f"skipped: {err}"
    except Exception as err:  # a launch or kernel error
        return f"failed: raised {type(err).__name__}: {str(err)[:300]}"
    return "ok"


def write_outputs(rows: list[dict], meta: dict, json_path: str | None, md_path: str | None) -> None:
    """Rewrite the result files with every row so far (through a temporary file, so a kill
    mid-write leaves the previous complete version)."""
    if json_path:
        _replace(json_path, json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    if md_path:
        lines = [f"# GPU smoke: fused_rnn back ends vs the float64 reference ({meta['device']})",
                 "", f"{meta['done']} of {meta['planned']} case(s) run", "",
                 "| backend | cell | dtype | B | T | NH | DH | status | s |",
                 "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['cell']} | {r['dtype']} | {r['B']} | {r['T']} | "
                  f"{r['NH']} | {r['DH']} | {r['status']} | {r['seconds']} |" for r in rows]
        _replace(md_path, "\n".join(lines) + "\n")


def _replace(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _case_in_child(case: dict, device: str, timeout: float) -> dict:
    """Run ``case`` in a fresh process (``--one``); a crash, a hang past ``timeout`` or output
    that is not a row is a failed row naming it."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "bench.gpu_smoke", "--device", device, "--one", json.dumps(case)]
    row = {"backend": case["backend"], "cell": case["cell"], "dtype": case["dtype"], **case["shape"]}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**row, "seconds": round(time.perf_counter() - start, 2),
                "status": f"failed: no result within the case timeout of {timeout:g} s"}
    last = done.stdout.strip().splitlines()[-1:] or [""]
    try:
        return json.loads(last[0])
    except json.JSONDecodeError:
        tail = (done.stderr or done.stdout).strip()[-300:]
        return {**row, "seconds": round(time.perf_counter() - start, 2),
                "status": f"failed: case process exited {done.returncode}: {tail}"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_smoke", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", help="cuda or cpu (default: cuda when present, else cpu)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    p.add_argument("--dtypes", nargs="+", choices=GPU_DTYPES,
                   help=f"default {' '.join(GPU_DTYPES)} on a GPU, {' '.join(CPU_DTYPES)} on a CPU")
    p.add_argument("--no-extra", action="store_true",
                   help="leave out EXTRA_SHAPES (the sanitizer's split head, the headline "
                        "benchmark's plans); always left out on a CPU")
    p.add_argument("--jobs", type=int, help="cases run at once, each in its own process "
                   "(default: min(12, CPUs) on a GPU, 1 = in this process on a CPU)")
    p.add_argument("--case-timeout", type=float, default=240.0,
                   help="seconds one case may take with --jobs > 1 (default 240)")
    p.add_argument("--strict", action="store_true",
                   help="a back end that cannot run here at all fails the run (exit 1); a shape "
                        "one does not serve stays a plain skip")
    p.add_argument("--json", help="write the rows here (rewritten after every case)")
    p.add_argument("--md", help="write a Markdown table here (rewritten after every case)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one case (JSON), row on stdout
    return p


def main(argv=None) -> int:
    """The command line (``python -m bench.gpu_smoke --help``); returns the exit status above."""
    args = _parser().parse_args(argv)
    device_name = args.device
    if device_name is None:
        import torch
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    on_cpu = device_name == "cpu"
    if on_cpu:  # must precede the first import of triton (flashseq's back ends import it)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    if torch.device(device_name).type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_smoke: --device {device_name} asked for, but torch sees no CUDA device",
              file=sys.stderr)
        return 2
    if args.one:
        case = json.loads(args.one)
        print(json.dumps(run_case(case["backend"], case["cell"], case["dtype"],
                                  torch.device(device_name), case["shape"])))
        return 0
    jobs = args.jobs if args.jobs is not None else 1 if on_cpu else min(12, os.cpu_count() or 1)
    if jobs < 1:
        print(f"gpu_smoke: --jobs must be >= 1; got {jobs}", file=sys.stderr)
        return 2
    dtypes = args.dtypes or list(CPU_DTYPES if on_cpu else GPU_DTYPES)
    cases = plan_cases(args.backends, args.cells, dtypes, CPU_SHAPE if on_cpu else GPU_SHAPE,
                       extra=not (on_cpu or args.no_extra))
    meta = {"device": device_name, "jobs": jobs, "planned": len(cases), "done": 0}
    rows: list[dict] = []
    write_outputs(rows, meta, args.json, args.md)

    def record(row):
        rows.append(row)
        meta["done"] = len(rows)
        write_outputs(rows, meta, args.json, args.md)
        shape = " ".join(f"{k}={row[k]}" for k in ("B", "T", "NH", "DH"))
        print(f"gpu_smoke: {row['backend']:6s} {row['cell']:5s} {row['dtype']:8s} {shape}: "
              f"{row['status']} ({row['seconds']} s)", flush=True)

    if jobs == 1:
        for c in cases:
            record(run_case(c["backend"], c["cell"], c["dtype"], torch.device(device_name),
                            c["shape"]))
    else:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(_case_in_child, c, device_name, args.case_timeout)
                       for c in cases]
            for f in concurrent.futures.as_completed(futures):
                record(f.result())
    failed = [r for r in rows if r["status"].startswith("failed")]
    skipped = [r for r in rows if r["status"].startswith("skipped")]
    print(f"gpu_smoke: {len(rows) - len(failed) - len(skipped)} ok, {len(failed)} failed, "
          f"{len(skipped)} skipped of {len(rows)}")
    unavailable = [r for r in rows if r["status"].startswith(UNAVAILABLE)]
    return 1 if failed or (args.strict and unavailable) else 0


if __name__ == "__main__":
    sys.exit(main())
