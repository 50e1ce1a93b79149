"""Chunkwise linear recurrences on the CPU: the PyTorch chunkwise path and the recurrent twins vs
the float64 step-by-step reference, forward and every gradient; varlen; DeltaProduct; long
sequences that only a stabilised computation survives."""
import functools

import pytest
import torch
import torch.nn.functional as F

import flashseq
from flashseq.kernels.linear_scan import chunk_torch, reference
from tests.helpers import TOLERANCE, assert_close
from tests.kernels.linear_scan_cases import (CASES, OP_OF_CASE, cast, compare, make_case,
                                             reference_fn, run_with_grads)

CHUNK_FNS = {"gla": chunk_torch.gla_chunk, "delta": chunk_torch.delta_rule_chunk,
             "mlstm": chunk_torch.mlstm_chunk}
PUBLIC = {"gla": (flashseq.ops.chunk_gla, flashseq.ops.fused_recurrent_gla),
          "delta": (flashseq.ops.chunk_delta_rule, flashseq.ops.fused_recurrent_delta_rule),
          "mlstm": (flashseq.ops.chunk_mlstm, flashseq.ops.fused_recurrent_mlstm)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("chunk", [16, 64], ids=lambda c: f"BT{c}")
@pytest.mark.parametrize("T", [1, 67], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("case", CASES)
def test_chunk_torch_matches_reference(case, T, chunk, dtype):
    """Forward, final state and the gradients of q, k, v, the gates/beta and initial_state."""
    B, H, K, V = 2, 2, 12, 7
    args, kwargs, names = make_case(case, B, T, H, K, V, seed=T + chunk)
    scale = K ** -0.5
    upstream = {}
    ref = run_with_grads(functools.partial(reference_fn(case), scale=scale), args, kwargs, upstream)
    low_args, low_kwargs = cast(args, kwargs, dtype)
    fn = functools.partial(CHUNK_FNS[OP_OF_CASE[case]], scale=scale, chunk_size=chunk)
    got = run_with_grads(fn, low_args, low_kwargs, upstream)
    tol = 1e-12 if dtype == torch.float64 else TOLERANCE[dtype]
    compare(case, names, got, ref, tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", CASES)
def test_public_ops_half_inputs(case, dtype):
    """fp16/bf16 q, k, v with float32 states, against the reference of the same rounded inputs."""
    args, kwargs, names = make_case(case, 1, 37, 2, 16, 16, seed=5)
    low_args, low_kwargs = cast(args, kwargs, dtype)
    ref_args, ref_kwargs = cast(low_args, low_kwargs, torch.float64)
    upstream = {}
    ref = run_with_grads(functools.partial(reference_fn(case), scale=0.25), ref_args, ref_kwargs,
                         upstream)
    chunk, _ = PUBLIC[OP_OF_CASE[case]]
    got = run_with_grads(chunk, low_args, low_kwargs, upstream)
    assert got[0].dtype == dtype and got[1][0].dtype == torch.float32
    compare(case, names, got, ref, TOLERANCE[dtype])


@pytest.mark.parametrize("case", CASES)
def test_chunk_equals_fused_recurrent(case):
    """The public chunkwise op and its recurrent twin agree (default scale, fp32)."""
    args, kwargs, names = make_case(case, 2, 45, 3, 8, 9, seed=11)
    args, kwargs = cast(args, kwargs, torch.float32)
    chunk, recurrent = PUBLIC[OP_OF_CASE[case]]
    upstream = {}
    want = run_with_grads(recurrent, args, kwargs, upstream)
    got = run_with_grads(chunk, args, kwargs, upstream)
    compare(case, names, got, want, TOLERANCE[torch.float32])


@pytest.mark.parametrize("recurrent", [False, True], ids=["chunk", "recurrent"])
@pytest.mark.parametrize("case", CASES)
def test_cu_seqlens_equals_separate_runs(case, recurrent):
    """Three packed sequences (lengths 5, 40, 22) == three separate B=1 calls, each from its own
    initial state: outputs and final states."""
    lengths = (5, 40, 22)
    args, kwargs, _ = make_case(case, 1, sum(lengths), 2, 8, 8, N=3, seed=3)
    args, kwargs = cast(args, kwargs, torch.float32)
    cu = torch.tensor([0, 5, 45, 67], dtype=torch.int32)
    fn = PUBLIC[OP_OF_CASE[case]][int(recurrent)]
    o, final = fn(*args, cu_seqlens=cu, output_final_state=True, **kwargs)
    state = kwargs.pop("initial_state")
    for n, (lo, hi) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        part = tuple(a[:, lo:hi] for a in args)
        kw = {key: (val[:, lo:hi] if isinstance(val, torch.Tensor) else val) for key, val in kwargs.items()}
        s_n = tuple(s[n:n + 1] for s in state) if isinstance(state, tuple) else state[n:n + 1]
        o_n, f_n = fn(*part, initial_state=s_n, output_final_state=True, **kw)
        assert_close(f"{case} seq {n} o", o[:, lo:hi], o_n, 1e-6)
        for j, (a, b) in enumerate(zip(final if isinstance(final, tuple) else [final],
                                       f_n if isinstance(f_n, tuple) else [f_n])):
            assert_close(f"{case} seq {n} final[{j}]", a[n:n + 1], b, 1e-6)


def test_deltaproduct_one_active_step_is_delta_rule():
    """DeltaProduct with its second Householder step switched off (beta = 0) is the gated delta
    rule of the first step's k, v, beta; n_h = 1 is the delta rule's own shapes."""
    args, kwargs, _ = make_case("dprod2", 2, 30, 2, 8, 8, seed=8)
    q, k, v, beta = args
    beta = torch.stack([beta[:, :, 0], torch.zeros_like(beta[:, :, 0])], 2)
    for chunk_fn in (flashseq.ops.chunk_delta_rule, flashseq.ops.fused_recurrent_delta_rule):
        o2, s2 = chunk_fn(q, k, v, beta, output_final_state=True, **kwargs)
        kw1 = dict(kwargs, num_householder=1)
        o1, s1 = chunk_fn(q, k[:, :, 0], v[:, :, 0], beta[:, :, 0], output_final_state=True, **kw1)
        assert_close("o", o2, o1, 1e-12)
        assert_close("final", s2, s1, 1e-12)
        o_ref, s_ref = reference.delta_rule_reference(q, k[:, :, 0], v[:, :, 0], beta[:, :, 0],
                                                      scale=8 ** -0.5, output_final_state=True,
                                                      g=kwargs["g"],
                                                      initial_state=kwargs["initial_state"])
        assert_close("o vs reference", o1, o_ref, 1e-12)


def test_delta_rule_beta_two_long_sequence_stays_finite():
    """beta = 2 (every transition a reflection, eigenvalue -1) over T = 4096 in fp32: finite and
    equal to the step loop."""
    gen = torch.Generator().manual_seed(0)
    B, T, H, K, V = 1, 4096, 2, 16, 16
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    beta = torch.full((B, T, H), 2.0)
    o, S = flashseq.ops.chunk_delta_rule(q, k, v, beta, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    o_ref, S_ref = flashseq.ops.fused_recurrent_delta_rule(q, k, v, beta, output_final_state=True)
    assert_close("o", o, o_ref, 1e-4)
    assert_close("final", S, S_ref, 1e-4)


def test_mlstm_long_sequence_large_input_gates_stays_finite():
    """T = 65,536 with input-gate pre-activations up to ~150 (exp overflows float32 past 88):
    the stabilised chunkwise mLSTM stays finite, forward and backward, and its last steps agree
    with the step loop restarted from the state the chunkwise run had reached. (Chunks of 256
    keep the Python loop over chunks short.)"""
    gen = torch.Generator().manual_seed(0)
    B, T, H, K, V = 1, 65536, 1, 16, 16
    q, k = (torch.randn(B, T, H, K, generator=gen) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen)
    i = 60.0 + 30.0 * torch.randn(B, T, H, generator=gen)
    f = 2.0 + torch.randn(B, T, H, generator=gen)
    assert not torch.isfinite(i.exp()).all()          # an unstabilised exp(i) overflows
    q.requires_grad_()
    i.requires_grad_()
    head = T - 64
    o, (C, n, m) = chunk_torch.mlstm_chunk(q, k, v, i, f, scale=K ** -0.5, output_final_state=True,
                                           chunk_size=256)
    assert torch.isfinite(o).all() and torch.isfinite(C).all() and torch.isfinite(m).all()
    (o.sum() + C.sum()).backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(i.grad).all()
    with torch.no_grad():
        _, mid = chunk_torch.mlstm_chunk(q[:, :head], k[:, :head], v[:, :head], i[:, :head],
                                         f[:, :head], scale=K ** -0.5, output_final_state=True,
                                         chunk_size=256)
        o_tail, _ = reference.mlstm_reference(
            q[:, head:], k[:, head:], v[:, head:], i[:, head:], f[:, head:], scale=K ** -0.5,
            initial_state=mid)
    assert_close("o tail", o[:, head:], o_tail, 1e-5)
