"""The eager CPU fast path (flashseq/nn/fast_path.py) skips fused_rnn's validation: every bad
argument must still raise what the general path raises, same type and same message (wrong
shapes, dtypes, devices and types of input and hx, unbatched input with batched hx, no steps)."""
from __future__ import annotations

import pytest
import torch

import flashseq
from flashseq.nn import fast_path

KINDS = ["LSTM", "GRU", "RNN"]


def _hx(kind, *shape, **kw):
    h = torch.zeros(*shape, **kw)
    return (h, torch.zeros(*shape, **kw)) if kind == "LSTM" else h


BAD_CALLS = {  # name -> (module kwargs, call(m, kind))
    "hx-batch": ({}, lambda m, k: m(torch.randn(4, 3, 5), _hx(k, 2, 4, 6))),
    "hx-layers": ({}, lambda m, k: m(torch.randn(4, 3, 5), _hx(k, 1, 3, 6))),
    "hx-float64": ({}, lambda m, k: m(torch.randn(4, 3, 5), _hx(k, 2, 3, 6, dtype=torch.float64))),
    "hx-meta": ({}, lambda m, k: m(torch.randn(4, 3, 5), _hx(k, 2, 3, 6, device="meta"))),
    "hx-unbatched-for-batched": ({}, lambda m, k: m(torch.randn(4, 3, 5), _hx(k, 2, 6))),
    "hx-batched-for-unbatched": ({}, lambda m, k: m(torch.randn(4, 5), _hx(k, 2, 1, 6))),
    "hx-type": ({}, lambda m, k: m(torch.randn(4, 3, 5), 3)),
    "input-features": ({}, lambda m, k: m(torch.randn(4, 3, 4))),
    "input-4d": ({}, lambda m, k: m(torch.randn(4, 3, 5, 1))),
    "input-float64": ({}, lambda m, k: m(torch.randn(4, 3, 5, dtype=torch.float64))),
    "input-bfloat16": ({}, lambda m, k: m(torch.randn(4, 3, 5, dtype=torch.bfloat16))),
    "input-meta": ({}, lambda m, k: m(torch.randn(4, 3, 5, device="meta"))),
    "input-no-steps": ({}, lambda m, k: m(torch.randn(0, 3, 5))),
    "input-type": ({}, lambda m, k: m([[0.0] * 5] * 4)),
    "bidirectional-batch_first-hx": (dict(bidirectional=True, batch_first=True),
                                     lambda m, k: m(torch.randn(3, 4, 5), _hx(k, 2, 3, 6))),
}


def _raised(call, m, kind):
    with pytest.raises(Exception) as info:
        call(m, kind)
    return type(info.value), str(info.value)


@pytest.mark.parametrize("case", BAD_CALLS)
@pytest.mark.parametrize("kind", KINDS)
def test_fast_path_raises_what_the_general_path_raises(kind, case, monkeypatch):
    kwargs, call = BAD_CALLS[case]
    m = getattr(flashseq, kind)(5, 6, num_layers=2, **kwargs)
    fast = _raised(call, m, kind)
    monkeypatch.setattr(fast_path, "_plain_cpu_call", lambda *args: False)
    general = _raised(call, m, kind)
    assert fast == general
    assert issubclass(fast[0], (ValueError, TypeError)), fast
