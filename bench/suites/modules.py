"""Suite "modules": flashseq.LSTM / flashseq.GRU against torch.nn.LSTM / torch.nn.GRU.

Every comparison is a PAIRED ratio: the flashseq module and its torch twin (same weights, same
input) are called in alternation and the reported ratio is the median of the per-pair time
ratios (``bench.timing.measure_ratio``), so drift of a shared machine hits both sides alike.
A ratio of two medians timed apart carried +-20% of that drift here and is not reported.

Padded cases (input size I, hidden H, batch B, steps T, L layers; batch_first, float32):
I=H=200 B=20 T=35 L=2; I=64 H=256 B=32 T=200 L=2; I=H=512 B=16 T=128; I=H=128 B=16 T=512;
I=H=256 B=1 T=256; I=H=1024 B=8 T=64. Modes "fwd" (under ``torch.no_grad()``) and "fwd+bwd"
(gradients of x and every weight for a fixed random upstream gradient). Each at every thread
count of ``THREADS`` (``torch.set_num_threads``; ``FLASHSEQ_BENCH_THREADS="1,2"`` overrides).
``FLASHSEQ_BENCH_CPU_TIME=1`` times the one-thread cases by process CPU time instead of the wall
clock (column "clock"), which time slices lost to other processes on a shared machine do not
change.

Ragged batches: for two shapes the same batch is also given as a PackedSequence, lengths spread
over 1..T in shuffled order, and "ratio_packed_paired" is flashseq's packed call over its own
padded call, timed in alternation (target <= 1.1: ragged rows cost no per-step Python loop).

Columns: "ratio" flashseq / torch (paired median; < 1: flashseq faster), "paired_iqr" the
inter-quartile range of the per-pair ratios, "pairs" how many, "median_ms" and "torch_ms" the
median ms per call of each side over the pairs, "load1" the 1-minute load average when the case
started (others' work on a shared machine), "faults" and "torch_faults" each side's minor page
faults per call after the pairs (``minor_faults_per_call``: thousands on torch's side mark a
process where oneDNN's buffers are faulted back in on every call, torch's slow mode).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from bench import smoke, timing
from bench.suites import CorrectnessError

DESCRIPTION = ("flashseq.LSTM/GRU vs torch.nn.LSTM/GRU (float32, padded batches, fwd under no_grad "
               "and fwd+bwd): paired ratios (alternating calls, median of per-pair ratios) at 1 "
               "and 2 threads; flashseq packed/padded paired ratio for ragged batches.")

# (I, H, B, T, layers)
PADDED_SHAPES = ((200, 200, 20, 35, 2), (64, 256, 32, 200, 2), (512, 512, 16, 128, 1),
                 (128, 128, 16, 512, 1), (256, 256, 1, 256, 1), (1024, 1024, 8, 64, 1))
PACKED_SHAPES = ((512, 512, 16, 128, 1), (128, 128, 16, 512, 1))
QUICK_SHAPES = ((8, 16, 4, 8, 2),)
THREADS = (1, 2)
PACKED_MIN_BATCH = 4  # a packed batch of one row is just the padded one
KINDS = ("lstm", "gru")
MODES = ("fwd", "fwd+bwd")
LAYOUTS = ("padded", "packed")
MIN_RUN_TIME_S = 2.0


def module_classes(kind: str):
    """(torch class, flashseq class) for ``kind`` in KINDS."""
    import flashseq

    return {"lstm": (torch.nn.LSTM, flashseq.LSTM), "gru": (torch.nn.GRU, flashseq.GRU)}[kind]


@dataclass(frozen=True)
class ModuleCase:
    kind: str
    B: int
    T: int
    H: int
    layout: str
    mode: str
    device: torch.device
    dtype: torch.dtype = torch.float32
    I: int | None = None  # input size; None: H
    layers: int = 1

    @property
    def input_size(self) -> int:
        return self.H if self.I is None else self.I

    @property
    def name(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        layers = f" L={self.layers}" if self.layers != 1 else ""
        return (f"{self.kind} I={self.input_size} H={self.H} B={self.B} T={self.T}{layers} "
                f"{self.layout} {dtype} {self.mode}")


def spread_lengths(B: int, T: int, seed: int = 0) -> torch.Tensor:
    """[B] int64 lengths evenly spread over 1..T (both ends included), in shuffled order."""
    lengths = torch.linspace(T, 1, B).round().to(torch.int64)
    return lengths[torch.randperm(B, generator=torch.Generator().manual_seed(seed))]


def make_modules(case: ModuleCase, seed: int = 0):
    """(torch module, flashseq module) with the same weights, batch_first."""
    torch_cls, ours_cls = module_classes(case.kind)
    torch.manual_seed(seed)
    factory = {"device": case.device, "dtype": case.dtype}
    ref = torch_cls(case.input_size, case.H, case.layers, batch_first=True, **factory)
    ours = ours_cls(case.input_size, case.H, case.layers, batch_first=True, backend="auto",
                    **factory)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def make_input(case: ModuleCase, seed: int = 0):
    """The module input of ``case`` (x [B, T, I] or its PackedSequence) and the tensor that
    gradients are taken of (x, or the PackedSequence's data [N, I])."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.B, case.T, case.input_size, generator=g).to(device=case.device,
                                                                     dtype=case.dtype)
    if case.layout == "padded":
        return x.requires_grad_(case.mode == "fwd+bwd"), x
    packed = pack_padded_sequence(x, spread_lengths(case.B, case.T, seed), batch_first=True,
                                  enforce_sorted=False)
    data = packed.data.detach().requires_grad_(case.mode == "fwd+bwd")
    return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices), data


def timed_call(module, case: ModuleCase, seed: int = 0):
    """The callable to time: one forward (fwd) or forward + gradients of input and weights."""
    inp, leaf = make_input(case, seed)
    if case.mode == "fwd":
        def fn():
            with torch.no_grad():
                return module(inp)
        return fn
    leaves = [leaf, *module.parameters()]
    out = module(inp)[0]
    out = out.data if isinstance(out, PackedSequence) else out
    g = torch.Generator().manual_seed(seed + 1)
    dy = torch.randn(out.shape, generator=g).to(device=out.device, dtype=out.dtype)

    def fn():
        y = module(inp)[0]
        y = y.data if isinstance(y, PackedSequence) else y
        return torch.autograd.grad(y, leaves, dy)
    return fn


def check_modules(device, dtype=torch.float32) -> str | None:
    """None if flashseq.LSTM/GRU match float64 torch twins (output and the gradients of the
    input and of every weight) on a small padded 2-layer batch and a small unsorted packed one,
    else what differs."""
    for kind in KINDS:
        torch_cls, ours_cls = module_classes(kind)
        torch.manual_seed(0)
        ref = torch_cls(6, 8, 2, batch_first=True, dtype=torch.float64)
        ours = ours_cls(6, 8, 2, batch_first=True, device=device, dtype=dtype)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(4, 7, 6, dtype=torch.float64)
        for layout in LAYOUTS:
            results = []
            for m, dt in ((ref, torch.float64), (ours, dtype)):
                data_x = x.to(device=device if m is ours else "cpu", dtype=dt)
                if layout == "packed":
                    packed = pack_padded_sequence(data_x, torch.tensor([3, 7, 1, 5]),
                                                  batch_first=True, enforce_sorted=False)
                    leaf = packed.data.detach().requires_grad_(True)
                    out = m(PackedSequence(leaf, packed.batch_sizes, packed.sorted_indices,
                                           packed.unsorted_indices))[0].data
                else:
                    leaf = data_x.detach().requires_grad_(True)
                    out = m(leaf)[0]
                dy = torch.linspace(-1, 1, out.numel(), dtype=dt, device=out.device).view_as(out)
                results.append([out, *torch.autograd.grad(out, [leaf, *m.parameters()], dy)])
            tol = smoke.tolerance(dtype, device)
            bad = [msg for i, (o, r) in enumerate(zip(results[1], results[0]))
                   if (msg := smoke.check_same_output(f"{kind} {layout} tensor {i}", o, r, tol))]
            if bad:
                return ", ".join(bad)
    return None


def chosen_backend(device, dtype) -> str:
    """The fused_rnn back end that backend="auto" picks for an LSTM of this device and dtype."""
    from flashseq.kernels.fused_rnn import backends
    from flashseq.kernels.fused_rnn.problem import validate

    wx = torch.zeros(1, 1, 4, 1, 1, device=device, dtype=dtype)
    problem = validate(wx, torch.zeros(4, 1, 1, 1, device=device, dtype=dtype),
                       torch.zeros(4, 1, 1, device=device, dtype=dtype), None, "lstm", None)
    return backends.choose("auto", problem).__name__.rsplit(".", 1)[-1].replace("_backend", "")


def thread_counts() -> tuple[int, ...]:
    """THREADS, or the comma-separated counts of $FLASHSEQ_BENCH_THREADS."""
    text = os.environ.get("FLASHSEQ_BENCH_THREADS")
    if not text:
        return THREADS
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise ValueError(f"FLASHSEQ_BENCH_THREADS must be positive integers separated by commas, "
                         f"e.g. 1,2; got {text!r}")
    return counts


def cpu_clock(threads: int) -> bool:
    """Whether to time by this process's CPU time instead of the wall clock: when
    $FLASHSEQ_BENCH_CPU_TIME is 1 and the case runs on one thread. Why: on a shared machine a
    call loses time slices to others' work, and a one-thread call's own CPU time does not (all
    of both modules' work then runs on this thread, so the two sides are measured alike)."""
    return threads == 1 and os.environ.get("FLASHSEQ_BENCH_CPU_TIME", "0") == "1"


def load_average() -> float | None:
    """The 1-minute load average (None where the OS does not report one)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def minor_faults_per_call(fn, calls: int = 3) -> float | None:
    """This process's minor page faults per call of ``fn`` (median of ``calls`` calls; None
    where the OS does not count them). Why: torch.nn.LSTM's CPU time is bimodal from one process
    to the next: in about half of them every call page-faults oneDNN's freed buffers back in
    (~3,700 faults, +30% time at I=H=200 B=20 T=35 L=2 fwd+bwd), which moves the ratio by up to
    0.3; the column says which mode the baseline ran in."""
    try:
        import resource
    except ImportError:
        return None
    counts = []
    for _ in range(calls):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return float(sorted(counts)[len(counts) // 2])


def paired_row(case: ModuleCase, threads: int, min_run_time: float) -> dict:
    """One row: flashseq over torch at ``case``, timed in alternation at ``threads`` threads."""
    ref, ours = make_modules(case)
    provider = f"flashseq.{case.kind.upper()} @{threads}T"
    row = {"case": case.name, "provider": provider, "threads": threads, "mode": case.mode,
           "layout": case.layout, "load1": load_average(),
           "clock": "cpu" if cpu_clock(threads) else "wall"}
    try:
        fn, baseline = timed_call(ours, case), timed_call(ref, case)
        r = timing.measure_ratio(fn, baseline, device=case.device, min_run_time=min_run_time,
                                 cpu_time=cpu_clock(threads))
        faults = {"faults": minor_faults_per_call(fn), "torch_faults": minor_faults_per_call(baseline)}
    except Exception as err:  # one failing case is reported in its row, the others still run
        return {**row, "median_ms": None, "status": f"failed: {type(err).__name__}: {err}"}
    return {**row, "median_ms": r["fn_ms"], "torch_ms": r["baseline_ms"], "ratio": r["ratio"],
            "paired_iqr": r["ratio_iqr"], "pairs": r["pairs"], **faults, "status": "ok"}


def packed_row(case: ModuleCase, threads: int, min_run_time: float) -> dict:
    """One row: flashseq's packed call over its padded call at ``case`` (a packed case)."""
    _, ours = make_modules(case)
    padded = replace(case, layout="padded")
    provider = f"flashseq.{case.kind.upper()} @{threads}T"
    row = {"case": case.name, "provider": provider, "threads": threads, "mode": case.mode,
           "layout": case.layout, "load1": load_average(),
           "clock": "cpu" if cpu_clock(threads) else "wall"}
    try:
        r = timing.measure_ratio(timed_call(ours, case), timed_call(ours, padded),
                                 device=case.device, min_run_time=min_run_time,
                                 cpu_time=cpu_clock(threads))
    except Exception as err:
        return {**row, "median_ms": None, "status": f"failed: {type(err).__name__}: {err}"}
    return {**row, "median_ms": r["fn_ms"], "padded_ms": r["baseline_ms"],
            "ratio_packed_paired": r["ratio"], "paired_iqr": r["ratio_iqr"], "pairs": r["pairs"],
            "status": "ok"}


def cases(device, quick: bool, dtype=torch.float32) -> list[ModuleCase]:
    """Every case of the suite, padded first, then packed."""
    shapes = QUICK_SHAPES if quick else PADDED_SHAPES
    packed_shapes = QUICK_SHAPES if quick else PACKED_SHAPES
    out = [ModuleCase(kind, B, T, H, "padded", mode, device, dtype, I, L)
           for kind in KINDS for I, H, B, T, L in shapes for mode in MODES]
    out += [ModuleCase(kind, B, T, H, "packed", mode, device, dtype, I, L)
            for kind in KINDS for I, H, B, T, L in packed_shapes for mode in MODES
            if B >= PACKED_MIN_BATCH]
    return out


def run(device, quick: bool, progress) -> list[dict]:
    """Rows for every (case, thread count); see the module docstring for the workloads."""
    device = torch.device(device)
    dtype = torch.float32
    wrong = check_modules(device, dtype)
    if wrong:
        raise CorrectnessError(f"flashseq modules disagree with torch.nn: {wrong}")
    backend = chosen_backend(device, dtype)
    min_run_time = 0.05 if quick else MIN_RUN_TIME_S
    threads_before = torch.get_num_threads()
    rows = []
    try:
        work = [(case, threads) for threads in thread_counts()
                for case in cases(device, quick, dtype)]
        for case, threads in progress(work):
            torch.set_num_threads(threads)
            make = paired_row if case.layout == "padded" else packed_row
            rows.append({**make(case, threads, min_run_time), "backend": backend})
    finally:
        torch.set_num_threads(threads_before)
    keys = []  # one column order for every row, "status" last as in the other suites
    for r in rows:
        keys += [k for k in r if k not in keys and k != "status"]
    return [{**{k: r.get(k) for k in keys}, "status": r["status"]} for r in rows]

