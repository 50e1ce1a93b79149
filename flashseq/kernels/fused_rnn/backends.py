"""The back ends of ``fused_rnn`` and how ``backend="auto"`` chooses among them.

A back end is a module with three functions:

``unavailable_reason(device) -> str | None``
    why it cannot run at all on ``device`` (missing compiler, extension, GPU), None if it can;
``unsupported_reason(problem) -> str | None``
    why it cannot serve this particular call (dtype, sizes, ...), None if it can;
``fused_rnn(wx, r, b, states, *, cell, lengths) -> (h, last_states)``
    the computation, differentiable; ``states`` is always given and ``lengths`` is None or an
    int64 tensor on ``wx``'s device (the entry point normalises both).

A module with ``SERVES_EXTRAS = True`` also serves the extra keyword arguments (dropout masks,
zoneout, reset, return_all_states: extras.py) and the cells of ``REFERENCE_CELLS``; it receives
them as ``fused_rnn(..., extras=Extras)``. Any other back end is refused a call that uses one
(``Problem.extras`` not empty), before its own checks run.

Modules are imported lazily so that importing flashseq never imports Triton or builds anything.
"""
from __future__ import annotations

import importlib
import os
import warnings

import torch

from flashseq._lazy_dynamo import assume_constant_result

from .problem import Problem

BACKEND_MODULES = {
    "reference": "flashseq.kernels.fused_rnn.reference_backend",
    "cpu": "flashseq.kernels.fused_rnn.cpu",
    "triton": "flashseq.kernels.fused_rnn.triton",
    "cuda": "flashseq.kernels.fused_rnn.cuda",
}
BACKEND_NAMES = ("auto", *BACKEND_MODULES)

# Preference of backend="auto", fastest first; "reference" always serves.
AUTO_ORDER = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpu", "reference"),
}

_warned: set = set()
_loaded: dict = {}


def load(name: str):
    # Cached so dispatch is plain dict lookups, which torch.compile traces without a graph break.
    module = _loaded.get(name)
    if module is None:
        module = _loaded[name] = importlib.import_module(BACKEND_MODULES[name])
    return module


def unavailable_reason(name: str, device: torch.device) -> str | None:
    try:
        module = load(name)
    except ImportError as err:  # e.g. triton not installed
        return f"cannot import {BACKEND_MODULES[name]}: {err}"
    return module.unavailable_reason(torch.device(device))


def _not_opted_in(name: str) -> bool:
    """True for a back end that runs only when its opt-in variable (module ``OPT_IN``) is 1."""
    try:
        opt_in = getattr(load(name), "OPT_IN", None)
    except ImportError:
        return False
    return opt_in is not None and os.environ.get(opt_in) != "1"


def _as_device(device) -> torch.device:
    """``available_backends``' ``device`` argument as a torch.device; TypeError / ValueError
    naming it otherwise."""
    if isinstance(device, torch.device):
        return device
    if isinstance(device, bool) or not isinstance(device, (str, int)):
        raise TypeError("device must be None, a torch.device, a str such as 'cpu' or 'cuda:0', "
                        f"or a CUDA device index; got {type(device).__name__} {device!r}")
    try:
        return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"device={device!r} is not a device torch knows ({err})") from None


def _device_exists(device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return count > 0 if device.index is None else device.index < count


def available_backends(device=None) -> list[str]:
    """Names of the back ends that can run on ``device`` (a torch.device, a str such as "cpu" or
    "cuda:0", a CUDA device index; default: the current CUDA device if there is one, else the
    CPU), in ``"auto"``'s order of preference. Empty for a CUDA device this machine lacks."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = _as_device(device)
    if not _device_exists(device):
        return []
    names = AUTO_ORDER.get(device.type, ("reference",))
    extra = [n for n in BACKEND_MODULES if n not in names]
    return [n for n in (*names, *extra) if unavailable_reason(n, device) is None]


def _warn_once(message: str):
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def choose(backend: str, problem: Problem):
    """The module that runs ``problem`` (see ``choose_name``)."""
    sizes = (problem.batch, problem.steps, problem.heads, problem.head_dim)
    if torch.compiler.is_compiling() and all(type(v) is int for v in sizes):
        # Decided once at trace time from plain values: the availability checks (extension
        # builds, imports) are not traceable, and their answer is a constant of the graph.
        # Symbolic sizes (dynamic=True) take the eager path below, which breaks the graph.
        name = _choose_name_constant(backend, problem.cell.name, *sizes, problem.dtype,
                                     str(problem.device), problem.has_lengths, problem.needs_grad,
                                     problem.extras)
        return _loaded[name]
    return load(choose_name(backend, problem))


@assume_constant_result
def _choose_name_constant(backend, cell_name, batch, steps, heads, head_dim, dtype, device,
                          has_lengths, needs_grad, extras=()) -> str:
    from flashseq.cells import get_cell
    problem = Problem(get_cell(cell_name), batch, steps, heads, head_dim, dtype,
                      torch.device(device), has_lengths, needs_grad, tuple(extras))
    name = choose_name(backend, problem)
    load(name)
    return name


def _extras_reason(name: str, problem: Problem) -> str | None:
    """Why back end ``name`` cannot serve the extras ``problem`` uses, else None."""
    if not problem.extras:
        return None
    try:
        if getattr(load(name), "SERVES_EXTRAS", False):
            return None
    except ImportError:
        return None  # unavailable_reason says why
    return (f"{', '.join(problem.extras)} not served by this back end yet "
            f"('reference', 'cpu' and 'triton' serve them)")


def _reason(name: str, problem: Problem) -> str | None:
    # extras first: refusing them needs no compiler or extension build
    return (_extras_reason(name, problem) or unavailable_reason(name, problem.device)
            or load(name).unsupported_reason(problem))


def choose_name(backend: str, problem: Problem) -> str:
    """The back end that runs ``problem``: the named one, or ``"auto"``'s first that can.

    A named back end that cannot run raises ``NotImplementedError`` saying why. ``"auto"`` skips
    a faster back end that cannot serve the call and says so once per reason (a warning).
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {list(BACKEND_NAMES)}; got {type(backend).__name__}")
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend={backend!r} is not known; allowed: {list(BACKEND_NAMES)}")
    if backend != "auto":
        reason = _reason(backend, problem)
        if reason:
            raise NotImplementedError(f"fused_rnn backend {backend!r} cannot run this call: {reason}")
        return backend
    skipped = []
    for name in AUTO_ORDER.get(problem.device.type, ("reference",)):
        if _not_opted_in(name):
            continue  # an experimental back end nobody asked for: skipping it is no fallback
        reason = _reason(name, problem)
        if reason is None:
            if skipped:
                _warn_once(f"flashseq.ops.fused_rnn: falling back to backend {name!r} "
                           f"({'; '.join(skipped)})")
            return name
        skipped.append(f"{name}: {reason}")
    raise RuntimeError("no fused_rnn backend can run this call: " + "; ".join(skipped))
