"""Inputs and a forward+backward runner shared by the linear-scan tests (torch path and Triton).

An op case is a name from ``CASES``: "gla", "delta" (delta rule), "gdelta" (gated delta rule),
"dprod2" (gated DeltaProduct with two Householder steps) and "mlstm".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flashseq.kernels.linear_scan import reference
from tests.helpers import assert_close

CASES = ("gla", "delta", "gdelta", "dprod2", "mlstm")
OP_OF_CASE = {"gla": "gla", "delta": "delta", "gdelta": "delta", "dprod2": "delta", "mlstm": "mlstm"}


def make_case(case, B, T, H, K, V, *, N=None, seed=0, with_state=True, device="cpu"):
    """(args, kwargs, grad_names) of fresh random float64 inputs for ``case``.

    ``args`` are the positional tensors, ``kwargs`` hold g (gated delta), num_householder and
    initial_state ([N, H, K, V] or the mLSTM's (C, n, m); N defaults to B). ``grad_names`` names
    every differentiable tensor in the order ``tensors(args, kwargs)`` returns them.
    """
    gen = torch.Generator().manual_seed(seed)
    N = B if N is None else N

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * s).to(device)

    q = rnd(B, T, H, K)
    kwargs = {}
    if case == "gla":
        k, v = rnd(B, T, H, K), rnd(B, T, H, V)
        g = F.logsigmoid(rnd(B, T, H, K) + 2.0)
        args, names = (q, k, v, g), ["q", "k", "v", "g"]
    elif case == "mlstm":
        k, v = rnd(B, T, H, K), rnd(B, T, H, V)
        args, names = (q, k, v, rnd(B, T, H, s=2.0), rnd(B, T, H) + 3.0), ["q", "k", "v", "i", "f"]
    else:
        nh = 2 if case == "dprod2" else 1
        lead = (B, T, nh) if nh > 1 else (B, T)
        k = F.normalize(rnd(*lead, H, K), dim=-1)
        v = rnd(*lead, H, V)
        beta = torch.rand(*lead, H, generator=gen, dtype=torch.float64).to(device) * 2.0
        args, names = (q, k, v, beta), ["q", "k", "v", "beta"]
        if case != "delta":
            kwargs["g"] = F.logsigmoid(rnd(B, T, H) + 3.0)
            names.append("g")
        if nh > 1:
            kwargs["num_householder"] = nh
    if with_state:
        if case == "mlstm":
            kwargs["initial_state"] = (rnd(N, H, K, V, s=0.5), rnd(N, H, K, s=0.5), rnd(N, H))
            names += ["C0", "n0", "m0"]
        else:
            kwargs["initial_state"] = rnd(N, H, K, V, s=0.5)
            names.append("h0")
    return args, kwargs, names


def tensors(args, kwargs):
    """The differentiable tensors of a case, in ``grad_names`` order."""
    out = list(args)
    if kwargs.get("g") is not None:
        out.append(kwargs["g"])
    state = kwargs.get("initial_state")
    if state is not None:
        out += list(state) if isinstance(state, tuple) else [state]
    return out


def rebuild(args, kwargs, new_tensors):
    """(args, kwargs) with the tensors replaced by ``new_tensors`` (``tensors`` order)."""
    it = iter(new_tensors)
    args = tuple(next(it) for _ in args)
    kwargs = dict(kwargs)
    if kwargs.get("g") is not None:
        kwargs["g"] = next(it)
    state = kwargs.get("initial_state")
    if state is not None:
        kwargs["initial_state"] = (tuple(next(it) for _ in state) if isinstance(state, tuple)
                                   else next(it))
    return args, kwargs


def cast(args, kwargs, dtype):
    """q, k, v in ``dtype``; gates and states stay float64 -> float32 (states are float32)."""
    ts = tensors(args, kwargs)
    n_qkv = 3
    low = [t.to(dtype) if j < n_qkv else t.to(torch.float32 if dtype != torch.float64 else dtype)
           for j, t in enumerate(ts)]
    return rebuild(args, kwargs, low)


def reference_fn(case):
    return {"gla": reference.gla_reference, "mlstm": reference.mlstm_reference}.get(
        OP_OF_CASE[case], reference.delta_rule_reference)


def run_with_grads(fn, args, kwargs, upstream, seed=1):
    """Call ``fn(*args, output_final_state=True, **kwargs)`` on leaf copies; backpropagate random
    upstream gradients (``upstream``: dict that holds them across calls, filled on first use).
    Returns (o, final states list, grads list in ``tensors`` order)."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors(args, kwargs)]
    a, kw = rebuild(args, kwargs, leaves)
    o, final = fn(*a, output_final_state=True, **kw)
    finals = list(final) if isinstance(final, tuple) else [final]
    if not upstream:
        gen = torch.Generator().manual_seed(seed)
        upstream["do"] = torch.randn(o.shape, generator=gen, dtype=torch.float64)
        upstream["dfinal"] = [torch.randn(s.shape, generator=gen, dtype=torch.float64) for s in finals]
    loss = (o.double() * upstream["do"].to(o.device)).sum()
    for s, ds in zip(finals, upstream["dfinal"]):
        loss = loss + (s.double() * ds.to(s.device)).sum()
    loss.backward()
    return o, finals, [t.grad for t in leaves]


def compare(case, names, got, ref, tol, *, grads=True):
    """Assert o, the final states and (if ``grads``) every gradient of ``got`` match ``ref``."""
    o, finals, gr = got
    o_ref, finals_ref, gr_ref = ref
    assert_close(f"{case} o", o, o_ref, tol)
    for j, (s, s_ref) in enumerate(zip(finals, finals_ref)):
        assert s.dtype in (torch.float32, torch.float64), f"{case} final state dtype {s.dtype}"
        assert_close(f"{case} final_state[{j}]", s, s_ref, tol)
    if grads:
        for name, g, g_ref in zip(names, gr, gr_ref):
            assert g is not None, f"{case}: no gradient for {name}"
            assert_close(f"{case} d{name}", g, g_ref, tol)


def check_delta_rule_beta2_long_finite(op, device, T=4096):
    """beta = 2 (every transition a reflection) over T steps through ``op`` (a delta-rule entry
    point run with backend="triton"): output, final state and every gradient finite, and the
    forward as close to the float64 reference as the float32 reference is, within 2x plus 1e-5."""
    from flashseq.kernels.linear_scan.functional import fused_recurrent_delta_rule
    from tests.helpers import rel_err

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, T, 1, 16, generator=gen) for _ in range(3))
    k = F.normalize(k, dim=-1)
    beta = torch.full((1, T, 1), 2.0)
    leaves = [x.to(device).requires_grad_() for x in (q, k, v, beta)]
    o, S = op(*leaves, output_final_state=True, backend="triton")
    (o.sum() + S.sum()).backward()
    for name, x in zip(("o", "S", "dq", "dk", "dv", "dbeta"), [o, S] + [t.grad for t in leaves]):
        assert torch.isfinite(x).all(), name
    refs = [fused_recurrent_delta_rule(*(x.detach().to(dtype) for x in leaves),
                                       output_final_state=True, backend="reference")
            for dtype in (torch.float32, torch.float64)]
    for name, x, x32, x64 in zip(("o", "S"), (o, S), *refs):
        assert_close(name, x, x64, 2 * rel_err(x32, x64) + 1e-5)
