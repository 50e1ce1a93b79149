"""The back ends of the chunkwise linear recurrences and how ``backend="auto"`` picks one.

``"reference"``  the step-by-step loop of ``reference.py`` (any device and dtype, float64 too);
``"torch"``      the chunkwise algorithm in plain PyTorch (``chunk_torch.py``), any device;
``"triton"``     Triton kernels (``triton_*.py``): CUDA tensors, or CPU tensors under
                 ``TRITON_INTERPRET=1``; ops and dtypes it does not serve are listed by
                 ``unsupported_reason``.

``"auto"``: chunk ops take Triton on CUDA when it serves the call, else the PyTorch chunkwise
path; the recurrent twins (``fused_recurrent_*``) take Triton on CUDA, else the step loop, which
is what a step-by-step recurrence is on a CPU. Skipping Triton on CUDA warns once per reason.
"""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch

BACKEND_NAMES = ("auto", "reference", "torch", "triton")
TRITON_DTYPES = ("torch.float16", "torch.bfloat16", "torch.float32")
# ops with Triton kernels (triton_ops.py), chunkwise and step by step
TRITON_CHUNK_OPS = ("gla", "mlstm", "delta")
TRITON_RECURRENT_OPS = ("gla", "mlstm", "delta")
_warned: set = set()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable_reason(device) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type == "cuda" or (device.type == "cpu" and _interpreting()):
        return None
    return ("triton runs on CUDA tensors, and on CPU tensors only under TRITON_INTERPRET=1; "
            f"got {device.type}")


def triton_unsupported_reason(problem, recurrent: bool) -> str | None:
    if str(problem.dtype) not in TRITON_DTYPES:
        return f"dtype {problem.dtype} is not served (float16, bfloat16, float32)"
    if problem.dtype == torch.bfloat16 and problem.device.type == "cpu":
        return ("bfloat16 under the Triton interpreter computes tl.dot wrongly; use a GPU, or "
                "float16/float32")
    served = TRITON_RECURRENT_OPS if recurrent else TRITON_CHUNK_OPS
    if problem.op not in served:
        return f"no Triton {'recurrent' if recurrent else 'chunkwise'} kernel for {problem.op!r} yet"
    return None


def _warn_once(message: str):
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def choose(backend, problem, recurrent: bool, caller: str) -> str:
    """Name of the back end that runs ``problem``; a named one that cannot raises
    ``NotImplementedError`` saying why."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {list(BACKEND_NAMES)}; "
                        f"got {type(backend).__name__}")
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend={backend!r} is not known; allowed: {list(BACKEND_NAMES)}")
    if backend == "triton":
        reason = (triton_unavailable_reason(problem.device)
                  or triton_unsupported_reason(problem, recurrent))
        if reason:
            raise NotImplementedError(f"{caller} backend 'triton' cannot run this call: {reason}")
        return "triton"
    if backend != "auto":
        return backend
    fallback = "reference" if recurrent else "torch"
    if problem.device.type != "cuda":
        return fallback
    reason = triton_unavailable_reason(problem.device) or triton_unsupported_reason(problem, recurrent)
    if reason is None:
        return "triton"
    _warn_once(f"flashseq.ops.{caller}: falling back to backend {fallback!r} ({reason})")
    return fallback


__all__ = ["choose", "BACKEND_NAMES"]
