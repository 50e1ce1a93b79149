"""Public-API promises an outside user relies on, each found broken by an audit of docs/api.md
against the code (tiny shapes, CPU; a few seconds in all):

- the modules' forward raises ``RNNInputError`` for every bad argument, wrong types included
  (those are ``RNNInputTypeError``: an ``RNNInputError`` and a ``TypeError``);
- ``parallel_rnn`` serves the sLSTM cell like the other cells (forward and gradients equal the
  sequential ``fused_rnn``; the cell's analytic partials equal autograd's);
- ``available_backends`` validates ``device`` and lists nothing for a CUDA device that is absent;
- ``python -m bench ... --png`` has its plotting package in the ``dev`` extras.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

import flashseq
from flashseq.cells import CELLS
from flashseq.nn import RNNInputError, RNNInputTypeError
from flashseq.ops import available_backends, fused_rnn, parallel_rnn
from tests.helpers import assert_close

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- module forward errors
def _x():
    return torch.randn(4, 2, 3)


WRONG_TYPES = [
    (lambda: flashseq.LSTM(3, 5), lambda m: m(_x(), torch.zeros(1, 2, 5)), "hx"),
    (lambda: flashseq.LSTM(3, 5), lambda m: m(_x(), (torch.zeros(1, 2, 5), "c0")), "c0"),
    (lambda: flashseq.GRU(3, 5), lambda m: m("not a tensor"), "input"),
    (lambda: flashseq.GRU(3, 5), lambda m: m(_x(), [1.0]), "hx"),
    (lambda: flashseq.RNN(3, 5), lambda m: m(_x(), reset=[[True]]), "reset"),
    (lambda: flashseq.RNN(3, 5), lambda m: m(_x(), reset=torch.zeros(2, 4)), "reset"),
    (lambda: flashseq.GRU(3, 5, dropconnect=0.5), lambda m: m(_x(), generator=3), "generator"),
    (lambda: flashseq.LayerNormLSTM(3, 5), lambda m: m(_x(), torch.zeros(1, 2, 5)), "hx"),
    (lambda: flashseq.LayerNormGRU(3, 5), lambda m: m(_x(), (torch.zeros(1, 2, 5),)), "hx"),
    (lambda: flashseq.sLSTM(3, 4), lambda m: m(_x(), states=[0.0]), "states"),
    (lambda: flashseq.sLSTM(3, 4), lambda m: m(None), "input"),
]


@pytest.mark.parametrize("make, call, name", WRONG_TYPES,
                         ids=["lstm-hx-tensor", "lstm-c0-str", "gru-input-str", "gru-hx-list",
                              "rnn-reset-list", "rnn-reset-float", "gru-generator-int",
                              "lnlstm-hx-tensor", "lngru-hx-tuple", "slstm-states-list",
                              "slstm-input-none"])
def test_wrong_type_in_forward_is_an_rnn_input_error_and_a_type_error(make, call, name):
    with pytest.raises(RNNInputError, match=name) as info:
        call(make())
    assert isinstance(info.value, TypeError) and isinstance(info.value, RNNInputTypeError)
    assert isinstance(info.value, (ValueError, RuntimeError))


def test_rnn_input_type_error_is_exported():
    assert "RNNInputTypeError" in flashseq.nn.__all__
    assert issubclass(RNNInputTypeError, RNNInputError)
    assert issubclass(RNNInputTypeError, TypeError)


@pytest.mark.gpu
def test_generator_on_another_device_is_an_rnn_input_error():
    m = flashseq.GRU(3, 5, dropconnect=0.5)  # CPU parameters and input, a CUDA generator
    with pytest.raises(RNNInputError, match="generator"):
        m(_x(), generator=torch.Generator(device="cuda"))


# ---------------------------------------------------------------- parallel_rnn with sLSTM
def test_slstm_partials_match_autograd():
    cell = CELLS["slstm"]
    torch.manual_seed(0)
    wx = torch.randn(3, 4, 2, 5, dtype=torch.float64, requires_grad=True) * 2
    rh = torch.randn(3, 4, 2, 5, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(3, 2, 5, dtype=torch.float64) for _ in range(4)]
    states[2] = states[2].abs() + 0.5                     # n > 0, as after any real step
    states[3][0, 0, 0] = 0.0                              # a tie in the max: lf + m_prev = i~
    with torch.no_grad():
        lf = torch.nn.functional.logsigmoid(wx[0, 1, 0, 0] + rh[0, 1, 0, 0])
        wx[0, 0, 0, 0] = lf - rh[0, 0, 0, 0]
    wx, rh = wx.detach().requires_grad_(), rh.detach().requires_grad_()
    states = [s.requires_grad_() for s in states]
    new, d_wx, d_rh, d_states = cell.partials(wx, rh, states)
    ref = cell.step(wx, rh, states)
    for s in range(4):
        assert_close(f"state {s}", new[s], ref[s], 1e-15)
        grads = torch.autograd.grad(ref[s].sum(), [wx, rh, *states], allow_unused=True,
                                    retain_graph=True)
        assert_close(f"d{s}/d wx", d_wx[:, s], grads[0], 1e-13)
        assert_close(f"d{s}/d rh", d_rh[:, s], grads[1], 1e-13)
        for k in range(4):
            want = grads[2 + k] if grads[2 + k] is not None else torch.zeros_like(states[k])
            assert torch.allclose(d_states[:, s, k], want, atol=1e-13), (s, k)


def _slstm_inputs(structure, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    B, T, NH, DH = 3, 8, 2, 3
    wx = torch.randn(B, T, 4, NH, DH, generator=g, dtype=torch.float64)
    shape = (4, NH, DH) if structure == "diag" else (4, NH, DH, DH)
    r = torch.randn(*shape, generator=g, dtype=torch.float64) * 0.4
    b = torch.randn(4, NH, DH, generator=g, dtype=torch.float64)
    states = torch.randn(4, B, NH, DH, generator=g, dtype=torch.float64)
    states[2] = states[2].abs() + 1.0
    return [t.to(dtype) for t in (wx, r, b, states)]


@pytest.mark.parametrize("structure", ["diag", "block"])
@pytest.mark.parametrize("backend, dtype", [("reference", torch.float64),
                                            ("triton", torch.float32)])
def test_parallel_rnn_serves_slstm(structure, backend, dtype):
    """Forward and every gradient equal the sequential fused_rnn (r densified for "diag"),
    Newton converging without the sequential fallback (which would warn)."""
    inputs = _slstm_inputs(structure, dtype, seed=1)
    lengths = torch.tensor([8, 3, 0])
    g = torch.Generator().manual_seed(2)
    d_h = torch.randn(3, 8, 2, 3, generator=g, dtype=torch.float64).to(dtype)
    d_last = torch.randn(4, 3, 2, 3, generator=g, dtype=torch.float64).to(dtype)

    def run(fn):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        h, last = fn(*leaves)
        grads = torch.autograd.grad((h * d_h).sum() + (last * d_last).sum(), leaves)
        return h, last, grads

    def parallel(wx, r, b, states):
        return parallel_rnn(wx, r, b, states, cell="slstm", structure=structure,
                            lengths=lengths, backend=backend)

    def sequential(wx, r, b, states):
        dense = torch.diag_embed(r) if structure == "diag" else r
        return fused_rnn(wx.double(), dense.double(), b.double(), states.double(), cell="slstm",
                         lengths=lengths, backend="reference")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h, last, grads = run(parallel)
    h_ref, last_ref, grads_ref = run(sequential)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert_close("h", h.double(), h_ref, tol)
    assert_close("last_states", last.double(), last_ref, tol)
    for name, got, want in zip(("d_wx", "d_r", "d_b", "d_states"), grads, grads_ref):
        assert_close(name, got.double(), want.double(), tol)


# ---------------------------------------------------------------- available_backends
@pytest.mark.parametrize("device, error", [("nonsense", ValueError), (1.5, TypeError),
                                           (True, TypeError), ([0], TypeError)])
def test_available_backends_bad_device(device, error):
    with pytest.raises(error, match="device"):
        available_backends(device)


def test_available_backends_device_forms():
    cpu = available_backends("cpu")
    assert cpu == available_backends(torch.device("cpu")) and "reference" in cpu
    assert available_backends("meta") == ["reference"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a CUDA device")
def test_available_backends_lists_nothing_for_an_absent_cuda_device():
    assert available_backends("cuda") == []
    assert available_backends("cuda:0") == []
    assert available_backends(0) == []


# ---------------------------------------------------------------- bench --png dependency
def test_dev_extras_bring_the_png_plotter():
    text = (REPO / "pyproject.toml").read_text()
    dev = re.search(r"^dev = \[(.*?)^\]", text, re.S | re.M)
    assert dev is not None, "pyproject.toml has no dev extras list"
    assert re.search(r'"matplotlib[^"]*"', dev.group(1)), "python -m bench --png needs matplotlib"
