"""The extras kernels index with int32 offsets unless a tensor has 2**31 elements or more
(``WIDE``, int64): both variants give bitwise the same outputs and gradients (forced here on a
tiny case; tensors that large do not fit a test), and the switch sits at 2**31 elements."""
import os

import pytest
import torch

from flashseq.kernels.fused_rnn import triton_extras
from tests.conftest import HAS_CUDA
from tests.kernels.test_fused_rnn_beyond_triton import _all_extras, _case, _run

pytestmark = pytest.mark.skipif(
    not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1")


@pytest.mark.parametrize("cell_name", ["layernorm_lstm", "slstm"])
def test_wide_offsets_give_the_same_results(cell_name, monkeypatch):
    inputs, upstream, lens = _case(cell_name, seed=3)
    kwargs = _all_extras(cell_name)
    narrow = _run("triton", cell_name, inputs, upstream, lens, torch.float32, **kwargs)
    calls = []

    def wide(*args):
        calls.append(args)
        return True

    monkeypatch.setattr(triton_extras, "needs_wide_offsets", wide)
    wide_out = _run("triton", cell_name, inputs, upstream, lens, torch.float32, **kwargs)
    assert len(calls) == 2  # forward and backward launches took the int64 variant
    for a, b in zip(wide_out, narrow):
        assert torch.equal(a, b)


def test_wide_offsets_switch_at_two_to_the_31():
    def wx(B, T):
        return torch.empty(1, 1, 1, 1, 1).expand(B, T, 4, 1, 64)  # one element: only the shape
    r = torch.empty(4, 1, 64, 64)
    # [B, T, 4, 1, 64]: B * T * 256 elements; states (T + 1) * 2 * B * 64 are fewer
    assert not triton_extras.needs_wide_offsets(wx(1, 2 ** 23 - 1), r, 2)
    assert triton_extras.needs_wide_offsets(wx(1, 2 ** 23), r, 2)
