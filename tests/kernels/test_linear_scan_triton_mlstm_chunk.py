"""Triton chunkwise mLSTM (``chunk_mlstm`` backend="triton") vs the float64 reference: forward,
final (C, n, m) and every gradient, with NaN-poisoned outputs; chunk == recurrent kernels. On
CPU under TRITON_INTERPRET=1 at chunks of 16 and 64 over T = 67 (a partial last chunk).

Inputs as in test_linear_scan_triton_recurrent.py (``mlstm_inputs``: input gates lowered by 2,
where float32 itself is well conditioned).
"""
import os

import pytest
import torch

import flashseq
from tests.conftest import HAS_CUDA
from tests.helpers import assert_close, rel_err
from tests.kernels.linear_scan_cases import cast, make_case
from tests.kernels.test_linear_scan_triton import DEVICE, check, force_chunk
from tests.kernels.test_linear_scan_triton_recurrent import mlstm_inputs

pytestmark = pytest.mark.skipif(
    not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1")


@pytest.mark.parametrize("BT, T, K, V", [(16, 67, 12, 20), (64, 67, 16, 16), (16, 20, 40, 20)],
                         ids=["BT16-T67", "BT64-T67", "BT16-3Kblocks"])
def test_chunk_mlstm_fp32(nan_poison_empty, monkeypatch, BT, T, K, V):
    """Chunk sizes 16 and 64 over T = 67, K split into blocks of 16 (V blocks of 16)."""
    force_chunk(monkeypatch, BT, BK=16, BV=16)
    check("mlstm", flashseq.ops.chunk_mlstm, 2, T, 2, K, V, torch.float32, adjust=mlstm_inputs)


def test_chunk_mlstm_fp16_no_initial_state(nan_poison_empty, monkeypatch):
    force_chunk(monkeypatch, 16, BK=16, BV=16)
    check("mlstm", flashseq.ops.chunk_mlstm, 2, 21, 1, 16, 16, torch.float16, with_state=False,
          adjust=mlstm_inputs)


def test_chunk_mlstm_cu_seqlens_equals_recurrent(nan_poison_empty, monkeypatch):
    """Three packed sequences vs the reference, and the chunk kernels == the step kernels."""
    force_chunk(monkeypatch, 16, BK=16, BV=16)
    cu = torch.tensor([0, 5, 30, 40], device=DEVICE)
    check("mlstm", flashseq.ops.chunk_mlstm, 1, 40, 2, 8, 8, torch.float32, N=3, cu_seqlens=cu,
          adjust=mlstm_inputs)
    args, kwargs, _ = make_case("mlstm", 1, 40, 2, 8, 8, N=3, seed=4, device=DEVICE)
    args, kwargs = cast(mlstm_inputs(args), kwargs, torch.float32)
    o_c, s_c = flashseq.ops.chunk_mlstm(*args, cu_seqlens=cu, output_final_state=True,
                                        backend="triton", **kwargs)
    o_r, s_r = flashseq.ops.fused_recurrent_mlstm(*args, cu_seqlens=cu, output_final_state=True,
                                                  backend="triton", **kwargs)
    assert_close("o chunk vs recurrent", o_c, o_r, 1e-5)
    for name, a, b in zip("Cnm", s_c, s_r):
        assert_close(f"final {name} chunk vs recurrent", a, b, 1e-5)


def test_chunk_mlstm_large_input_gates_finite(monkeypatch):
    """Input gates of +-100 over 3 chunks: finite, and as close to the float64 reference as the
    float32 step reference is (see test_linear_scan_triton_recurrent.py), within 2x plus 1e-5."""
    force_chunk(monkeypatch, 16, BK=16, BV=16)
    args, kwargs, _ = make_case("mlstm", 1, 40, 1, 8, 8, seed=7, device=DEVICE)
    q, k, v, i, f = args
    args, kwargs = cast((q, k, v, i.sign() * 100.0 + i, f), kwargs, torch.float32)
    ref_args, ref_kwargs = cast(args, kwargs, torch.float64)
    results = []
    for fn, a, kw, backend in ((flashseq.ops.chunk_mlstm, args, kwargs, "triton"),
                               (flashseq.ops.fused_recurrent_mlstm, args, kwargs, "reference"),
                               (flashseq.ops.fused_recurrent_mlstm, ref_args, ref_kwargs,
                                "reference")):
        leaves = [t.detach().clone().requires_grad_() for t in a]
        o, (C, n, m) = fn(*leaves, output_final_state=True, backend=backend, **kw)
        (o.double().sum() + C.double().sum()).backward()
        results.append((o, C, m, leaves[3].grad, leaves[4].grad))
    got, ref32, ref64 = results
    for name, x, x32, x64 in zip(("o", "C", "m", "di", "df"), got, ref32, ref64):
        assert torch.isfinite(x).all(), name
        assert_close(name, x, x64, 2 * rel_err(x32, x64) + 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("T", [67, 2048])
def test_chunk_mlstm_gpu_plan_tiles(T, dtype):
    """The plan's own tiles at K = V = 128 on the GPU."""
    check("mlstm", flashseq.ops.chunk_mlstm, 2, T, 4, 128, 128, dtype, adjust=mlstm_inputs)
