"""Suite "plstm": the tiled 2D pLSTM (``flashseq.ops.plstm_2d``) against the dense einsum form.

Providers: "flashseq:plstm_2d" (the tiled PyTorch form, ``backend="torch"``), on CUDA also
"flashseq:plstm_2d-triton" (``backend="triton"``: the Triton forward and backward kernels), and
"dense-einsum"; ratios are against the dense form.

The dense form is the reference einsum algorithm: one tile covering the whole grid, i.e. the
full [N, N] propagation matrix (N = X * Y) per batch row and head, applied as
``((q k^T) * G) v``; it is skipped where that matrix alone would pass ``DENSE_LIMIT_BYTES``.
CUDA: B=16, H=4, DH=64, X = Y in {32, 64, 128}, bfloat16 inputs (fp32 accumulation inside),
forward and forward+backward. CPU: B=2, H=2, DH=16, X = Y in {8, 16}, float32.
Every provider passes a check against ``plstm_dag`` (float64) on a small grid before timing:
the output and, as fwd+bwd is timed, every input's gradient.
"""
from __future__ import annotations

import itertools

import torch

from bench import runner
from bench.suites import CorrectnessError

DESCRIPTION = ("pLSTM 2D grid: flashseq.ops.plstm_2d (planned tiles; PyTorch form, and on CUDA "
               "the Triton kernels) vs the dense einsum form (full N x N propagation matrix); "
               "CUDA B=16 H=4 DH=64 bf16, X=Y 32..128.")
TRITON = "flashseq:plstm_2d-triton"

MODES = ("fwd", "fwd+bwd")
GPU = dict(B=16, H=4, D=64, sizes=(32, 64, 128), dtype=torch.bfloat16)
GPU_QUICK = dict(B=2, H=2, D=32, sizes=(16,), dtype=torch.bfloat16)
CPU = dict(B=2, H=2, D=16, sizes=(8, 16), dtype=torch.float32)
CPU_QUICK = dict(B=1, H=1, D=8, sizes=(8,), dtype=torch.float32)
DENSE_LIMIT_BYTES = 24 << 30


def make_inputs(B, X, H, D, dtype, device, seed=0):
    """(q, k, v, source, transition, mark, direct) on an X x X grid, P-mode transitions."""
    from flashseq.kernels.plstm import p_mode_2d
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen)

    q, k, v = (rnd(B, X, X, H, D).to(device, dtype) for _ in range(3))
    orient, decay = torch.sigmoid(rnd(B, X, X, H)), torch.sigmoid(rnd(B, X, X, H) + 3)
    transition = p_mode_2d(orient, decay).contiguous()
    source = torch.stack([orient, 1 - orient], dim=-1)
    mark = torch.sigmoid(rnd(B, X, X, H, 2))
    direct = rnd(B, X, X, H)
    gates = [t.to(device) for t in (source, transition, mark, direct)]
    return [t.requires_grad_() for t in (q, k, v, *gates)]


def provider_fn(name, X):
    from flashseq.ops import plstm_2d
    if name == "dense-einsum":
        return lambda *a: plstm_2d(*a, tile=(X, X), backend="torch")
    if name == TRITON:
        return lambda *a: plstm_2d(*a, backend="triton")
    return lambda *a: plstm_2d(*a, backend="torch")


def _timed(call, mode, args):
    def fwd():
        with torch.no_grad():
            return call(*args)

    def fwd_bwd():
        o = call(*args)
        o.backward(torch.ones_like(o))
        for t in args:
            t.grad = None

    return fwd if mode == "fwd" else fwd_bwd


def smoke_status(name, device, dtype) -> str | None:
    """None if the provider matches ``plstm_dag`` in float64 on a 6 x 6 grid, output and
    gradients."""
    from flashseq.kernels.plstm import grid_dag, grid_gates_to_dag, plstm_dag
    X, B, H, D = 6, 1, 2, 16
    args = [a.detach().requires_grad_() for a in make_inputs(B, X, H, D, dtype, device, seed=1)]
    ref_args = [a.detach().double().requires_grad_() for a in args]
    o = provider_fn(name, X)(*args)
    q, k, v, s, t, m, d = ref_args
    edges, pairs, kind = grid_dag(X, X)
    gs, gt, gm = grid_gates_to_dag(s, t, m, edges, pairs, kind, X)
    flat = [a.reshape(B, X * X, *a.shape[3:]) for a in (q, k, v, d)]
    ref = plstm_dag(*flat[:3], gs, gt, gm, flat[3], edges=edges, transition_edges=pairs)
    ref = ref.reshape(o.shape)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads = torch.autograd.grad(o, args, do.to(o.device, o.dtype))
    ref_grads = torch.autograd.grad(ref, ref_args, do.to(ref.device))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    names = ("o", "dq", "dk", "dv", "dsource", "dtransition", "dmark", "ddirect")
    for what, out, want in zip(names, (o, *grads), (ref, *ref_grads)):
        err = float((out.detach().double() - want.detach()).norm() / want.detach().norm())
        if not err <= tol:
            return f"failed: smoke check vs plstm_dag: {what} relative error {err:.2e} > {tol}"
    return None


def run(device, quick: bool, progress) -> list[dict]:
    """Rows for every (size, mode, provider); workloads in the module docstring."""
    device = torch.device(device)
    grid = (GPU_QUICK if quick else GPU) if device.type == "cuda" else (CPU_QUICK if quick else CPU)
    names = ("flashseq:plstm_2d", "dense-einsum") + ((TRITON,) if device.type == "cuda" else ())
    status = {n: smoke_status(n, device, grid["dtype"]) for n in names}
    bad = [s for s in status.values() if s and s.startswith("failed")]
    if bad:  # never time a wrong kernel
        raise CorrectnessError("; ".join(bad))
    rows = []
    for X, mode in progress(list(itertools.product(grid["sizes"], MODES))):
        B, H, D = grid["B"], grid["H"], grid["D"]
        args = make_inputs(B, X, H, D, grid["dtype"], device)
        dense_bytes = 4 * B * H * (X * X) * (X * X + 2 * X)
        providers = []
        for n in names:
            st = status[n]
            if n == "dense-einsum" and dense_bytes > DENSE_LIMIT_BYTES:
                st = f"skipped: the dense N x N matrix needs {dense_bytes / 2**30:.0f} GiB"
            providers.append(runner.Provider(n, lambda a, n=n, X=X, mode=mode:
                                             _timed(provider_fn(n, X), mode, a), status=st))
        case = f"plstm_2d B={B} X=Y={X} H={H} DH={D} {mode}"
        case_rows = runner.time_case(case, args, providers, device=device,
                                     min_run_time=0.05 if quick else 0.5,
                                     extra={"X": X, "mode": mode})
        rows += runner.add_ratios(case_rows, "dense-einsum")
    return rows
