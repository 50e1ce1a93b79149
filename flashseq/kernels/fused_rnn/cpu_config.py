"""The knobs of the compiled CPU loop (``backend="cpu"``), as one config the autotuner chooses.

The loop of csrc/cpu/ has three run-time choices that decide what runs for a given problem:

``step_gemm_max_batch``
    the row crossover of the per-step product ``h_prev @ r``: up to this many live batch rows
    the loop runs its own panel GEMM (csrc/cpu/step_gemm.h: the weight packed once per call),
    above it at::mm / at::bmm (MKL or oneDNN, which re-pack the weight every step). None keeps
    the built-in crossover (128, set from measurements in csrc/cpu/fused_rnn_forward.cpp); 0
    sends every step to at::mm.
``avx512_tile``
    whether float32 runs the AVX-512 code (48-column weight panels and 16-lane pointwise rows)
    on a CPU that has it, or the AVX2 code (16-column panels, 8 lanes). This is also the panel
    width knob: the panels are packed for the tile that runs them. None keeps the default
    (AVX-512 where available).
``threads``
    at most this many threads for the call (``torch.set_num_threads`` for its duration, then
    restored). Small problems can lose more to the per-step hand-off between threads than they
    gain. None uses the caller's setting.

``applied(config)`` sets these for the duration of one forward or backward call and records
what was in effect (``last_run()``: the debug hook tests use to see which config ran, read back
from the extension, not inferred from timing). The switches are process-wide while a call runs:
two Python threads running the CPU loop at once with different tuned configs may see each
other's setting (a speed effect only; every config computes the same result).

``candidate_space(problem)`` is the tuner's view: a small constrint model over the knobs whose
objective is a rough cost estimate (``estimate_ns``), so ``best(k)`` gives the candidates worth
timing in order. ``tuned_config(problem)`` is what dispatch uses: the cache's entry for this
problem's bucket (``flashseq.tuning``), or the default.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from flashseq import _jit, tuning

KERNEL = "fused_rnn.cpu"
BUILTIN_MAX_BATCH = 128         # csrc/cpu/fused_rnn_forward.cpp's default crossover
ALWAYS_STEP_GEMM = 1 << 30      # a crossover no batch reaches


@dataclass(frozen=True)
class CpuConfig:
    """One setting of the CPU loop's knobs (see the module docstring); None = the default."""

    step_gemm_max_batch: Optional[int] = None
    avx512_tile: Optional[bool] = None
    threads: Optional[int] = None

    def __post_init__(self):
        for name in ("step_gemm_max_batch", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"CpuConfig.{name} must be an int or None; got "
                                f"{type(value).__name__} {value!r}")
        if self.step_gemm_max_batch is not None and self.step_gemm_max_batch < 0:
            raise ValueError(f"CpuConfig.step_gemm_max_batch must be >= 0; got "
                             f"{self.step_gemm_max_batch}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"CpuConfig.threads must be >= 1; got {self.threads}")
        if self.avx512_tile is not None and not isinstance(self.avx512_tile, bool):
            raise TypeError(f"CpuConfig.avx512_tile must be a bool or None; got "
                            f"{type(self.avx512_tile).__name__} {self.avx512_tile!r}")

    @property
    def is_default(self) -> bool:
        return self == DEFAULT

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict) -> "CpuConfig":
        """The config a cache entry holds; TypeError/ValueError when it is not one."""
        if not isinstance(data, dict):
            raise TypeError(f"a CpuConfig is a JSON object; got {type(data).__name__}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown CpuConfig fields {sorted(unknown)}")
        return cls(**data)

    def describe(self) -> str:
        parts = []
        if self.step_gemm_max_batch is not None:
            mb = self.step_gemm_max_batch
            parts.append("gemm=mm" if mb == 0 else
                         "gemm=step" if mb >= ALWAYS_STEP_GEMM else f"gemm<={mb}")
        if self.avx512_tile is not None:
            parts.append("tile=avx512" if self.avx512_tile else "tile=avx2")
        if self.threads is not None:
            parts.append(f"threads={self.threads}")
        return " ".join(parts) or "default"


DEFAULT = CpuConfig()


@dataclass(frozen=True)
class RunStats:
    """What one call of the CPU loop ran with, read back from the extension during the call."""

    config: CpuConfig
    step_gemm_max_batch: int
    avx512_tile: bool
    threads: int
    source: str            # "default", "cache" or "override"


_last: list = [None]
_memo: dict = {}        # id(tuning table) -> (that table, {shape key: (CpuConfig, source)})
_override: list = [None]
_calls = {"default": 0, "cache": 0, "override": 0}


def last_run() -> Optional[RunStats]:
    """The RunStats of the most recent CPU-loop call (forward or backward), or None. For a
    call with the default config (which sets nothing) the knobs are read back now: only the
    extension's private setters for tests and benchmarks change them between calls."""
    last = _last[0]
    if isinstance(last, tuple):
        ext = _jit.extension()
        batch = ext._set_step_gemm_max_batch(0)
        ext._set_step_gemm_max_batch(batch)
        last = RunStats(last[0], batch, bool(ext._uses_avx512_tile()), torch.get_num_threads(),
                        last[1])
    return last


def call_counts() -> dict:
    """How many CPU-loop calls ran with the default, a cached or an overriding config."""
    return dict(_calls)


@contextlib.contextmanager
def override(config: Optional[CpuConfig]):
    """Run the CPU loop with ``config`` (not the cache's) inside the block; the tuner times
    candidates this way. None inside the block restores cache-driven dispatch."""
    if config is not None and not isinstance(config, CpuConfig):
        raise TypeError(f"config must be a CpuConfig or None; got {type(config).__name__}")
    old, _override[0] = _override[0], config
    try:
        yield
    finally:
        _override[0] = old


def bucket(cell: str, batch: int, heads: int, head_dim: int) -> dict:
    """The cache bucket of a CPU problem: sizes rounded up to powers of two, plus the thread
    count the caller runs with (the best config depends on it)."""
    return {"cell": cell, "batch": tuning.pow2_bucket(batch), "heads": tuning.pow2_bucket(heads),
            "head_dim": tuning.pow2_bucket(head_dim), "threads": torch.get_num_threads()}


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def tuned_config(cell: str, batch: int, heads: int, head_dim: int, dtype, device):
    """(config, source) for a call: the override, else the cache's entry for the problem's
    bucket, else (DEFAULT, "default"). A cache entry that is not a valid CpuConfig is ignored
    with one warning."""
    if _override[0] is not None:
        return _override[0], "override"
    entries = tuning.table(device)
    if not entries:  # the common case, kept cheap: no tuning file (or tuning off)
        return DEFAULT, "default"
    # answers are kept per table (a reload makes a new one) and exact shape: no bucket, key or
    # parse per call
    memo_key = (cell, batch, heads, head_dim, dtype, torch.get_num_threads())
    memo = _memo.get(id(entries))
    if memo is None or memo[0] is not entries:
        memo = _memo[id(entries)] = (entries, {})
        if len(_memo) > 8:  # tables of earlier reloads
            _memo.clear()
            _memo[id(entries)] = memo
    answer = memo[1].get(memo_key)
    if answer is None:
        answer = memo[1][memo_key] = _from_table(entries, cell, batch, heads, head_dim, dtype)
    return answer


def _from_table(entries, cell, batch, heads, head_dim, dtype):
    found = entries.get(tuning.entry_key(KERNEL, bucket(cell, batch, heads, head_dim),
                                         _dtype_name(dtype)))
    if found is None:
        return DEFAULT, "default"
    try:
        return CpuConfig.from_json(found), "cache"
    except (TypeError, ValueError) as err:
        tuning.warn_once(f"flashseq: ignoring a tuning cache entry for {KERNEL} ({err}); "
                         "the default configuration runs")
        return DEFAULT, "default"


def for_call(cell: str, wx: torch.Tensor):
    """(config, source) for a fused_rnn call on ``wx`` [B, T, G, NH, DH]: ``tuned_config`` in
    eager mode; None (the defaults) under torch.compile, export or tracing, since the knobs are
    process state set around the call, which a graph would not replay."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    B, _, _, NH, DH = wx.shape
    return tuned_config(cell, B, NH, DH, wx.dtype, wx.device)


@contextlib.contextmanager
def applied(call_config):
    """Set the loop's knobs for the block (restored afterwards) and record them in
    ``last_run()``. ``call_config`` is ``for_call``'s (config, source); None, or any call under
    torch.compile, changes and records nothing. The default config changes nothing."""
    if call_config is None or torch.compiler.is_compiling() or torch.jit.is_tracing():
        yield
        return
    config, source = call_config
    _calls[source] += 1
    if config == DEFAULT:
        # nothing to set: the knobs in effect are the process's, read back by last_run()
        _last[0] = (config, source)
        yield
        return
    ext = _jit.extension()
    old_batch = old_tile = old_threads = None
    try:
        if config.step_gemm_max_batch is not None:
            old_batch = ext._set_step_gemm_max_batch(config.step_gemm_max_batch)
        if config.avx512_tile is not None:
            old_tile = ext._set_avx512_tile(config.avx512_tile)
        if config.threads is not None:
            current = torch.get_num_threads()
            if config.threads < current:
                old_threads = current
                torch.set_num_threads(config.threads)
        # read back what the loop will see: the setter returns the value it replaces
        batch_now = ext._set_step_gemm_max_batch(0)
        ext._set_step_gemm_max_batch(batch_now)
        _last[0] = RunStats(config, batch_now, bool(ext._uses_avx512_tile()),
                            torch.get_num_threads(), source)
        yield
    finally:
        if old_threads is not None:
            torch.set_num_threads(old_threads)
        if old_tile is not None:
            ext._set_avx512_tile(old_tile)
        if old_batch is not None:
            ext._set_step_gemm_max_batch(old_batch)


# ---- the tuner's candidate space ------------------------------------------------------------
# Rough per-thread rates of this loop's pieces on a current x86 core, in FLOP (or bytes) per ns.
# They only rank the candidates; the tuner times them.
STEP_GEMM_FLOP_PER_NS = {True: 40, False: 20}    # AVX-512 / AVX2 register tile
MM_FLOP_PER_NS = 30
MM_PACK_BYTES_PER_NS = 8                          # at::mm re-packs the weight every step
MM_CALL_NS = 2_000
POINTWISE_NS_PER_VALUE = {True: 1, False: 2}      # 16 / 8 lanes
THREAD_HANDOFF_NS = 3_000                          # per parallel region, per extra thread


def avx512_available(dtype) -> bool:
    """Whether the AVX-512 knob means anything here: float32 on a CPU and build that have it."""
    if dtype != torch.float32:
        return False
    ext = _jit.extension()
    old = ext._set_avx512_tile(True)
    try:
        return bool(ext._uses_avx512_tile())
    finally:
        ext._set_avx512_tile(old)


def thread_choices(threads: int) -> list[int]:
    """1, 2, 4, ... up to and including ``threads``."""
    values, t = [], 1
    while t < threads:
        values.append(t)
        t *= 2
    return values + [threads]


def build_model(cell: str, batch: int, heads: int, head_dim: int, dtype, threads: int,
                avx512: bool):
    """constrint model over (step: 1 = the loop's own GEMM, 0 = at::mm; avx: 1 = AVX-512 tile;
    threads) minimising ``estimate_ns`` for one time step; returns (model, variables)."""
    import constrint as ci

    from flashseq.cells import get_cell

    G = get_cell(cell).num_gates
    B, NH, DH = batch, heads, head_dim
    flops = 2 * B * DH * G * DH * NH
    values = G * B * NH * DH
    m = ci.Model()
    step = m.int_var("step", values=[0, 1])
    avx = m.int_var("avx", values=[0, 1] if avx512 else [0])
    thr = m.int_var("threads", values=thread_choices(threads))
    # the own GEMM in full 6-row tiles (a partial last tile wastes its rows)
    tiled = 2 * 6 * -(-B // 6) * DH * G * DH * NH
    step_ns = (avx * (tiled // STEP_GEMM_FLOP_PER_NS[True])
               + (1 - avx) * (tiled // STEP_GEMM_FLOP_PER_NS[False]))
    mm_ns = (flops // MM_FLOP_PER_NS + (DH * G * DH * NH * 4) // MM_PACK_BYTES_PER_NS
             + MM_CALL_NS * (1 if NH == 1 else 2))
    point_ns = (avx * (values * POINTWISE_NS_PER_VALUE[True])
                + (1 - avx) * (values * POINTWISE_NS_PER_VALUE[False]))
    work = step * step_ns + (1 - step) * mm_ns + point_ns
    m.minimize(ci.cdiv(work, thr) + 2 * THREAD_HANDOFF_NS * (thr - 1))
    return m, {"step": step, "avx": avx, "threads": thr}


def config_of(values: dict, batch: int, avx512: bool, threads: int) -> CpuConfig:
    """The CpuConfig of a model point: the crossover that sends every batch of this bucket (up
    to the power of two >= ``batch`` rows) to the chosen GEMM, the tile, and the thread cap.
    A knob whose choice is what the loop does anyway (the built-in crossover already covers the
    bucket, the AVX-512 tile where it runs by default, all ``threads``) stays None, so a point
    that changes nothing is DEFAULT itself and never timed twice."""
    rows = max(tuning.pow2_bucket(batch), BUILTIN_MAX_BATCH)
    step = (None if rows == BUILTIN_MAX_BATCH else rows) if values["step"] else 0
    tile = None if values["avx"] or not avx512 else False
    cap = int(values["threads"])
    return CpuConfig(step_gemm_max_batch=step, avx512_tile=tile,
                     threads=None if cap >= threads else cap)


def candidates(cell: str, batch: int, heads: int, head_dim: int, dtype, k: int = 6,
               threads: Optional[int] = None, time_limit: float = 5.0):
    """The k best configs by the cost estimate, best first, as [(CpuConfig, estimate_ns)].
    ``threads`` defaults to the caller's ``torch.get_num_threads()``."""
    threads = torch.get_num_threads() if threads is None else threads
    avx512 = avx512_available(dtype)
    model, v = build_model(cell, batch, heads, head_dim, dtype, threads, avx512)
    out = []
    for sol in model.best(k, time_limit=time_limit):
        values = {name: sol[var] for name, var in v.items()}
        out.append((config_of(values, batch, avx512, threads), sol.objective))
    return out


__all__ = ["CpuConfig", "DEFAULT", "RunStats", "KERNEL", "for_call", "applied", "override",
           "last_run", "call_counts", "bucket", "tuned_config", "build_model", "candidates",
           "config_of"]
