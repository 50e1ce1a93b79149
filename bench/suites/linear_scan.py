"""Suite "linear_scan": flashseq's chunkwise linear recurrences against flash-linear-attention.

CUDA: B=2, T in {2048, 16384}, H=16, K=V=128, bfloat16, forward and forward+backward:
flashseq ``chunk_gla`` / gated ``chunk_delta_rule`` / ``chunk_mlstm`` (backend "auto") against
fla's ``chunk_gla`` and ``chunk_gated_delta_rule`` (ratio = time / fla's time; target <= 0.9).
mlstm_kernels is recorded as a peer only by whether it imports (its call is not wired yet).
CPU: B=1, T in {256, 1024}, H=4, K=V=64, float32: the chunkwise PyTorch path against the
step-by-step loop (ratio = time / the loop's time).
Every provider gets the same inputs; each of ours passes a check against the float64
reference on a small case before anything is timed.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from bench import runner
from bench.peers import import_reason
from bench.suites import CorrectnessError

DESCRIPTION = ("Chunkwise linear recurrences (GLA, gated delta rule, mLSTM): flashseq.ops.chunk_* "
               "vs flash-linear-attention on CUDA (B=2, H=16, K=V=128, bf16; target ratio <= 0.9), "
               "vs the step loop on CPU.")

OPS = ("gla", "gated_delta", "mlstm")
MODES = ("fwd", "fwd+bwd")
GPU = dict(B=2, T=(2048, 16384), H=16, D=128, dtype=torch.bfloat16)
GPU_QUICK = dict(B=1, T=(256,), H=2, D=64, dtype=torch.bfloat16)
CPU = dict(B=1, T=(256, 1024), H=4, D=64, dtype=torch.float32)
CPU_QUICK = dict(B=1, T=(32,), H=1, D=8, dtype=torch.float32)


def make_inputs(op, B, T, H, D, dtype, device, seed=0):
    """(args, kwargs) of the flashseq op, with requires_grad leaves."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    q, v = rnd(B, T, H, D).to(dtype), rnd(B, T, H, D).to(dtype)
    if op == "gla":
        k = rnd(B, T, H, D).to(dtype)
        args, kwargs = (q, k, v, F.logsigmoid(rnd(B, T, H, D)) / 16), {}
    elif op == "gated_delta":
        k = F.normalize(rnd(B, T, H, D), dim=-1).to(dtype)
        args, kwargs = (q, k, v, torch.rand(B, T, H, generator=gen).to(device)), \
            {"g": F.logsigmoid(rnd(B, T, H) + 4)}
    else:
        k = rnd(B, T, H, D).to(dtype)
        args, kwargs = (q, k, v, rnd(B, T, H), rnd(B, T, H) + 3), {}
    args = tuple(a.requires_grad_() for a in args)
    kwargs = {key: val.requires_grad_() for key, val in kwargs.items()}
    return args, kwargs


def _flashseq_fn(op):
    import flashseq
    return {"gla": flashseq.ops.chunk_gla, "gated_delta": flashseq.ops.chunk_delta_rule,
            "mlstm": flashseq.ops.chunk_mlstm}[op]


def _timed(call, mode, args, kwargs):
    """A no-argument callable running ``call`` (and its backward for "fwd+bwd")."""
    def fwd():
        with torch.no_grad():
            return call(*args, **kwargs)

    def fwd_bwd():
        o = call(*args, **kwargs)[0]
        o.backward(torch.ones_like(o))
        for t in (*args, *kwargs.values()):
            t.grad = None

    return fwd if mode == "fwd" else fwd_bwd


def flashseq_call(op, backend):
    fn = _flashseq_fn(op)
    return lambda *a, **kw: fn(*a, backend=backend, **kw)


def fla_call(op):
    """fla's function for ``op`` with flashseq's argument order, or raise NotImplementedError."""
    if op == "gla":
        from fla.ops.gla import chunk_gla
        return lambda q, k, v, g: chunk_gla(q, k, v, g)
    if op == "gated_delta":
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        return lambda q, k, v, beta, g: chunk_gated_delta_rule(q, k, v, g, beta)
    raise NotImplementedError("fla has no mLSTM op; mlstm_kernels would be the peer")


def smoke_status(op, backend, device, dtype) -> str | None:
    """None if flashseq's op on ``backend`` matches the float64 step loop on a small case."""
    from flashseq.kernels.linear_scan import reference
    args, kwargs = make_inputs(op, 1, 70, 2, 32, dtype, device, seed=1)
    try:
        with torch.no_grad():
            o = flashseq_call(op, backend)(*args, **kwargs)[0]
            ref_fn = {"gla": reference.gla_reference, "gated_delta": reference.delta_rule_reference,
                      "mlstm": reference.mlstm_reference}[op]
            o_ref = ref_fn(*(a.double() for a in args), scale=32 ** -0.5,
                           **{key: val.double() for key, val in kwargs.items()})[0]
    except NotImplementedError as err:
        return f"skipped: {err}"
    err = float((o.double() - o_ref).norm() / o_ref.norm())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    return None if err <= tol else f"failed: smoke check: relative error {err:.2e} > {tol}"


def _providers(op, device, dtype):
    if device.type == "cuda":
        out = [runner.Provider(f"flashseq:{op}", lambda d, op=op: d("auto"),
                               status=smoke_status(op, "auto", device, dtype))]
        reason = import_reason("fla")
        out.append(runner.Provider(f"fla:{op}", lambda d: d("fla"), peer=True,
                                   status=f"skipped: {reason}" if reason else None))
        if op == "mlstm":
            reason = import_reason("mlstm_kernels") or "mlstm_kernels call not wired yet"
            out.append(runner.Provider("mlstm_kernels", lambda d: d("none"), peer=True,
                                       status=f"skipped: {reason}"))
        return out
    return [runner.Provider(f"flashseq:{op}:torch", lambda d: d("torch"),
                            status=smoke_status(op, "torch", device, dtype)),
            runner.Provider(f"flashseq:{op}:reference", lambda d: d("reference"))]


def run(device, quick: bool, progress) -> list[dict]:
    """Rows for every (op, T, mode, provider); workloads in the module docstring."""
    device = torch.device(device)
    grid = (GPU_QUICK if quick else GPU) if device.type == "cuda" else (CPU_QUICK if quick else CPU)
    rows = []
    cases = list(itertools.product(OPS, grid["T"], MODES))
    providers = {op: _providers(op, device, grid["dtype"]) for op in OPS}
    bad = [p.status for ps in providers.values() for p in ps
           if p.status and p.status.startswith("failed")]
    if bad:  # never time a wrong kernel
        raise CorrectnessError("; ".join(bad))
    for op, T, mode in progress(cases):
        args, kwargs = make_inputs(op, grid["B"], T, grid["H"], grid["D"], grid["dtype"], device)

        def build(which, op=op, mode=mode, args=args, kwargs=kwargs):
            call = fla_call(op) if which == "fla" else flashseq_call(op, which)
            return _timed(call, mode, args, kwargs)

        case = f"{op} B={grid['B']} T={T} H={grid['H']} D={grid['D']} {mode}"
        baseline = f"fla:{op}" if device.type == "cuda" else f"flashseq:{op}:reference"
        case_rows = runner.time_case(case, build, providers[op], device=device,
                                     min_run_time=0.05 if quick else 0.5,
                                     extra={"op": op, "T": T, "mode": mode})
        rows += runner.add_ratios(case_rows, baseline)
    return rows
