"""Tensor-argument checks shared by the kernel families' validation modules.

Each raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong rank, shape or device)
naming the argument, its layout, and what it got (``describe``).
"""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def describe(t) -> str:
    """"shape (...), dtype ..., device ..." of a tensor; "type <name>" of anything else."""
    if not isinstance(t, torch.Tensor):
        return f"type {type(t).__name__}"
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_tensor(name: str, t, ndim: int, layout: str) -> None:
    """``t`` is a torch.Tensor with ``ndim`` dimensions (``layout``, e.g. "[B, T, H, K]")."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}; got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}; got {describe(t)}")


def check_float_dtype(name: str, t: torch.Tensor, layout: str = "") -> None:
    """``t`` holds float16, bfloat16, float32 or float64 (``layout`` is quoted when given)."""
    if t.dtype not in FLOAT_DTYPES:
        where = f" {layout}" if layout else ""
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64{where}; "
                        f"got {describe(t)}")


def check_float_tensor(name: str, t, ndim: int, layout: str) -> None:
    """``check_tensor``, then ``check_float_dtype`` with the layout in its message."""
    check_tensor(name, t, ndim, layout)
    check_float_dtype(name, t, layout)


def check_shape(name: str, t: torch.Tensor, expected, layout: str) -> None:
    """``t.shape == expected``; ``layout`` names the axes of ``expected``."""
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {layout} = {tuple(expected)}; got {describe(t)}")


def check_device(name: str, t: torch.Tensor, device: torch.device, ref: str) -> None:
    """``t`` is on ``device``, the device of the argument named ``ref``."""
    if t.device != device:
        raise ValueError(f"{name} must be on {ref}'s device {device}; got {describe(t)}")


def check_like(name: str, t: torch.Tensor, ref_t: torch.Tensor, ref: str, expected,
               layout: str) -> None:
    """``t`` has shape ``expected`` and the dtype and device of ``ref_t`` (named ``ref``)."""
    check_shape(name, t, expected, layout)
    if t.dtype != ref_t.dtype:
        raise TypeError(f"{name} must have {ref}'s dtype {ref_t.dtype}; got {describe(t)}")
    check_device(name, t, ref_t.device, ref)


def check_scale(scale) -> None:
    """``scale`` is a float (an int is accepted) or None, which means K**-0.5."""
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"scale must be a float or None (default K**-0.5); "
                        f"got {type(scale).__name__}")
