"""Triton kernels of the linear recurrences vs the float64 reference: forward, final state and
every gradient, with NaN-poisoned outputs.

On CPU the kernels run under TRITON_INTERPRET=1 on tiny shapes (fp32 and fp16; the
interpreter's bf16 is not trusted, so bf16 runs only with ``-m gpu``). Compile-to-cubin checks
live in test_linear_scan_triton_compile.py.
"""
import functools
import os

import pytest
import torch

import flashseq
from tests.conftest import HAS_CUDA
from tests.helpers import TOLERANCE, assert_close
from tests.kernels.linear_scan_cases import cast, compare, make_case, reference_fn, run_with_grads

pytestmark = pytest.mark.skipif(
    not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1")

DEVICE = "cuda" if HAS_CUDA else "cpu"


def check(case, fn, B, T, H, K, V, dtype, *, N=None, cu_seqlens=None, with_state=True, seed=0,
          adjust=None):
    """``fn`` with backend="triton" vs the float64 reference on fresh inputs of ``case``
    (``adjust(args) -> args`` may reshape their distribution first)."""
    args, kwargs, names = make_case(case, B, T, H, K, V, N=N, seed=seed, with_state=with_state,
                                    device=DEVICE)
    if adjust is not None:
        args = adjust(args)
    low_args, low_kwargs = cast(args, kwargs, dtype)
    ref_args, ref_kwargs = cast(low_args, low_kwargs, torch.float64)
    if cu_seqlens is not None:
        low_kwargs["cu_seqlens"] = ref_kwargs["cu_seqlens"] = cu_seqlens
    upstream = {}
    ref = run_with_grads(functools.partial(reference_fn(case), scale=0.4), ref_args, ref_kwargs,
                         upstream)
    got = run_with_grads(functools.partial(fn, scale=0.4, backend="triton"), low_args, low_kwargs,
                         upstream)
    assert got[0].dtype == dtype
    compare(case, names, got, ref, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("with_state", [True, False], ids=["h0", "noh0"])
def test_fused_recurrent_gla(nan_poison_empty, with_state, dtype):
    """T = 67 (K, V = 12, 20), or several V blocks (V = 40 > BV = 16 at K = 200), T = 9."""
    T, K, V = (67, 12, 20) if with_state and dtype == torch.float32 else (9, 200, 40)
    check("gla", flashseq.ops.fused_recurrent_gla, 2, T, 2, K, V, dtype, with_state=with_state)


def test_fused_recurrent_gla_cu_seqlens(nan_poison_empty):
    """Three packed sequences, each from its own initial state."""
    cu = torch.tensor([0, 3, 11, 16], device=DEVICE)
    check("gla", flashseq.ops.fused_recurrent_gla, 1, 16, 2, 8, 8, torch.float32, N=3,
          cu_seqlens=cu)


def force_chunk(monkeypatch, BT, BK=None, BV=None):
    """Run the chunk kernels with chunk BT (and BK/BV if given) instead of the plan's."""
    from flashseq.kernels.linear_scan import triton_ops
    planned = triton_ops.chunk_tiles

    def forced(op, q, v, chunk_size=None):
        _, bk, bv, warps = planned(op, q, v)
        return (BT, BK or bk, BV or bv, warps)

    monkeypatch.setattr(triton_ops, "chunk_tiles", forced)


@pytest.mark.parametrize("BT, T, K, V, BK", [(16, 67, 12, 20, 16), (64, 67, 16, 16, 16),
                                              (16, 20, 40, 20, 16)],
                         ids=["BT16-T67", "BT64-T67", "BT16-3Kblocks"])
def test_chunk_gla_fp32(nan_poison_empty, monkeypatch, BT, T, K, V, BK):
    """Chunk sizes 16 and 64 over T = 67 (a partial last chunk), K split into blocks."""
    force_chunk(monkeypatch, BT, BK=BK, BV=16)
    check("gla", flashseq.ops.chunk_gla, 1, T, 1, K, V, torch.float32)


def test_chunk_gla_fp16_no_initial_state(nan_poison_empty, monkeypatch):
    force_chunk(monkeypatch, 16, BK=16, BV=16)
    check("gla", flashseq.ops.chunk_gla, 2, 21, 1, 16, 16, torch.float16, with_state=False)


def test_chunk_gla_cu_seqlens_equals_recurrent(nan_poison_empty, monkeypatch):
    """Three packed sequences vs the reference, and the chunk kernels == the recurrent kernels."""
    force_chunk(monkeypatch, 16, BK=16, BV=16)
    cu = torch.tensor([0, 5, 30, 40], device=DEVICE)
    check("gla", flashseq.ops.chunk_gla, 1, 40, 2, 8, 8, torch.float32, N=3, cu_seqlens=cu)
    args, kwargs, _ = make_case("gla", 1, 40, 2, 8, 8, N=3, seed=4, device=DEVICE)
    args, kwargs = cast(args, kwargs, torch.float32)
    o_c, s_c = flashseq.ops.chunk_gla(*args, cu_seqlens=cu, output_final_state=True,
                                      backend="triton", **kwargs)
    o_r, s_r = flashseq.ops.fused_recurrent_gla(*args, cu_seqlens=cu, output_final_state=True,
                                                backend="triton", **kwargs)
    assert_close("o chunk vs recurrent", o_c, o_r, 1e-5)
    assert_close("final chunk vs recurrent", s_c, s_r, 1e-5)


@pytest.mark.slow
def test_custom_ops_fake_and_compile():
    """The custom ops' fake implementations agree with the kernels (schema, fake tensors), and
    torch.compile traces the Triton GLA in one graph. (Slow: about 20 s on a busy 2-core
    machine, most of it torch.compile's own start-up.)"""
    from flashseq.kernels.linear_scan import triton_ops
    gen = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, 5, 1, 16, generator=gen).to(DEVICE) for _ in range(4))
    g = -torch.rand(1, 5, 1, 16, generator=gen).to(DEVICE)
    h0, dht = (torch.randn(1, 1, 16, 16, generator=gen).to(DEVICE) for _ in range(2))
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(triton_ops.gla_triton_fwd, (q, k, v, g, h0, None, 0.25, True, False, []),
                          test_utils=checks)
    torch.library.opcheck(triton_ops.gla_triton_bwd,
                          (q, k, v, g, h0, do, dht, None, 0.25, False, []), test_utils=checks)

    def run(q, k, v, g):
        return flashseq.ops.fused_recurrent_gla(q, k, v, g, backend="triton")[0]

    compiled = torch.compile(run, fullgraph=True, backend="eager")
    assert_close("compiled", compiled(q, k, v, g), run(q, k, v, g), 1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("T", [64, 1000])
def test_fused_recurrent_gla_gpu_bf16(T):
    check("gla", flashseq.ops.fused_recurrent_gla, 2, T, 4, 128, 128, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("T", [67, 2048])
def test_chunk_gla_gpu_plan_tiles(T, dtype):
    """The plan's own tiles at K = V = 128 on the GPU."""
    check("gla", flashseq.ops.chunk_gla, 2, T, 4, 128, 128, dtype)
