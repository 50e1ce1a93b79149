"""The no_grad float32 LSTM forward of the compiled CPU loop that fuses each step's GEMM and cell
update per block of 16 units (csrc/cpu/fused_rnn_forward.cpp, fused_lstm_loop): against the
float64 reference and against the separate GEMM + pointwise passes, over unit counts that do and
do not fill the 16-unit blocks, row counts that split into uneven tiles, several heads, initial
states, batch- and time-major wx and the module on top. Also the forced-inline cell update both
no_grad loops use (pointwise_avx512.cpp, lstm_update16), checked against the reference with its
path counters, and the shared cell header it replaces."""
import pytest
import torch

import flashseq
from flashseq.cells import CELLS
from flashseq.kernels.fused_rnn import cpu as cpu_backend
from flashseq.kernels.fused_rnn.reference import fused_rnn_reference
from tests.helpers import TOLERANCE, assert_close, cpu_has_avx512_tile, make_rnn_inputs


pytestmark = pytest.mark.skipif(not cpu_has_avx512_tile(),
                                reason="the fused LSTM step needs the AVX-512 tile (CPU or build)")


def _forward(wx, r, b, states, fused: bool, time_major: bool, fast_update: bool = True):
    ext = cpu_backend._jit.extension()
    old = ext._set_fused_lstm(fused)
    old_fast = ext._set_lstm_fast_update(fast_update)
    try:
        if time_major:  # a [B, T, ...] view of a [T, B, ...] buffer, as the modules pass it
            wx = wx.transpose(0, 1).contiguous().transpose(0, 1)
        with torch.no_grad():
            return flashseq.ops.fused_rnn(wx, r, b, states, cell="lstm", backend="cpu")
    finally:
        ext._set_fused_lstm(old)
        ext._set_lstm_fast_update(old_fast)


@pytest.mark.parametrize("time_major", [False, True], ids=["batch_major", "time_major"])
@pytest.mark.parametrize("B,NH,DH", [(1, 1, 16), (1, 2, 40), (2, 1, 8), (5, 1, 33), (7, 2, 17),
                                     (13, 1, 48), (20, 1, 100), (6, 3, 24)])
def test_fused_lstm_forward_matches_reference(B, NH, DH, time_major):
    cell = CELLS["lstm"]
    T = 6
    wx, r, b, states = make_rnn_inputs(cell, B, T, NH, DH, dtype=torch.float64, seed=B * 100 + DH)
    h_ref, last_ref = fused_rnn_reference(wx, r, b, states, cell=cell)
    args = [t.float() for t in (wx, r, b, states)]
    h, last = _forward(*args, fused=True, time_major=time_major)
    h_sep, last_sep = _forward(*args, fused=False, time_major=time_major)
    tol = TOLERANCE[torch.float32]
    assert torch.isfinite(h).all() and torch.isfinite(last).all()
    assert_close("h", h.double(), h_ref, tol)
    assert_close("last_states", last.double(), last_ref, tol)
    assert_close("h vs separate passes", h.double(), h_sep.double(), tol)
    assert_close("last vs separate passes", last.double(), last_sep.double(), tol)


@pytest.mark.parametrize("fused", [True, False], ids=["fused_tile", "separate_passes"])
@pytest.mark.parametrize("B,DH", [(3, 16), (4, 40), (2, 48), (5, 100), (6, 7)])
def test_fast_cell_update_matches_reference_and_is_taken(fused, B, DH):
    # DH 16: one whole chunk; 48 and 100: pairs, a lone chunk and (100) a masked tail; 7: only a
    # masked tail. The counters show which loop ran and that the fast update served it.
    cell = CELLS["lstm"]
    T = 5
    wx, r, b, states = make_rnn_inputs(cell, B, T, 1, DH, dtype=torch.float64, seed=31 * B + DH)
    h_ref, last_ref = fused_rnn_reference(wx, r, b, states, cell=cell)
    args = [t.float() for t in (wx, r, b, states)]
    ext = cpu_backend._jit.extension()
    ext._lstm_nograd_path_counts(reset=True)
    h, last = _forward(*args, fused=fused, time_major=True)
    assert tuple(ext._lstm_nograd_path_counts(reset=True)) == (1 if fused else 0, 1)
    h_header, last_header = _forward(*args, fused=fused, time_major=True, fast_update=False)
    assert tuple(ext._lstm_nograd_path_counts(reset=True)) == (1 if fused else 0, 0)
    tol = TOLERANCE[torch.float32]
    assert torch.isfinite(h).all() and torch.isfinite(last).all()
    assert_close("h", h.double(), h_ref, tol)
    assert_close("last_states", last.double(), last_ref, tol)
    assert_close("h vs the cell header", h.double(), h_header.double(), tol)
    assert_close("last vs the cell header", last.double(), last_header.double(), tol)


def test_fast_cell_update_saturates_without_nan():
    # pre-activations far past exp's clamp: gates exactly 0/1, tanh +-1, nothing NaN or inf
    cell = CELLS["lstm"]
    wx, r, b, states = (t.float() for t in make_rnn_inputs(cell, 4, 3, 1, 40, seed=5))
    wx = wx * 1e4
    wx[0, 0, :, 0, :3] = float("inf")
    wx[1, 0, :, 0, :3] = -float("inf")
    h_ref, last_ref = fused_rnn_reference(*(t.double() for t in (wx, r, b, states)), cell=cell)
    for fused in (True, False):
        h, last = _forward(wx, r, b, states, fused=fused, time_major=False)
        assert_close(f"h (fused={fused})", h.double(), h_ref, TOLERANCE[torch.float32])
        assert_close(f"last (fused={fused})", last.double(), last_ref, TOLERANCE[torch.float32])


def test_fused_lstm_leaves_callers_states_alone():
    cell = CELLS["lstm"]
    wx, r, b, states = (t.float() for t in make_rnn_inputs(cell, 3, 4, 1, 20, seed=7))
    before = states.clone()
    _forward(wx, r, b, states, fused=True, time_major=False)
    assert torch.equal(states, before)


@pytest.mark.parametrize("batch_first", [False, True])
def test_module_no_grad_forward_matches_torch(batch_first):
    torch.manual_seed(3)
    ref = torch.nn.LSTM(24, 40, 2, batch_first=batch_first).double()
    ours = flashseq.LSTM(24, 40, 2, batch_first=batch_first)
    ours.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x = torch.randn((5, 9, 24) if batch_first else (9, 5, 24), dtype=torch.float64)
    h0, c0 = torch.randn(2, 5, 40, dtype=torch.float64), torch.randn(2, 5, 40, dtype=torch.float64)
    ext = cpu_backend._jit.extension()
    # B=5 would take the projection folded into the step (test_lstm_projected_cpu.py); this
    # checks the fused loop under the module
    old = ext._set_projected_lstm(False)
    try:
        ext._lstm_nograd_path_counts(reset=True)
        with torch.no_grad():
            y, (h, c) = ours(x.float(), (h0.float(), c0.float()))
            y_ref, (h_ref, c_ref) = ref(x, (h0, c0))
    finally:
        ext._set_projected_lstm(old)
    assert ext._lstm_nograd_path_counts(reset=True)[0] == 2  # both layers ran the fused tile
    tol = TOLERANCE[torch.float32]
    assert_close("y", y.double(), y_ref, tol)
    assert_close("h_n", h.double(), h_ref, tol)
    assert_close("c_n", c.double(), c_ref, tol)
