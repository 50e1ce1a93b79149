"""Micro-benchmark: constrint vs OR-Tools CP-SAT (1 worker) on tiling models, side by side.

    python -m tests.constrint.bench_solver [--repeats N] [--no-plans]

Models: the FlashRNN-class models of tests/constrint/tiling_models.py (fused_step_tiling_model,
without objective = time to a first feasible point, and with its register objective = time to a
proven optimum), the FlashRNN-sized model (flashrnn_like_model) in a few configurations and,
unless --no-plans, the fused_rnn and linear_scan plan models of flashseq (when importable).
Each solve is timed on a freshly built model (CP-SAT: translation and start-up included); prints
one line per model and the median per solver. Not a test: timings depend on the machine's load.
"""
import argparse
import statistics
import time

from tests.constrint.tiling_models import flashrnn_like_model, fused_step_tiling_model

FLASHRNN_CONFIGS = [dict(), dict(batch=64, hidden=256), dict(batch=8, hidden=1024, gates=3),
                    dict(hidden=512, heads=4), dict(batch=32, hidden=384)]


CLASS_CONFIGS = [dict(), dict(batch=64, head_dim=256, heads=3), dict(batch=8, head_dim=512, heads=4),
                 dict(dtype="float32"), dict(batch=32, head_dim=384, heads=2),
                 dict(batch=8, head_dim=1024, gates=3), dict(batch=16, head_dim=64, heads=16)]


def model_builders(with_plans):
    for config in CLASS_CONFIGS:
        for objective in (None, "registers"):
            yield (f"flashrnn-class {config or 'default'} {objective or 'first'}",
                   lambda c=config, o=objective: fused_step_tiling_model(objective=o, **c)[0])
    for config in FLASHRNN_CONFIGS:
        yield f"flashrnn-like {config or 'default'}", lambda c=config: flashrnn_like_model(**c)[0]
    if not with_plans:
        return
    try:
        import torch
        from flashseq.kernels.fused_rnn import plan as rnn_plan
        from flashseq.kernels.linear_scan import plan as scan_plan
    except ImportError as err:  # flashseq not importable: benchmark the solver's own models only
        print(f"plan models skipped: {err}")
        return
    for backend in ("triton", "cuda"):
        for cell in ("lstm", "gru", "slstm"):
            for dh in (16, 64, 192, 768):
                yield (f"fused_rnn/{backend}/{cell}/DH{dh}",
                       lambda b=backend, c=cell, d=dh: rnn_plan.build_model(
                           c, 16, max(1, 768 // d), d, torch.bfloat16, "h100", backend=b)[0])
    for op in scan_plan.OPS:
        for d in (64, 128, 256):
            yield (f"linear_scan/{op}/K{d}",
                   lambda o=op, d=d: scan_plan.build_model(o, 2, 16384, 16, d, d, torch.bfloat16,
                                                           "h100")[0])


def _median_ms(build, solve, repeats):
    times, sol = [], None
    for _ in range(repeats):
        model = build()
        start = time.perf_counter()
        sol = solve(model)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), sol


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-plans", action="store_true", help="only the FlashRNN-sized models")
    args = parser.parse_args()
    from constrint import cpsat
    cpsat.solve(flashrnn_like_model()[0])  # CP-SAT's one-off library start-up, not timed
    ours_all, theirs_all, ratios = [], [], []
    for name, build in model_builders(not args.no_plans):
        ours, sol = _median_ms(build, lambda m: m.solve(), args.repeats)
        theirs, ref = _median_ms(build, cpsat.solve, args.repeats)
        same = sol.status == ref.status and sol.objective == ref.objective
        ours_all.append(ours)
        theirs_all.append(theirs)
        ratios.append(theirs / ours)
        print(f"{name:45s} constrint {ours:8.2f} ms  cp-sat {theirs:8.2f} ms  x{theirs / ours:5.1f}  "
              f"{sol.status} {'same' if same else 'DIFFERENT'} optimum, {sol.stats['nodes']} nodes, "
              f"{sol.stats['runs']} propagator runs")
    print(f"median over {len(ratios)} models: constrint {statistics.median(ours_all):.2f} ms, "
          f"cp-sat {statistics.median(theirs_all):.2f} ms, median speed-up x{statistics.median(ratios):.1f}")


if __name__ == "__main__":
    main()
