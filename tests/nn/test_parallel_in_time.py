"""flashseq.LSTM/GRU/RNN(parallel_in_time=True) equal the same modules run step by step."""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import flashseq
from tests.helpers import assert_close

CASES = [
    ("LSTM", dict(input_size=5, hidden_size=12, num_heads=3, num_layers=2, bidirectional=True)),
    ("LSTM", dict(input_size=5, hidden_size=6)),  # one dense block of 6
    ("GRU", dict(input_size=5, hidden_size=7, num_layers=2)),
    ("RNN", dict(input_size=5, hidden_size=8, bidirectional=True)),
]


def _pair(kind, kwargs):
    torch.manual_seed(0)
    seq = getattr(flashseq, kind)(**kwargs, dtype=torch.float64, backend="reference")
    par = getattr(flashseq, kind)(**kwargs, dtype=torch.float64, parallel_in_time=True)
    par.load_state_dict(seq.state_dict())
    return seq, par


@pytest.mark.parametrize("kind, kwargs", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_parallel_in_time_module_equals_sequential(kind, kwargs):
    seq, par = _pair(kind, kwargs)
    x = torch.randn(4, 23, kwargs["input_size"], dtype=torch.float64)
    results = []
    for module in (seq, par):
        out, final = module(x)
        finals = final if isinstance(final, tuple) else (final,)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum()
        loss = loss + sum((f * 0.7).sum() for f in finals)
        grads = torch.autograd.grad(loss, list(module.parameters()))
        results.append((out, finals, grads))
    (out_s, fin_s, g_s), (out_p, fin_p, g_p) = results
    assert_close("output", out_p, out_s, 1e-10)
    for i, (a, b) in enumerate(zip(fin_p, fin_s)):
        assert_close(f"final state {i}", a, b, 1e-10)
    for (name, _), a, b in zip(seq.named_parameters(), g_p, g_s):
        assert_close(f"d {name}", a, b, 1e-10)


def test_parallel_in_time_packed_input_and_hx():
    seq, par = _pair("LSTM", dict(input_size=3, hidden_size=8, num_heads=2))
    x = torch.randn(9, 3, 3, dtype=torch.float64)  # [T, B, F]
    packed = pack_padded_sequence(x, torch.tensor([9, 4, 6]), enforce_sorted=False)
    hx = (torch.randn(1, 3, 8, dtype=torch.float64), torch.randn(1, 3, 8, dtype=torch.float64))
    out_s, (h_s, c_s) = seq(packed, hx)
    out_p, (h_p, c_p) = par(packed, hx)
    assert_close("packed output", out_p.data, out_s.data, 1e-10)
    assert_close("h_n", h_p, h_s, 1e-10)
    assert_close("c_n", c_p, c_s, 1e-10)


@pytest.mark.parametrize("make, error, match", [
    (lambda: flashseq.LSTM(4, 64, parallel_in_time=True), ValueError,
     "DH = hidden_size / num_heads <= 16"),
    (lambda: flashseq.LSTM(4, 64, num_heads=2, parallel_in_time=True), ValueError,
     "num_heads >= 4"),
    (lambda: flashseq.LSTM(4, 8, proj_size=4, parallel_in_time=True), ValueError, "proj_size=0"),
    (lambda: flashseq.GRU(4, 32, parallel_in_time=True), ValueError, "hidden_size <= 16"),
    (lambda: flashseq.RNN(4, 8, nonlinearity="relu", parallel_in_time=True), ValueError, "tanh"),
    (lambda: flashseq.LSTM(4, 8, parallel_in_time="yes"), TypeError,
     "parallel_in_time must be a bool"),
], ids=["lstm-dense-64", "lstm-dh-32", "lstm-proj", "gru-32", "rnn-relu", "not-bool"])
def test_parallel_in_time_needs_structured_weights(make, error, match):
    with pytest.raises(error, match=match):
        make()
