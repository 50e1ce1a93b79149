"""Correctness smoke checks a suite runs before timing: a wrong kernel is never timed.

Each check runs the candidate on a small fresh random input and compares its outputs and every
gradient with the float64 reference (relative error ||out - ref|| / ||ref||).
"""
from __future__ import annotations

import torch

from flashseq.cells import get_cell
from flashseq.kernels.fused_rnn.reference import fused_rnn_reference

# The project's bounds on ||out - ref|| / ||ref|| per dtype; float32 on a GPU may use TF32.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
TF32_TOLERANCE = 5e-4


def tolerance(dtype: torch.dtype, device) -> float:
    if dtype == torch.float32 and torch.device(device).type == "cuda":
        return TF32_TOLERANCE
    return TOLERANCE[dtype]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; any NaN/inf in ``out`` gives inf."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    if out64.shape != ref64.shape or not torch.isfinite(out64).all():
        return float("inf")
    denom = ref64.norm().item()
    num = (out64 - ref64).norm().item()
    return num / denom if denom > 0 else num


def _random_rnn_inputs(cell, B, T, NH, DH, seed):
    g = torch.Generator().manual_seed(seed)
    G, S = cell.num_gates, cell.num_states
    wx = torch.randn(B, T, G, NH, DH, generator=g, dtype=torch.float64)
    r = torch.randn(G, NH, DH, DH, generator=g, dtype=torch.float64) / DH ** 0.5
    b = torch.randn(G, NH, DH, generator=g, dtype=torch.float64) * 0.1
    states = torch.randn(S, B, NH, DH, generator=g, dtype=torch.float64) * 0.5
    if cell.name == "slstm":  # n > 0 keeps h = c / n meaningful
        states[2] = states[2].abs() + 0.5
    return wx, r, b, states


def check_fused_rnn(backend: str, device, dtype: torch.dtype, *, cell: str = "lstm",
                    B: int = 3, T: int = 9, NH: int = 2, DH: int = 16, seed: int = 0) -> str | None:
    """None if ``fused_rnn(..., backend=backend)`` matches the reference, else what differs.

    Checks h [B, T, NH, DH], last_states [S, B, NH, DH] and the gradients of wx, r, b, states
    under random upstream gradients. Raises NotImplementedError if the backend cannot run.
    """
    from flashseq.ops import fused_rnn

    cell_obj = get_cell(cell)
    inputs64 = _random_rnn_inputs(cell_obj, B, T, NH, DH, seed)
    g = torch.Generator().manual_seed(seed + 1)
    dh = torch.randn(B, T, NH, DH, generator=g, dtype=torch.float64)
    ds = torch.randn(cell_obj.num_states, B, NH, DH, generator=g, dtype=torch.float64)

    def run(fn, tensors):
        leaves = [t.clone().requires_grad_(True) for t in tensors]
        h, last = fn(*leaves)
        grads = torch.autograd.grad((h, last), leaves, (dh.to(h), ds.to(last)))
        return [h, last, *grads]

    ref = run(lambda wx, r, b, s: fused_rnn_reference(wx, r, b, s, cell=cell_obj), inputs64)
    cand_inputs = [t.to(device=device, dtype=dtype) for t in inputs64]
    out = run(lambda wx, r, b, s: fused_rnn(wx, r, b, s, cell=cell, backend=backend), cand_inputs)
    tol = tolerance(dtype, device)
    names = ("h", "last_states", "grad wx", "grad r", "grad b", "grad states")
    bad = [f"{n} rel err {e:.2e}" for n, o, rf in zip(names, out, ref)
           if (e := rel_err(o, rf)) > tol]
    if bad:
        return f"{cell} {dtype} B={B} T={T} NH={NH} DH={DH}: " + ", ".join(bad) + f" > {tol:.0e}"
    return None


def check_same_output(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float) -> str | None:
    """None if ``out`` is within ``tol`` of ``ref`` (relative error), else a message naming it."""
    err = rel_err(out, ref)
    return None if err <= tol else f"{name}: rel err {err:.2e} > {tol:.0e}"


def check_lstm_module(backend: str, device, dtype: torch.dtype, *, B: int = 3, T: int = 9,
                      I: int = 8, H: int = 16, seed: int = 0) -> str | None:
    """None if ``flashseq.LSTM(backend=backend)`` matches a float64 torch.nn.LSTM holding the
    same weights (output [B, T, H] and the gradient of x [B, T, I]), else what differs."""
    import flashseq

    torch.manual_seed(seed)
    ref_module = torch.nn.LSTM(I, H, batch_first=True, dtype=torch.float64)
    module = flashseq.LSTM(I, H, batch_first=True, backend=backend, device=device, dtype=dtype)
    module.load_state_dict(ref_module.state_dict())
    x64 = torch.randn(B, T, I, dtype=torch.float64)
    dy64 = torch.randn(B, T, H, dtype=torch.float64)
    results = []
    for m, x, dy in ((ref_module, x64, dy64),
                     (module, x64.to(device=device, dtype=dtype), dy64.to(device=device, dtype=dtype))):
        x = x.clone().requires_grad_(True)
        y = m(x)[0]
        results.append((y, torch.autograd.grad(y, x, dy)[0]))
    tol = tolerance(dtype, device)
    bad = [msg for name, o, r in zip(("output", "grad x"), results[1], results[0])
           if (msg := check_same_output(name, o, r, tol))]
    return f"flashseq.LSTM {dtype}: " + ", ".join(bad) if bad else None


def check_lstm_mapping(seed: int = 0) -> str | None:
    """None if the benchmark's functional path (projection GEMM + fused_rnn reference on r
    viewed from torch's weight_hh_l0) computes exactly torch.nn.LSTM, in float64."""
    from .rnn_workloads import LSTMWorkload, fused_rnn_call, make_tensors

    w = LSTMWorkload(B=3, T=7, I=5, H=6, NH=1, mode="fwd", dtype=torch.float64,
                     device=torch.device("cpu"))
    t = make_tensors(w, seed)
    # in "fwd" mode the timed callable returns the output [B, T, H]
    ours = fused_rnn_call(w, t, "reference")()
    with torch.no_grad():
        ref = t.module(t.x)[0]
    return check_same_output("functional LSTM vs torch.nn.LSTM", ours, ref, 1e-12)
