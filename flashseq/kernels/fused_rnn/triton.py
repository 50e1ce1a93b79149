"""``backend="triton"``: persistent Triton kernels (``triton_fwd``, ``triton_bwd``) and, for heads
too large for one program, split-head kernels (``triton_split``, ``triton_split_bwd``) run with
a per-step barrier or one launch per step; ``plan.plan_fused_rnn`` decides (``triton_function``).

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (slow; for tests; float16
and float32 only there: the interpreter computes bfloat16 dots wrongly, so bfloat16 is refused).
Triton itself is imported only when a call runs, so ``import flashseq`` never imports it.

Serves the extras (dropconnect, variational dropout, zoneout, reset, return_all_states) and the
LayerNorm cells on the persistent path (``triton_extras``); a call with them whose head the plan
splits over programs (large DH) is refused with the reason, so ``"auto"`` falls back to the
reference back end with one warning and ``backend="triton"`` raises ``NotImplementedError``.
"""
from __future__ import annotations

import importlib.util
import os

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# fused_rnn receives ``extras=`` (backends.py) for the extras and the LayerNorm cells
SERVES_EXTRAS = True


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


# CUDA's limit on the grid's y and z dimensions; the kernels' grids put the heads on y.
MAX_GRID_YZ = 65535


def unsupported_reason(problem):
    if problem.dtype not in SUPPORTED_DTYPES:
        return f"dtype {problem.dtype} is not supported (allowed: float16, bfloat16, float32)"
    if problem.dtype == torch.bfloat16 and _interpreting():
        # Measured with triton 3.7.1: LSTM outputs off by a relative error of 4.7 (float16 and
        # float32 agree with the reference); the interpreter's bf16 tl.dot is at fault, not
        # the kernels, which run bf16 correctly when compiled for a GPU.
        return ("bfloat16 is computed wrongly by the Triton interpreter (TRITON_INTERPRET=1; an "
                "upstream limitation of its bf16 tl.dot): use float16 or float32 there, or a GPU "
                "without TRITON_INTERPRET")
    if problem.heads > MAX_GRID_YZ and not _interpreting():
        return (f"NH={problem.heads} heads exceed the {MAX_GRID_YZ} programs a CUDA grid holds "
                f"along the dimension the kernels give the heads")
    if problem.cell.num_gates > 4 or problem.cell.num_states > 4:
        return f"cell {problem.cell.name!r} has more than 4 gates or states"
    from flashseq.cells.triton import TRITON_CELLS
    from .triton_extras import NORM_CELLS
    if problem.cell.name not in TRITON_CELLS and problem.cell.name not in NORM_CELLS:
        return f"cell {problem.cell.name!r} has no Triton functions (flashseq/cells/triton/)"
    if problem.extras:
        return _extras_path_reason(problem)
    return None


def _extras_path_reason(problem):
    # the extras kernels are persistent only: ask the plan whether the head fits one program
    from .triton_extras import base_cell_name, split_reason
    from .triton_function import _cached_plan, gpu_spec
    from .triton_tuned import tuned_plan
    cell = base_cell_name(problem.cell.name)
    plan = _cached_plan(cell, problem.batch, problem.heads, problem.head_dim, problem.dtype,
                        gpu_spec(problem.device), None)
    return split_reason(tuned_plan(plan, problem.device))


def fused_rnn(wx, r, b, states, *, cell, lengths, extras=None):
    # the plain kernels unless an extra or a LayerNorm cell (a NormCell) asks for the others
    if extras is None and getattr(cell, "normalize_recurrent", None) is None:
        from .triton_function import fused_rnn_triton
        return fused_rnn_triton(wx, r, b, states, cell=cell, lengths=lengths)
    from .triton_extras import fused_rnn_triton_extras
    return fused_rnn_triton_extras(wx, r, b, states, cell=cell, lengths=lengths, extras=extras)


def workspace_bytes(problem):
    """Bytes the forward allocates: h [B, T, NH, DH] and the last states in wx's dtype and,
    when a gradient is needed, the saved rh [B, T, G, NH, DH] and the state sequence
    [T+1, S, B, NH, DH] in float32. (Kernel offsets are int64: memory is the only limit.)
    With return_all_states also every step's states [T, S, B, NH, DH] in wx's dtype; with a
    LayerNorm cell and a gradient also LN(h @ r) [B, T, G, NH, DH] and its 1/std [B, T, NH]
    in float32 (the extras kernels' offsets are int32 unless a tensor reaches 2**31 elements,
    where they switch to int64)."""
    B, T, NH, DH = problem.batch, problem.steps, problem.heads, problem.head_dim
    G, S = problem.cell.num_gates, problem.cell.num_states
    outputs = T + S + (T * S if "return_all_states" in problem.extras else 0)
    need = outputs * B * NH * DH * problem.dtype.itemsize
    if problem.needs_grad:
        norm = problem.cell.name.startswith("layernorm_")
        saved_gates = 2 * G if norm else G
        need += (T * saved_gates + (T + 1) * S) * B * NH * DH * 4
        if norm:
            need += B * T * NH * 4  # 1/std of LN(h @ r)
    return need
