"""``python -m bench.gpu_sanitize``: one small call of each GPU kernel, for compute-sanitizer.

    compute-sanitizer --tool memcheck --error-exitcode 86 python -m bench.gpu_sanitize
    python -m bench.gpu_sanitize --dry-run     # the case list, runs nothing (CPU, CI)

Cases (``CASES``): the CUDA forward (fused_rnn backend "cuda", LSTM bfloat16, a head split over
blocks and a one-block head), the CUDA backward of the same calls, the CUDA barrier floor
kernel (csrc/fused/barrier_floor.cu) and the Triton fused forward+backward. Each case checks
its outputs against the float64 reference too (bfloat16 bound 1e-2), so a kernel that reads
out of bounds without a sanitizer report still fails on a wrong value. The sanitizer makes
kernels ~100x slower, hence tiny shapes; the plans are among those bench.gpu_smoke checks
first, so the session's build cache already holds the kernels. Exit status: 0 every
case ran and matched, 1 one failed or was skipped (a kernel left unchecked), 2 bad usage.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# (name, backend, what it runs, B, T, NH, DH): the split case is the 256-wide head that the
# plan spreads over several blocks (a cluster on sm_90a), the fused one a one-block 64-wide head
CASES = (
    ("cuda-forward-fused", "cuda", "forward", 3, 5, 2, 64),
    ("cuda-forward-split", "cuda", "forward", 3, 5, 2, 256),
    ("cuda-backward-fused", "cuda", "backward", 3, 5, 2, 64),
    ("cuda-backward-split", "cuda", "backward", 3, 5, 2, 256),
    ("cuda-barrier-floor", "cuda", "floor", 3, 5, 2, 64),
    ("triton-fused", "triton", "backward", 3, 5, 2, 64),
)


def run_case(backend: str, what: str, B: int, T: int, NH: int, DH: int, device) -> str | None:
    """None when the case ran and matched the reference, else what went wrong."""
    import torch

    from bench import smoke
    from flashseq.kernels.fused_rnn import backends

    reason = backends.unavailable_reason(backend, device)
    if reason:
        return f"skipped: {reason}"
    if what == "floor":
        from flashseq.kernels.fused_rnn.cuda_floor import barrier_floor_call

        barrier_floor_call("lstm", B, T, NH, DH, torch.bfloat16, device)()
        torch.cuda.synchronize(device)
        return None
    if what == "backward":
        return smoke.check_fused_rnn(backend, device, torch.bfloat16, cell="lstm",
                                     B=B, T=T, NH=NH, DH=DH)
    from bench.gpu_smoke import check_inference

    return check_inference(backend, device, torch.bfloat16, cell="lstm", B=B, T=T, NH=NH, DH=DH)


def main(argv=None) -> int:
    """The command line (``python -m bench.gpu_sanitize --help``); returns its exit status."""
    p = argparse.ArgumentParser(prog="python -m bench.gpu_sanitize",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=sorted({c[1] for c in CASES}),
                   help="only the cases of these back ends (racecheck: cuda)")
    p.add_argument("--dry-run", action="store_true", help="print the cases, run nothing")
    args = p.parse_args(argv)
    cases = [c for c in CASES if not args.only or c[1] in args.only]
    if args.dry_run:
        for name, backend, what, B, T, NH, DH in cases:
            print(f"gpu_sanitize: {name}: fused_rnn backend={backend} lstm bfloat16 {what} "
                  f"B={B} T={T} NH={NH} DH={DH}")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_sanitize: needs a CUDA device (try --dry-run)", file=sys.stderr)
        return 2
    os.environ.setdefault("FLASHSEQ_CUDA_KERNELS", "1")
    device = torch.device("cuda")
    bad = 0
    for name, backend, what, B, T, NH, DH in cases:
        start = time.perf_counter()
        try:
            problem = run_case(backend, what, B, T, NH, DH, device)
        except Exception as err:  # reported per case so the later kernels still get checked
            problem = f"raised {type(err).__name__}: {str(err)[:300]}"
        bad += problem is not None
        print(f"gpu_sanitize: {name}: {problem or 'ok'} ({time.perf_counter() - start:.1f} s)",
              flush=True)
    print(f"gpu_sanitize: {len(cases) - bad} of {len(cases)} case(s) ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
