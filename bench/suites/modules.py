"""Suite "modules": flashseq.LSTM / flashseq.GRU against torch.nn.LSTM / torch.nn.GRU.

Sizes as the foundation benchmark: B in {1, 16}, T in {64, 512}, H in {128, 512}, input size
I = H, one layer, float32, "fwd" (under no_grad) and "fwd+bwd" (gradients of x and every
weight). Both modules hold the same weights and get the same x; flashseq's runs
``backend="auto"`` (the back end it chose is in the "backend" column).

Variable lengths: for B = 16 the same batch is also given as a PackedSequence whose lengths
spread evenly over 1..T in shuffled order (``enforce_sorted=False``). Two packed/padded ratios:

- "ratio_packed": a packed row's median over the padded row's median of the same module, size
  and mode (both providers). The two cases are timed minutes apart, so on a shared machine
  this ratio carries the drift between them (+-20% seen on the 2-core dev box).
- "ratio_packed_paired" (flashseq only): the same two calls timed in alternation
  (``bench.timing.measure_ratio``), the median of the per-pair ratios: the number to hold
  against the target. flashseq aims at <= 1.1 (ragged batches go to fused_rnn as ``lengths``,
  no per-step loop over rows); torch's packed CPU path is known to be much slower than its
  padded one (pytorch issue 149194).

"ratio" is a row's time over torch's at the same case (< 1: faster).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from bench import runner, smoke, timing
from bench.suites import CorrectnessError

DESCRIPTION = ("flashseq.LSTM/GRU modules vs torch.nn.LSTM/GRU, fwd and fwd+bwd, padded and "
               "PackedSequence (lengths 1..T): ratio vs torch and packed/padded time.")

GRID = {"B": (1, 16), "T": (64, 512), "H": (128, 512)}
QUICK_GRID = {"B": (4,), "T": (8,), "H": (16,)}
PACKED_MIN_BATCH = 4  # a packed batch of one row is just the padded one
KINDS = ("lstm", "gru")
MODES = ("fwd", "fwd+bwd")
LAYOUTS = ("padded", "packed")


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

    @property
    def name(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return f"{self.kind} B={self.B} T={self.T} H={self.H} {self.layout} {dtype} {self.mode}"

    @property
    def padded_name(self) -> str:
        return self.name.replace(" packed ", " padded ")


def spread_lengths(B: int, T: int, seed: int = 0) -> torch.Tensor:
    """[B] int64 lengths evenly spread over 1..T (both ends included), in shuffled order."""
    lengths = torch.linspace(T, 1, B).round().to(torch.int64)
    return lengths[torch.randperm(B, generator=torch.Generator().manual_seed(seed))]


def make_modules(case: ModuleCase, seed: int = 0):
    """(torch module, flashseq module) with the same weights, batch_first."""
    torch_cls, ours_cls = module_classes(case.kind)
    torch.manual_seed(seed)
    factory = {"device": case.device, "dtype": case.dtype}
    ref = torch_cls(case.H, case.H, batch_first=True, **factory)
    ours = ours_cls(case.H, case.H, batch_first=True, backend="auto", **factory)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def make_input(case: ModuleCase, seed: int = 0):
    """The module input of ``case`` (x [B, T, H] or its PackedSequence) and the tensor that
    gradients are taken of (x, or the PackedSequence's data [N, H])."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.B, case.T, case.H, generator=g).to(device=case.device, dtype=case.dtype)
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
    packed input and of every weight) on a small unsorted packed batch, else what differs."""
    for kind in KINDS:
        torch_cls, ours_cls = module_classes(kind)
        torch.manual_seed(0)
        ref = torch_cls(6, 8, batch_first=True, dtype=torch.float64)
        ours = ours_cls(6, 8, batch_first=True, device=device, dtype=dtype)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(4, 7, 6, dtype=torch.float64)
        results = []
        for m, dt in ((ref, torch.float64), (ours, dtype)):
            data_x = x.to(device=device if m is ours else "cpu", dtype=dt)
            packed = pack_padded_sequence(data_x, torch.tensor([3, 7, 1, 5]), batch_first=True,
                                          enforce_sorted=False)
            data = packed.data.detach().requires_grad_(True)
            out = m(PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                                   packed.unsorted_indices))[0].data
            dy = torch.linspace(-1, 1, out.numel(), dtype=dt, device=out.device).view_as(out)
            results.append([out, *torch.autograd.grad(out, [data, *m.parameters()], dy)])
        tol = smoke.tolerance(dtype, device)
        bad = [msg for i, (o, r) in enumerate(zip(results[1], results[0]))
               if (msg := smoke.check_same_output(f"{kind} tensor {i}", o, r, tol))]
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


def add_packed_over_padded(rows: list[dict], paired: dict | None = None) -> list[dict]:
    """Set "ratio_packed" on packed rows (median / the same provider's padded median) and
    "ratio_packed_paired" from ``paired`` {(case, provider): ratio} where measured."""
    padded = {(r["case"], r["provider"]): r["median_ms"] for r in rows if " padded " in r["case"]}
    paired = paired or {}
    for r in rows:
        ratio = None
        if " packed " in r["case"] and r.get("median_ms"):
            base = padded.get((r["case"].replace(" packed ", " padded "), r["provider"]))
            ratio = r["median_ms"] / base if base else None
        status = r.pop("status", None)  # keep "status" the last column
        r["ratio_packed"] = ratio
        r["ratio_packed_paired"] = paired.get((r["case"], r["provider"]))
        if status is not None:
            r["status"] = status
    return rows


def paired_packed_ratio(module, case: ModuleCase, min_run_time: float) -> float:
    """Packed over padded time of ``module`` at ``case`` (a packed case), the two calls timed
    in alternation so that machine drift hits both alike."""
    padded = ModuleCase(case.kind, case.B, case.T, case.H, "padded", case.mode, case.device,
                        case.dtype)
    return timing.measure_ratio(timed_call(module, case), timed_call(module, padded),
                                device=case.device, min_run_time=min_run_time)["ratio"]


def run(device, quick: bool, progress) -> list[dict]:
    """Rows for every (case, provider); see the module docstring for the workloads."""
    device = torch.device(device)
    dtype = torch.float32
    wrong = check_modules(device, dtype)
    if wrong:
        raise CorrectnessError(f"flashseq modules disagree with torch.nn: {wrong}")
    backend = chosen_backend(device, dtype)
    grid = QUICK_GRID if quick else GRID
    cases = [ModuleCase(kind, B, T, H, layout, mode, device, dtype)
             for kind, B, T, H, layout, mode in itertools.product(KINDS, grid["B"], grid["T"],
                                                                  grid["H"], LAYOUTS, MODES)
             if layout == "padded" or B >= PACKED_MIN_BATCH]
    rows, paired = [], {}
    for case in progress(cases):
        ref, ours = make_modules(case)
        providers = [
            runner.Provider(f"flashseq.{case.kind.upper()}", lambda c, m=ours: timed_call(m, c)),
            runner.Provider(f"torch.nn.{case.kind.upper()}", lambda c, m=ref: timed_call(m, c),
                            peer=True),
        ]
        rows += runner.time_case(case.name, case, providers, device=device,
                                 min_run_time=0.05 if quick else 1.0,
                                 extra={"mode": case.mode, "layout": case.layout, "backend": backend})
        if case.layout == "packed":
            paired[(case.name, providers[0].name)] = paired_packed_ratio(
                ours, case, min_run_time=0.05 if quick else 1.0)
    for r in rows:  # the backend column only describes flashseq's rows
        if not r["provider"].startswith("flashseq"):
            r["backend"] = None
    torch_rows = {r["case"]: r for r in rows if r["provider"].startswith("torch.nn.")}
    for r in rows:  # each module against its own torch twin at the same case
        base = torch_rows[r["case"]].get("median_ms")
        r["ratio"] = r["median_ms"] / base if base and r.get("median_ms") else None
    return add_packed_over_padded(rows, paired)
