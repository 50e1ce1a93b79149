"""Argument validation for ``fused_rnn`` and the small description backends decide on.

Shapes, dtypes and devices are checked here (``validate``); the values of ``lengths`` too, also
under ``torch.compile`` (``checked_lengths``); the memory a call needs before it starts
(``check_size``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from flashseq._lazy_dynamo import assume_constant_result
from flashseq.cells import Cell, get_cell
from flashseq.kernels._checks import FLOAT_DTYPES  # noqa: F401 (re-exported)
from flashseq.kernels._checks import check_float_dtype, check_like, check_tensor
from flashseq.kernels._checks import describe as _describe


@dataclass(frozen=True)
class Problem:
    """What a back end needs to know to accept or refuse a call (no tensors)."""

    cell: Cell
    batch: int
    steps: int
    heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    has_lengths: bool
    needs_grad: bool
    # The extra keyword arguments in use ("dropconnect", "reset", ..., and "cell='...'" for a
    # cell only the reference serves), in a fixed order; only a back end whose module has
    # SERVES_EXTRAS = True runs a call where this is not empty (backends.py).
    extras: tuple = ()


def _check_tensor(name, t, shape_doc, ndim, optional=False):
    if t is None and optional:
        return
    check_tensor(name, t, ndim, shape_doc)


def _check_like(name, t, wx, expected_shape, shape_doc):
    check_like(name, t, wx, "wx", expected_shape, shape_doc)


def validate(wx, r, b, states, cell, lengths) -> Problem:
    """Check every argument of ``fused_rnn``; raise ``TypeError``/``ValueError`` naming it."""
    cell = get_cell(cell)
    G = cell.num_gates
    S = cell.num_states
    _check_tensor("wx", wx, "[B, T, G, NH, DH]", 5)
    check_float_dtype("wx", wx)
    B, T, G_wx, NH, DH = wx.shape
    if G_wx != G:
        raise ValueError(f"wx's gate axis (dim 2) must be {G} for cell {cell.name!r} "
                         f"(gates {cell.gate_names}); got {_describe(wx)}")
    if B == 0:
        raise ValueError(f"wx has an empty batch (B=0); B must be >= 1; got {_describe(wx)}")
    if T == 0:
        raise ValueError(f"wx has no time steps (T=0); T must be >= 1; got {_describe(wx)}")
    if NH == 0 or DH == 0:
        raise ValueError(f"wx must have NH >= 1 heads of DH >= 1 units; got {_describe(wx)}")
    _check_tensor("r", r, "[G, NH, DH, DH]", 4)
    _check_like("r", r, wx, (G, NH, DH, DH), "[G, NH, DH, DH]")
    _check_tensor("b", b, "[G, NH, DH]", 3)
    _check_like("b", b, wx, (G, NH, DH), "[G, NH, DH]")
    _check_tensor("states", states, "[S, B, NH, DH]", 4, optional=True)
    if states is not None:
        _check_like("states", states, wx, (S, B, NH, DH), f"[S, B, NH, DH] with S={S} {cell.state_names}")
    if lengths is not None:
        _check_tensor("lengths", lengths, "[B] int64", 1)
        if lengths.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"lengths must be an int64 (or int32) tensor [B]; got {_describe(lengths)}")
        if lengths.shape[0] != B:
            raise ValueError(f"lengths must have shape [B] = ({B},); got {_describe(lengths)}")
        if lengths.device.type != "cpu" and lengths.device != wx.device:
            raise ValueError(f"lengths must be on the CPU or on wx's device {wx.device}; "
                             f"got {_describe(lengths)}")
        # A value check reads the tensor, which would end a torch.compile graph; a traced call
        # checks in the graph instead (checked_lengths, called by the entry point).
        if not torch.compiler.is_compiling():
            _check_lengths_range(lengths, T)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (wx, r, b, states))
    return Problem(cell, B, T, NH, DH, wx.dtype, wx.device, lengths is not None, needs_grad)


def _check_lengths_range(lengths: torch.Tensor, steps: int) -> None:
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 0 or hi > steps:
        raise ValueError(f"lengths must lie in 0..T = 0..{steps}; got values in {lo}..{hi}")


@torch.library.custom_op("flashseq::fused_rnn_checked_lengths", mutates_args=())
def checked_lengths(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """``lengths`` [B] (a copy) after checking its values lie in 0..``steps``; ``ValueError``
    otherwise. An op of its own so that a torch.compile graph keeps the check: a bare
    ``torch._check`` on a tensor's values needs ``.item()``, which ends the graph, and an op
    without outputs could be dropped as dead code. Copying [B] integers costs nothing."""
    _check_lengths_range(lengths, steps)
    return lengths.clone()


@checked_lengths.register_fake
def _checked_lengths_fake(lengths, steps):
    return torch.empty_like(lengths)


# ---- memory needed before any work -------------------------------------------------------

def output_bytes(problem: Problem) -> int:
    """Bytes of the outputs every back end allocates: h [B, T, NH, DH] and the last states
    [S, B, NH, DH], in wx's dtype."""
    unit = problem.batch * problem.heads * problem.head_dim * problem.dtype.itemsize
    return (problem.steps + problem.cell.num_states) * unit


def device_memory_bytes(device: torch.device) -> int | None:
    """What one call can hope to allocate on ``device``: on a GPU the free memory plus what
    PyTorch's caching allocator holds unused; on the CPU the machine's physical memory (free
    memory would refuse calls the page cache can make room for). None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # not a POSIX system
            return None
    return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def size_error(backend, problem: Problem) -> str | None:
    """Why ``backend`` (a back-end module) cannot hold ``problem`` in memory, else None.

    A back end states the bytes it allocates for a call (outputs, and the tensors it keeps for
    the backward when a gradient is needed) with ``workspace_bytes(problem)``; without one, the
    outputs alone count. This is a lower bound, so a refusal means the call can never fit.
    """
    need_fn = getattr(backend, "workspace_bytes", output_bytes)
    need = need_fn(problem)
    have = device_memory_bytes(problem.device)
    if have is None or need <= have:
        return None
    name = backend.__name__.rsplit(".", 1)[-1].removesuffix("_backend")
    B, T, NH, DH = problem.batch, problem.steps, problem.heads, problem.head_dim
    return (f"fused_rnn: wx [B, T, G, NH, DH] with B={B}, T={T}, NH={NH}, DH={DH} "
            f"({problem.dtype}) needs at least {_gib(need)} on back end {name!r} (outputs h "
            f"[B, T, NH, DH]{' and what the backward keeps' if problem.needs_grad else ''}), "
            f"but {problem.device} offers {_gib(have)}; shorten T or B, or run the sequence in "
            f"chunks passing the last states on")


@assume_constant_result  # flashseq/_lazy_dynamo.py: keeps import flashseq free of triton
def _size_error_constant(module_name, cell_name, batch, steps, heads, head_dim, dtype, device,
                         has_lengths, needs_grad) -> str:
    # Under torch.compile the sizes are constants of the graph, so is the answer; the memory
    # query itself is not traceable.
    import importlib
    problem = Problem(get_cell(cell_name), batch, steps, heads, head_dim, dtype,
                      torch.device(device), has_lengths, needs_grad)
    return size_error(importlib.import_module(module_name), problem) or ""


def check_size(backend, problem: Problem) -> None:
    """Raise ``ValueError`` before any work when ``backend`` cannot hold ``problem``'s outputs
    and saved tensors in the device's memory (see ``size_error``)."""
    sizes = (problem.batch, problem.steps, problem.heads, problem.head_dim)
    if torch.compiler.is_compiling() and all(type(v) is int for v in sizes):
        message = _size_error_constant(backend.__name__, problem.cell.name, *sizes,
                                       problem.dtype, str(problem.device), problem.has_lengths,
                                       problem.needs_grad)
    else:
        message = size_error(backend, problem)
    if message:
        raise ValueError(message)
