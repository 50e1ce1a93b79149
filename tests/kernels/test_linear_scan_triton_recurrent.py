"""Triton step kernels of the mLSTM and the (gated) delta rule / DeltaProduct vs the float64
reference: forward, final state and every gradient, with NaN-poisoned outputs (as
test_linear_scan_triton.py does for GLA). On CPU under TRITON_INTERPRET=1, fp32 and fp16, tiny
shapes.

The mLSTM's output divides by max(|q . n|, exp(-m)); where random inputs bring |q . n| close to 0
above a small floor, float32 itself loses digits (the float32 reference misses the float64 one by
up to 4e-5 at some seeds of the shared cases). ``mlstm_inputs`` lowers the input gates by 2,
which raises the floor: there the float32 reference stays within 4e-6 over seeds 0-4, so the
1e-5 bound measures the kernels, and both branches of the max still occur.
"""
import os

import pytest
import torch

import flashseq
from tests.conftest import HAS_CUDA
from tests.helpers import assert_close, rel_err
from tests.kernels.linear_scan_cases import cast, check_delta_rule_beta2_long_finite, make_case
from tests.kernels.test_linear_scan_triton import DEVICE, check

pytestmark = pytest.mark.skipif(
    not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1")


def mlstm_inputs(args):
    q, k, v, i, f = args
    return q, k, v, i - 2.0, f


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("with_state", [True, False], ids=["h0", "noh0"])
def test_fused_recurrent_mlstm(nan_poison_empty, with_state, dtype):
    """T = 67 (K, V = 12, 20), or several V blocks (V = 40 > BV = 16 at K = 200), T = 9."""
    T, K, V = (67, 12, 20) if with_state and dtype == torch.float32 else (9, 200, 40)
    check("mlstm", flashseq.ops.fused_recurrent_mlstm, 2, T, 2, K, V, dtype,
          with_state=with_state, adjust=mlstm_inputs)


def test_fused_recurrent_mlstm_cu_seqlens(nan_poison_empty):
    """Three packed sequences, each from its own (C, n, m)."""
    cu = torch.tensor([0, 3, 11, 16], device=DEVICE)
    check("mlstm", flashseq.ops.fused_recurrent_mlstm, 1, 16, 2, 8, 8, torch.float32, N=3,
          cu_seqlens=cu, adjust=mlstm_inputs)


def test_fused_recurrent_mlstm_large_input_gates_finite():
    """Input gates of +-100 (exp(100) overflows float32 without the stabiliser): the kernels stay
    finite, forward and the gates' gradients. With m near 100, float32 holds m (and so every
    exp(-m) and decay) to about 8e-6 absolute, so the float32 step recurrence itself misses the
    float64 one by ~9e-5 here (the reference run in float32 shows it): the kernels must be as
    close as that reference, within 2x plus 1e-5."""
    args, kwargs, _ = make_case("mlstm", 1, 40, 1, 8, 8, seed=7, device=DEVICE)
    q, k, v, i, f = args
    args, kwargs = cast((q, k, v, i.sign() * 100.0 + i, f), kwargs, torch.float32)
    ref_args, ref_kwargs = cast(args, kwargs, torch.float64)
    results = []
    for a, kw, backend in ((args, kwargs, "triton"), (args, kwargs, "reference"),
                           (ref_args, ref_kwargs, "reference")):
        leaves = [t.detach().clone().requires_grad_() for t in a]
        o, (C, n, m) = flashseq.ops.fused_recurrent_mlstm(*leaves, output_final_state=True,
                                                          backend=backend, **kw)
        (o.double().sum() + C.double().sum()).backward()
        results.append((o, C, m, leaves[3].grad, leaves[4].grad))
    got, ref32, ref64 = results
    for name, x, x32, x64 in zip(("o", "C", "m", "di", "df"), got, ref32, ref64):
        assert torch.isfinite(x).all(), name
        assert_close(name, x, x64, 2 * rel_err(x32, x64) + 1e-5)


def test_mlstm_custom_ops_fake():
    """The mLSTM custom ops' schemas and fake implementations agree with the kernels."""
    from flashseq.kernels.linear_scan import triton_ops_mlstm as ops
    gen = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, 5, 1, 16, generator=gen).to(DEVICE) for _ in range(4))
    i, f, rden, dqn = (torch.randn(1, 5, 1, generator=gen).to(DEVICE) for _ in range(4))
    C0, dCT = (torch.randn(1, 1, 16, 16, generator=gen).to(DEVICE) for _ in range(2))
    n0, dnT = (torch.randn(1, 1, 16, generator=gen).to(DEVICE) for _ in range(2))
    m0 = torch.randn(1, 1, generator=gen).to(DEVICE)
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.mlstm_triton_fwd,
                          (q, k, v, i, f, C0, n0, m0, None, 0.25, True, False, []),
                          test_utils=checks)
    ms = ops.mlstm_triton_fwd(q, k, v, i, f, C0, n0, m0, None, 0.25, False, False, [])[1]
    torch.library.opcheck(ops.mlstm_triton_bwd, (q, k, v, i, f, C0, n0, m0, ms, rden, dqn, do,
                                                 dCT, dnT, None, 0.25, False, []),
                          test_utils=checks)


@pytest.mark.gpu
@pytest.mark.parametrize("T", [64, 1000])
def test_fused_recurrent_mlstm_gpu_bf16(T):
    check("mlstm", flashseq.ops.fused_recurrent_mlstm, 2, T, 4, 128, 128, torch.bfloat16,
          adjust=mlstm_inputs)


@pytest.mark.parametrize("case", ["delta", "gdelta", "dprod2"])
def test_fused_recurrent_delta_rule_fp32(nan_poison_empty, case):
    """T = 67 from an initial state: plain, gated, and gated DeltaProduct with n_h = 2."""
    check(case, flashseq.ops.fused_recurrent_delta_rule, 2, 67, 2, 12, 20, torch.float32)


@pytest.mark.parametrize("case", ["gdelta", "dprod2"])
def test_fused_recurrent_delta_rule_fp16_v_blocks(nan_poison_empty, case):
    """fp16 inputs, no initial state, several V blocks (V = 40 > BV = 16 at K = 200)."""
    check(case, flashseq.ops.fused_recurrent_delta_rule, 2, 9, 2, 200, 40, torch.float16,
          with_state=False)


def test_fused_recurrent_delta_rule_cu_seqlens(nan_poison_empty):
    """Three packed sequences of the gated DeltaProduct (n_h = 2), each from its own state."""
    cu = torch.tensor([0, 3, 11, 16], device=DEVICE)
    check("dprod2", flashseq.ops.fused_recurrent_delta_rule, 1, 16, 2, 8, 8, torch.float32, N=3,
          cu_seqlens=cu)


def test_delta_custom_ops_fake():
    """The delta rule custom ops' schemas and fake implementations agree with the kernels."""
    from flashseq.kernels.linear_scan import triton_ops_delta as ops
    gen = torch.Generator().manual_seed(0)
    q, do = (torch.randn(1, 5, 1, 16, generator=gen).to(DEVICE) for _ in range(2))
    k, v = (torch.randn(1, 5, 2, 1, 16, generator=gen).to(DEVICE) for _ in range(2))
    beta = torch.rand(1, 5, 2, 1, generator=gen).to(DEVICE)
    g = -torch.rand(1, 5, 1, generator=gen).to(DEVICE)
    h0, dht = (torch.randn(1, 1, 16, 16, generator=gen).to(DEVICE) for _ in range(2))
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.delta_triton_fwd, (q, k, v, beta, g, h0, None, 0.25, True, 2),
                          test_utils=checks)
    u = ops.delta_triton_fwd(q, k, v, beta, g, h0, None, 0.25, False, 2)[1]
    torch.library.opcheck(ops.delta_triton_bwd, (q, k, v, beta, g, h0, u, do, dht, None, 0.25, 2),
                          test_utils=checks)


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["gdelta", "dprod2"])
@pytest.mark.parametrize("T", [64, 1000])
def test_fused_recurrent_delta_rule_gpu_bf16(T, case):
    check(case, flashseq.ops.fused_recurrent_delta_rule, 2, T, 4, 128, 128, torch.bfloat16)


@pytest.mark.slow
def test_fused_recurrent_delta_rule_beta2_long_finite():
    """beta = 2 (every transition a reflection) over T = 4096: output, final state and every
    gradient finite, and the forward as close to the float64 reference as the float32 reference
    is, within 2x plus 1e-5. (Slow: about 40 s in the interpreter.)"""
    check_delta_rule_beta2_long_finite(flashseq.ops.fused_recurrent_delta_rule, DEVICE)


@pytest.mark.slow
def test_mlstm_and_delta_compile_in_one_graph():
    """torch.compile traces the Triton mLSTM (chunk and step kernels) and the Triton delta rule
    through their custom ops without graph breaks, and the compiled calls give the eager
    results. (Slow: torch.compile's start-up.)"""
    args, kwargs, _ = make_case("mlstm", 1, 20, 1, 16, 16, seed=2, device=DEVICE)
    m_args, m_kwargs = cast(mlstm_inputs(args), kwargs, torch.float32)
    args, kwargs, _ = make_case("dprod2", 1, 20, 1, 16, 16, seed=2, device=DEVICE)
    d_args, d_kwargs = cast(args, kwargs, torch.float32)
    calls = [(flashseq.ops.fused_recurrent_mlstm, m_args, m_kwargs),
             (flashseq.ops.chunk_mlstm, m_args, m_kwargs),
             (flashseq.ops.fused_recurrent_delta_rule, d_args, d_kwargs)]
    for fn, a, kw in calls:
        def run(*tensors, fn=fn, kw=kw):
            return fn(*tensors, backend="triton", **kw)[0]
        compiled = torch.compile(run, fullgraph=True, backend="eager")
        assert_close(fn.__name__, compiled(*a), run(*a), 1e-6)


def test_auto_takes_the_new_kernels_on_cuda(monkeypatch):
    """backend="auto" on a CUDA problem picks Triton for chunk_mlstm, the chunkwise delta rule
    (DeltaProduct included) and every recurrent twin, without a warning."""
    import dataclasses
    import warnings

    from flashseq.kernels.linear_scan import backends
    from flashseq.kernels.linear_scan.problem import validate_mlstm
    args, _, _ = make_case("mlstm", 1, 4, 1, 8, 8)
    problem = dataclasses.replace(validate_mlstm(*cast(args, {}, torch.float32)[0], None, None,
                                                 None), device=torch.device("cuda"))
    delta = dataclasses.replace(problem, op="delta")
    monkeypatch.setattr(backends, "_warned", set())      # warnings given earlier in the run
    assert backends.choose("auto", problem, False, "chunk_mlstm") == "triton"
    for p in (problem, delta, dataclasses.replace(delta, num_householder=2)):
        assert backends.choose("auto", p, True, "fused_recurrent") == "triton"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for p in (delta, dataclasses.replace(delta, num_householder=2)):
            assert backends.choose("auto", p, False, "chunk_delta_rule") == "triton"
    assert not caught, [str(w.message) for w in caught]
