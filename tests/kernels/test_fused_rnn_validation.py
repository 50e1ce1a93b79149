"""fused_rnn rejects bad input with a clear error naming the argument, and dispatches sanely."""
import warnings

import pytest
import torch

from flashseq.kernels.fused_rnn import backends
from flashseq.ops import available_backends, fused_rnn

B, T, G, NH, DH = 2, 3, 4, 2, 5


def good():
    return dict(
        wx=torch.randn(B, T, G, NH, DH), r=torch.randn(G, NH, DH, DH), b=torch.randn(G, NH, DH),
        states=torch.randn(2, B, NH, DH), cell="lstm", lengths=None, backend="reference",
    )


def with_(**changes):
    kwargs = good()
    kwargs.update(changes)
    return kwargs


# (id, kwargs, exception type, words the message must contain)
BAD_INPUTS = [
    ("wx-not-tensor", with_(wx=[[1.0]]), TypeError, "wx"),
    ("wx-4d", with_(wx=torch.randn(B, T, G, NH * DH)), ValueError, "wx must be 5-D"),
    ("wx-int", with_(wx=torch.ones(B, T, G, NH, DH, dtype=torch.int32)), TypeError, "wx must be float"),
    ("wx-wrong-gates", with_(wx=torch.randn(B, T, 3, NH, DH)), ValueError, "gate axis"),
    ("wx-empty-batch", with_(wx=torch.randn(0, T, G, NH, DH), states=None), ValueError, "empty batch"),
    ("wx-no-steps", with_(wx=torch.randn(B, 0, G, NH, DH)), ValueError, "T=0"),
    ("r-wrong-shape", with_(r=torch.randn(G, NH, DH, DH + 1)), ValueError, "r must have shape"),
    ("r-wrong-dtype", with_(r=torch.randn(G, NH, DH, DH, dtype=torch.float64)), TypeError, "r must have wx's dtype"),
    ("r-3d", with_(r=torch.randn(G, DH, DH)), ValueError, "r must be 4-D"),
    ("b-wrong-shape", with_(b=torch.randn(G, DH)), ValueError, "b must be 3-D"),
    ("b-not-tensor", with_(b=0.0), TypeError, "b must be a torch.Tensor"),
    ("states-wrong-S", with_(states=torch.randn(4, B, NH, DH)), ValueError, "states must have shape"),
    ("states-wrong-batch", with_(states=torch.randn(2, B + 1, NH, DH)), ValueError, "states must have shape"),
    ("states-wrong-dtype", with_(states=torch.randn(2, B, NH, DH).half()), TypeError, "states must have wx's dtype"),
    ("cell-unknown", with_(cell="mamba"), ValueError, "allowed"),
    ("cell-not-str", with_(cell=4), TypeError, "cell must be a str"),
    ("lengths-float", with_(lengths=torch.tensor([1.0, 2.0])), TypeError, "lengths must be an int64"),
    ("lengths-wrong-size", with_(lengths=torch.tensor([1, 2, 3])), ValueError, "lengths must have shape [B]"),
    ("lengths-too-long", with_(lengths=torch.tensor([T + 1, 1])), ValueError, "lengths must lie in 0..T"),
    ("lengths-negative", with_(lengths=torch.tensor([-1, 1])), ValueError, "lengths must lie in 0..T"),
    ("lengths-2d", with_(lengths=torch.tensor([[1, 2]])), ValueError, "lengths must be 1-D"),
    ("backend-unknown", with_(backend="fastest"), ValueError, "backend='fastest' is not known"),
    ("backend-not-str", with_(backend=None), TypeError, "backend must be a str"),
]


@pytest.mark.parametrize("kwargs, exc, words", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_clear_error(kwargs, exc, words):
    kwargs = dict(kwargs)
    wx, r, b, states = (kwargs.pop(k) for k in ("wx", "r", "b", "states"))
    with pytest.raises(exc) as info:
        fused_rnn(wx, r, b, states, **kwargs)
    assert words in str(info.value)


def test_at_least_fifteen_bad_inputs_listed():
    assert len(BAD_INPUTS) >= 15


def test_named_backend_that_cannot_run_says_why():
    with pytest.raises(NotImplementedError, match="backend 'cuda' cannot run"):
        fused_rnn(**with_(backend="cuda"))


def test_auto_falls_back_with_one_warning(monkeypatch):
    """A faster back end that cannot serve the call is skipped with exactly one warning per reason."""
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.setitem(backends.AUTO_ORDER, "cpu", ("cuda", "reference"))
    monkeypatch.setenv("FLASHSEQ_CUDA_KERNELS", "1")  # opted in, so skipping it is a fallback
    with pytest.warns(RuntimeWarning, match="falling back to backend 'reference'"):
        h, _ = fused_rnn(**with_(backend="auto"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused_rnn(**with_(backend="auto"))  # same reason: silent the second time
    assert torch.isfinite(h).all()


def test_auto_skips_an_experimental_backend_nobody_opted_into_silently(monkeypatch):
    """Without FLASHSEQ_CUDA_KERNELS=1 the cuda back end is not a candidate of "auto", so
    passing it over is no fallback and warns nothing (with the opt-in it does warn, above)."""
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.setitem(backends.AUTO_ORDER, "cpu", ("cuda", "reference"))
    monkeypatch.delenv("FLASHSEQ_CUDA_KERNELS", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h, _ = fused_rnn(**with_(backend="auto"))
    assert torch.isfinite(h).all()


def test_available_backends_lists_reference_on_cpu():
    names = available_backends("cpu")
    assert "reference" in names and "cuda" not in names
    assert names == available_backends(torch.device("cpu"))


def test_lengths_accepted_as_int32_and_on_cpu():
    kwargs = good()
    h32, s32 = fused_rnn(**dict(kwargs, lengths=torch.tensor([3, 1], dtype=torch.int32)))
    h64, s64 = fused_rnn(**dict(kwargs, lengths=torch.tensor([3, 1])))
    assert torch.equal(h32, h64) and torch.equal(s32, s64)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_public_entry_traces_fullgraph(backend):
    """Dispatch is decided at trace time, so the whole call compiles into one graph."""
    kwargs = good()
    lengths = torch.tensor([3, 1])

    def run(wx, r, b, states, lengths):
        return fused_rnn(wx, r, b, states, cell="lstm", lengths=lengths, backend=backend)

    args = (kwargs["wx"], kwargs["r"], kwargs["b"], kwargs["states"], lengths)
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # auto's fallback note, if any
        got, expected = compiled(*args), run(*args)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
