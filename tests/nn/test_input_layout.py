"""A sparse or mkldnn input or initial state to LSTM/GRU/RNN is a clear RNNInputTypeError naming
the argument and its layout, on the eager fast path and the general path alike (it was ATen's
"reshape is not implemented for sparse tensors" / "Mkldnn tensor does not support view")."""
from __future__ import annotations

import pytest
import torch

import flashseq
from flashseq.nn import RNNInputTypeError, fast_path


@pytest.fixture(params=["fast", "general"])
def path(request, monkeypatch):
    if request.param == "general":
        monkeypatch.setattr(fast_path, "_plain_cpu_call", lambda *args: False)
    return request.param


LAYOUTS = {"sparse_coo": lambda t: t.to_sparse(), "mkldnn": lambda t: t.to_mkldnn()}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_non_dense_input(kind, layout, path):
    m = getattr(flashseq, kind)(5, 6)
    x = LAYOUTS[layout](torch.randn(4, 3, 5))
    with pytest.raises(RNNInputTypeError, match=rf"input must be a dense tensor.*layout.*{layout}"):
        m(x)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_non_dense_initial_state(kind, path):
    m = getattr(flashseq, kind)(5, 6)
    h0 = torch.randn(1, 3, 6).to_sparse()
    hx = (torch.zeros(1, 3, 6), h0) if kind == "LSTM" else h0
    name = r"hx\[1\] \(c0\)" if kind == "LSTM" else "hx"
    with pytest.raises(RNNInputTypeError, match=rf"{name} must be a dense tensor.*sparse_coo"):
        m(torch.randn(4, 3, 5), hx)
