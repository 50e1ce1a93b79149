"""Triton chunkwise delta rule (``chunk_delta_rule`` backend="triton", the WY kernels) vs the
float64 reference: forward, final state and every gradient (q, k, v, beta, g, initial state)
with NaN-poisoned outputs; chunk == recurrent kernels. On CPU under TRITON_INTERPRET=1 at
chunks of 16 and 64 over T = 67 (a partial last chunk), K and V not powers of two, the delta
rule plain and gated, beta in [0, 2] (and all 2), DeltaProduct with two Householder steps, three
packed sequences.
"""
import os

import pytest
import torch

import flashseq
from tests.conftest import HAS_CUDA
from tests.helpers import assert_close
from tests.kernels.linear_scan_cases import cast, check_delta_rule_beta2_long_finite, make_case
from tests.kernels.test_linear_scan_triton import DEVICE, check, force_chunk

pytestmark = pytest.mark.skipif(
    not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1")


@pytest.mark.parametrize("case, BT, T, K, V", [("gdelta", 16, 67, 12, 20),
                                               ("gdelta", 64, 67, 16, 16),
                                               ("delta", 16, 20, 40, 20), ("delta", 64, 67, 8, 24),
                                               ("gdelta", 16, 20, 136, 20)],
                         ids=["gated-BT16-T67", "gated-BT64-T67", "plain-BT16-3Kblocks",
                              "plain-BT64-T67", "gated-BT16-3state-tiles"])
def test_chunk_delta_rule_fp32(nan_poison_empty, monkeypatch, case, BT, T, K, V):
    """Chunk sizes 16 and 64 over T = 67, K split into blocks of 16 (V blocks of 16); K = 136
    puts the state passes' [K, BV] block in three tiles of 64 rows, the last one partial."""
    force_chunk(monkeypatch, BT, BK=16, BV=16)
    check(case, flashseq.ops.chunk_delta_rule, 1, T, 2, K, V, torch.float32)


def test_chunk_delta_rule_beta_two(nan_poison_empty, monkeypatch):
    """beta = 2 on every step (each transition a reflection, eigenvalue -1), gated."""
    force_chunk(monkeypatch, 16, BK=16, BV=16)

    def all_two(args):
        q, k, v, beta = args
        return q, k, v, torch.full_like(beta, 2.0)

    check("gdelta", flashseq.ops.chunk_delta_rule, 1, 40, 2, 16, 16, torch.float32,
          adjust=all_two)


def test_chunk_delta_product_fp32(nan_poison_empty, monkeypatch):
    """DeltaProduct, n_h = 2 (gated): T = 21 tokens are 42 Householder steps, 3 chunks of 16."""
    force_chunk(monkeypatch, 16, BK=16, BV=16)
    check("dprod2", flashseq.ops.chunk_delta_rule, 2, 21, 2, 12, 20, torch.float32)


def test_chunk_delta_rule_fp16_no_initial_state(nan_poison_empty, monkeypatch):
    force_chunk(monkeypatch, 16, BK=16, BV=16)
    check("gdelta", flashseq.ops.chunk_delta_rule, 2, 21, 1, 16, 16, torch.float16,
          with_state=False)


@pytest.mark.parametrize("case", ["gdelta", "dprod2"])
def test_chunk_delta_rule_cu_seqlens_equals_recurrent(nan_poison_empty, monkeypatch, case):
    """Three packed sequences vs the reference, and the chunk kernels == the step kernels."""
    force_chunk(monkeypatch, 16, BK=16, BV=16)
    cu = torch.tensor([0, 5, 30, 40], device=DEVICE)
    check(case, flashseq.ops.chunk_delta_rule, 1, 40, 2, 8, 8, torch.float32, N=3,
          cu_seqlens=cu)
    args, kwargs, _ = make_case(case, 1, 40, 2, 8, 8, N=3, seed=4, device=DEVICE)
    args, kwargs = cast(args, kwargs, torch.float32)
    o_c, s_c = flashseq.ops.chunk_delta_rule(*args, cu_seqlens=cu, output_final_state=True,
                                             backend="triton", **kwargs)
    o_r, s_r = flashseq.ops.fused_recurrent_delta_rule(*args, cu_seqlens=cu,
                                                       output_final_state=True,
                                                       backend="triton", **kwargs)
    assert_close("o chunk vs recurrent", o_c, o_r, 1e-5)
    assert_close("final chunk vs recurrent", s_c, s_r, 1e-5)


def test_chunk_delta_custom_ops_fake():
    """The chunk custom ops' fake implementations agree with the kernels (schema, fake
    tensors), with and without g and the states."""
    from flashseq.kernels.linear_scan import triton_ops_delta
    gen = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, 5, 1, 16, generator=gen).to(DEVICE) for _ in range(4))
    beta = torch.rand(1, 5, 1, generator=gen).to(DEVICE)
    g = -torch.rand(1, 5, 1, generator=gen).to(DEVICE)
    h0, dht = (torch.randn(1, 1, 16, 16, generator=gen).to(DEVICE) for _ in range(2))
    checks = ("test_schema", "test_faketensor")
    tiles = [16, 16, 16, 4]
    for gate, state, final in ((g, h0, dht), (None, None, None)):
        torch.library.opcheck(triton_ops_delta.delta_chunk_triton_fwd,
                              (q, k, v, beta, gate, state, None, 0.25, final is not None, tiles),
                              test_utils=checks)
        torch.library.opcheck(triton_ops_delta.delta_chunk_triton_bwd,
                              (q, k, v, beta, gate, state, do, final, None, 0.25, tiles),
                              test_utils=checks)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("case, T", [("gdelta", 67), ("gdelta", 2048), ("dprod2", 300)])
def test_chunk_delta_rule_gpu_plan_tiles(case, T, dtype):
    """The plan's own tiles at K = V = 128 on the GPU."""
    check(case, flashseq.ops.chunk_delta_rule, 2, T, 4, 128, 128, dtype)


@pytest.mark.slow
def test_chunk_delta_rule_beta2_long_finite(monkeypatch):
    """beta = 2 (every transition a reflection) over T = 4096 in chunks of 64: output, final
    state and every gradient finite, and the forward as close to the float64 reference as the
    float32 reference is, within 2x plus 1e-5. (Slow: the interpreter's 64-row WY solves.)"""
    force_chunk(monkeypatch, 64, BK=16, BV=16)
    check_delta_rule_beta2_long_finite(flashseq.ops.chunk_delta_rule, DEVICE)


@pytest.mark.slow
def test_chunk_delta_rule_compiles_in_one_graph():
    """torch.compile traces the Triton chunk delta rule (gated DeltaProduct) through its custom
    ops without graph breaks, forward and backward give the eager results. (Slow: torch.compile's
    start-up.)"""
    args, kwargs, _ = make_case("dprod2", 1, 20, 1, 16, 16, seed=2, device=DEVICE)
    args, kwargs = cast(args, kwargs, torch.float32)

    def run(*tensors):
        return flashseq.ops.chunk_delta_rule(*tensors, backend="triton", **kwargs)[0]

    compiled = torch.compile(run, fullgraph=True, backend="eager")
    assert_close("compiled", compiled(*args), run(*args), 1e-6)
