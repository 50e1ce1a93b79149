"""The devices the tuner tunes, behind one interface the loop (``autotune.runner``) uses.

A target knows its kernel name in the cache, its device identity, the cache bucket of a
workload, the candidates of a workload (from the solver models), and how to build one timed
call of a workload under a given configuration (forward + backward through ``fused_rnn``, the
configuration forced with the back end's ``override``), a correctness check of a candidate
against the default configuration, and the peer comparison.

``CpuTarget``: the compiled CPU loop's knobs (``cpu_config``); peer torch.nn.LSTM/GRU/RNN.
``GpuTarget``: the Triton back end's tiles (``triton_tuned``); peers torch.nn on CUDA (cuDNN)
and, when ``import flashrnn`` works, FlashRNN (through the benchmark suite's adapter in
``bench/peers.py``, so from a checkout). A peer that cannot run is reported as "n/a (why)".
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

from flashseq import tuning
from flashseq.cells import get_cell
from flashseq.kernels.fused_rnn import cpu_config, fused_rnn, triton_tuned

from .candidates import PLAN_FIELDS, gpu_candidates
from .workloads import Workload

PEER_MODULES = {"lstm": "LSTM", "gru": "GRU", "elman": "RNN"}
# What each peer column compares (the tuner's Markdown says it under the table).
PEER_NOTES = {
    "torch.nn": "flashseq's module (the tuned back end) vs the torch.nn module with the same "
                "weights, one head only",
    "cuDNN": "flashseq's module on the Triton back end vs torch.nn on CUDA (cuDNN) with the "
             "same weights, one head only",
    "FlashRNN": "the fused_rnn benchmark's calls (input projection included on both sides): "
                "flashseq Triton vs FlashRNN cuda_fused, lstm only",
}
CHECK_TOLERANCE = {"float32": 1e-5, "float64": 1e-12, "float16": 1e-2, "bfloat16": 1e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref64 = ref.double()
    return float((out.double() - ref64).norm() / ref64.norm().clamp_min(1e-30))


@contextlib.contextmanager
def tuning_off():
    """``FLASHSEQ_TUNING=off`` inside the block: dispatch ignores the tuning cache (the
    "untuned" plan), whatever the cache holds."""
    saved = os.environ.get(tuning.ENV)
    os.environ[tuning.ENV] = "off"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(tuning.ENV, None)
        else:
            os.environ[tuning.ENV] = saved


class _Inputs:
    """Random inputs of one workload (fixed seed), with a random upstream gradient."""

    def __init__(self, w: Workload, device):
        cell = get_cell(w.cell)
        dtype = getattr(torch, w.dtype)
        gen = torch.Generator().manual_seed(0)
        G, B, T, NH, DH = cell.num_gates, w.batch, w.steps, w.heads, w.head_dim

        def rand(*shape, scale=1.0):
            return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

        self.wx = rand(B, T, G, NH, DH).requires_grad_()
        self.r = rand(G, NH, DH, DH, scale=DH ** -0.5).requires_grad_()
        self.b = rand(G, NH, DH, scale=0.1).requires_grad_()
        self.dh = rand(B, T, NH, DH)
        self.cell = w.cell


class _Target:
    kernel = ""
    device = torch.device("cpu")
    backend = ""

    def __init__(self):
        self._inputs = {}

    def inputs(self, w: Workload) -> _Inputs:
        if w not in self._inputs:
            self._inputs = {w: _Inputs(w, self.device)}  # one workload's tensors at a time
        return self._inputs[w]

    def identity(self) -> dict:
        return tuning.device_identity(self.device)

    def _override(self, config):
        raise NotImplementedError

    def forward(self, w: Workload, config) -> torch.Tensor:
        x = self.inputs(w)
        with torch.no_grad(), self._override(config):
            return fused_rnn(x.wx, x.r, x.b, cell=w.cell, backend=self.backend)[0]

    def call(self, w: Workload, config):
        """A no-argument function running forward + backward of ``w`` under ``config``."""
        x = self.inputs(w)

        def run():
            with self._override(config):
                h, _ = fused_rnn(x.wx, x.r, x.b, cell=w.cell, backend=self.backend)
                torch.autograd.grad(h, (x.wx, x.r, x.b), x.dh)
        return run

    def check(self, w: Workload, config) -> str | None:
        """None when ``config``'s forward matches the default's within the dtype's tolerance,
        else why not (a candidate that computes something else is never timed)."""
        key = ("reference", w)
        if key not in self._inputs:  # the default's output, once per workload
            self._inputs[key] = self.forward(w, self.default())
        ref = self._inputs[key]
        try:
            out = self.forward(w, config)
        except (RuntimeError, ValueError) as err:
            return f"failed: {type(err).__name__}: {err}"
        err = rel_err(out, ref)
        if not err <= CHECK_TOLERANCE[w.dtype]:  # NaN fails too
            return f"output differs from the default configuration's (relative error {err:.2e})"
        return None

    def peer_calls(self, w: Workload, config):
        """(ours, peer): module-level forward + backward of flashseq's module under ``config``
        and of the torch.nn module with the same weights, or None without a peer (several
        heads, or a cell torch.nn lacks)."""
        if w.heads != 1 or w.cell not in PEER_MODULES:
            return None
        import flashseq

        dtype = getattr(torch, w.dtype)
        H = w.head_dim
        torch.manual_seed(0)
        # the target's back end, so the tuned configuration is the one that runs
        ours = getattr(flashseq, PEER_MODULES[w.cell])(H, H, batch_first=True,
                                                       backend=self.backend).to(self.device, dtype)
        peer = getattr(torch.nn, PEER_MODULES[w.cell])(H, H, batch_first=True).to(self.device,
                                                                                  dtype)
        peer.load_state_dict(ours.state_dict())
        x = torch.randn(w.batch, w.steps, H, device=self.device, dtype=dtype, requires_grad=True)
        grad = torch.randn(w.batch, w.steps, H, device=self.device, dtype=dtype)

        def run(module, tuned):
            def go():
                with self._override(tuned):
                    out, _ = module(x)
                    torch.autograd.grad(out, (x, *module.parameters()), grad)
            return go
        return run(ours, config), run(peer, None)

    peer_names = ("torch.nn",)

    def peers(self, w: Workload, config) -> list:
        """[(peer name, (ours, peer) calls or "n/a (why)")] in ``peer_names`` order."""
        calls = self.peer_calls(w, config)
        if calls is None:
            why = ("several heads" if w.heads != 1 else f"no {w.cell} module")
            calls = f"n/a (torch.nn: {why})"
        return [(self.peer_names[0], calls)]


class CpuTarget(_Target):
    """The compiled CPU loop (``backend="cpu"``); configs are ``CpuConfig``s."""

    kernel = cpu_config.KERNEL
    device = torch.device("cpu")
    backend = "cpu"

    def default(self):
        return cpu_config.DEFAULT

    def _override(self, config):
        return cpu_config.override(config)

    def bucket(self, w: Workload) -> dict:
        return cpu_config.bucket(w.cell, w.batch, w.heads, w.head_dim)

    def candidates(self, w: Workload, k: int) -> list:
        found = cpu_config.candidates(w.cell, w.batch, w.heads, w.head_dim,
                                      getattr(torch, w.dtype), k=k)
        return [config for config, _ in found]

    def to_json(self, config) -> dict:
        return config.to_json()

    def describe(self, config) -> str:
        return config.describe()


class GpuTarget(_Target):
    """The Triton back end on the CUDA device here; configs are dicts of PLAN_FIELDS."""

    kernel = triton_tuned.KERNEL
    backend = "triton"

    def __init__(self, spec, device=None):
        super().__init__()
        self.spec = spec
        self.device = torch.device(device or "cuda")

    def default(self):
        return None  # the plan as plan_fused_rnn makes it

    def bucket(self, w: Workload) -> dict:
        return triton_tuned.bucket_of(w.cell, w.batch, w.heads, w.head_dim)

    def candidates(self, w: Workload, k: int) -> list:
        found = gpu_candidates(w.cell, w.batch, w.heads, w.head_dim, getattr(torch, w.dtype),
                               self.spec, k=k)
        return [{f: c[f] for f in PLAN_FIELDS} for c in found]

    def _override(self, config):
        if not config:  # the plan itself: neither an override nor a cache entry may apply
            stack = contextlib.ExitStack()
            stack.enter_context(triton_tuned.override(None))
            stack.enter_context(tuning_off())
            return stack
        return triton_tuned.override(config)

    peer_names = ("cuDNN", "FlashRNN")

    def peers(self, w: Workload, config) -> list:
        """cuDNN (torch.nn on CUDA; one head only) and FlashRNN (lstm, when it imports)."""
        cudnn = super().peers(w, config)[0][1]
        return [("cuDNN", cudnn), ("FlashRNN", flashrnn_peer(self, w, config))]

    def to_json(self, config) -> dict:
        return dict(config or {})

    def describe(self, config) -> str:
        if not config:
            return "plan"
        return (f"{config['path']} BB={config['BB']} BH={config['BH']} "
                f"warps={config['num_warps']} stages={config['num_stages']}")


FLASHRNN_BACKEND = "cuda_fused"


def flashrnn_reason(cell: str) -> str | None:
    """Why FlashRNN is no peer of ``cell`` here ("n/a (...)"), or None."""
    if importlib.util.find_spec("flashrnn") is None:
        return "n/a (flashrnn not installed)"
    try:
        from bench import peers
    except ImportError:
        return "n/a (the FlashRNN comparison uses bench/peers.py: run from a flashseq checkout)"
    problem = peers.import_reason("flashrnn")
    if problem:
        return f"n/a ({problem})"
    if cell != "lstm":
        return f"n/a (the FlashRNN comparison covers lstm, not {cell})"
    return None


def flashrnn_peer(target: _Target, w: Workload, config):
    """(ours, FlashRNN) forward + backward on the same x and weights, projection GEMM included
    on both sides (the fused_rnn suite's adapters, ``bench.rnn_workloads.fused_rnn_call`` and
    ``bench.peers.flashrnn_call``), ours under ``config``; or "n/a (why)"."""
    why = flashrnn_reason(w.cell)
    if why:
        return why
    from bench import peers
    from bench.rnn_workloads import LSTMWorkload, fused_rnn_call, make_tensors

    H = w.heads * w.head_dim
    lw = LSTMWorkload(B=w.batch, T=w.steps, I=H, H=H, NH=w.heads, mode="fwd+bwd",
                      dtype=getattr(torch, w.dtype), device=target.device)
    tensors = make_tensors(lw)
    ours_fn = fused_rnn_call(lw, tensors, target.backend)

    def ours():
        with target._override(config):
            return ours_fn()
    return ours, peers.flashrnn_call(lw, tensors, FLASHRNN_BACKEND)


__all__ = ["CpuTarget", "GpuTarget", "rel_err", "tuning_off", "flashrnn_reason",
           "flashrnn_peer"]
