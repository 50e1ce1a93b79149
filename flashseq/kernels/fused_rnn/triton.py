"""``backend="triton"``: persistent Triton kernels (``triton_fwd``, ``triton_bwd``) and, for heads
too large for one program, split-head kernels (``triton_split``, ``triton_split_bwd``) run with
a per-step barrier or one launch per step; ``plan.plan_fused_rnn`` decides (``triton_function``).

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (slow; for tests).
Triton itself is imported only when a call runs, so ``import flashseq`` never imports it.
"""
from __future__ import annotations

import importlib.util
import os

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(device):
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and _interpreting():
        return None
    return ("triton runs on CUDA tensors, and on CPU tensors only under TRITON_INTERPRET=1; "
            f"got {device.type}")


def unsupported_reason(problem):
    if problem.dtype not in SUPPORTED_DTYPES:
        return f"dtype {problem.dtype} is not supported (allowed: float16, bfloat16, float32)"
    if problem.cell.num_gates > 4 or problem.cell.num_states > 4:
        return f"cell {problem.cell.name!r} has more than 4 gates or states"
    from flashseq.cells.triton import TRITON_CELLS
    if problem.cell.name not in TRITON_CELLS:
        return f"cell {problem.cell.name!r} has no Triton functions (flashseq/cells/triton/)"
    return None


def fused_rnn(wx, r, b, states, *, cell, lengths):
    from .triton_function import fused_rnn_triton
    return fused_rnn_triton(wx, r, b, states, cell=cell, lengths=lengths)
