"""Other projects' kernels we measure against, each used only when it imports.

Nothing here is a dependency: a missing peer gives a "skipped: <why>" row, never a crash.
On the GPU machine peers arrive as wheels (see bench/gpu_session.sh).
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch

from .rnn_workloads import LSTMTensors, LSTMWorkload, recurrence_call

FLASHRNN_BACKENDS = ("cuda_fused", "triton_fused")
# Every peer package a suite may use (import names), for the machine record.
PEER_MODULES = ("flashrnn", "fla")


def import_reason(module: str) -> str | None:
    """None if ``module`` imports, else why not (one line)."""
    try:
        importlib.import_module(module)
    except Exception as err:  # a broken peer install raises more than ImportError
        return f"{module} does not import ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    return None


def flashrnn_reason(device) -> str | None:
    """Why FlashRNN cannot run on ``device``, or None."""
    if torch.device(device).type != "cuda":
        return "FlashRNN runs on CUDA devices only"
    return import_reason("flashrnn")


def flashrnn_call(w: LSTMWorkload, t: LSTMTensors, backend: str) -> Callable[[], object]:
    """FlashRNN's ``flashrnn(Wx, R, b, function="lstm", backend=...)`` after the same projection.

    FlashRNN takes Wx [B, T, G, NH, DH], R [G, NH, DH, DH] and b [G, NH, DH] (its default
    shapes "BTGHD", "GHDP", "GHD") and returns h as [S, B, T, NH, DH]; we keep state 0 (h).
    """
    if backend not in FLASHRNN_BACKENDS:
        raise ValueError(f"backend must be one of {FLASHRNN_BACKENDS}; got {backend!r}")
    from flashrnn import flashrnn

    dtype = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
    if w.dtype not in dtype:
        raise NotImplementedError(f"FlashRNN has no {w.dtype} kernels")

    def recur(wx, r, b):
        h, _ = flashrnn(wx, r, b, None, function="lstm", backend=backend, dtype=dtype[w.dtype])
        return h[0]

    return recurrence_call(w, t, recur)
