"""The weight packing of the compiled CPU loop when r's input-unit axis d is dense, as the modules
pass it (a transposed view of weight_hh): 16 x 16 blocks transposed in AVX-512 registers
(csrc/cpu/step_gemm_avx512.cpp, transpose_columns16_avx512) for the step GEMM's panels
(step_gemm.h, pack_panels) and the fused LSTM step's gate panels (fused_rnn_forward.cpp). Against
the float64 reference over unit counts that do and do not fill the 16-column groups and the
48-column panels, several heads, LSTM and GRU, no_grad and with gradients; the pack counter shows
the transposing packer ran, and only for that layout."""
import pytest
import torch

import flashseq
from flashseq.cells import CELLS
from flashseq.kernels.fused_rnn import cpu as cpu_backend
from flashseq.kernels.fused_rnn.reference import fused_rnn_reference
from tests.helpers import TOLERANCE, assert_close, cpu_has_avx512_tile, make_rnn_inputs


def _ext():
    return cpu_backend._jit.extension()


pytestmark = pytest.mark.skipif(not cpu_has_avx512_tile(),
                                reason="the transposing packer needs the AVX-512 tile (CPU or build)")


def _d_dense(r):
    """r [G, NH, DH, DH] with the same values, its d axis (dim 2) dense."""
    return r.transpose(2, 3).contiguous().transpose(2, 3)


# the GRU has no fused tile: its one packer is the step GEMM's
@pytest.mark.parametrize("cell_name,fused", [("lstm", True), ("lstm", False), ("gru", False)],
                         ids=["lstm_fused_tile", "lstm_separate_passes", "gru"])
@pytest.mark.parametrize("NH,DH", [(1, 7), (2, 20), (1, 40), (1, 53)])
def test_no_grad_forward_with_d_dense_r(cell_name, NH, DH, fused):
    cell = CELLS[cell_name]
    wx, r, b, states = make_rnn_inputs(cell, 3, 4, NH, DH, dtype=torch.float64, seed=NH * 100 + DH)
    h_ref, last_ref = fused_rnn_reference(wx, r, b, states, cell=cell)
    ext = _ext()
    old = ext._set_fused_lstm(fused)
    try:
        ext._transposed_packs(reset=True)
        with torch.no_grad():
            h, last = flashseq.ops.fused_rnn(wx.float(), _d_dense(r.float()), b.float(),
                                             states.float(), cell=cell_name, backend="cpu")
        assert ext._transposed_packs(reset=True) == 1
        with torch.no_grad():  # r as given (e dense): the scalar packer
            h_plain, _ = flashseq.ops.fused_rnn(wx.float(), r.float(), b.float(), states.float(),
                                                cell=cell_name, backend="cpu")
        assert ext._transposed_packs(reset=True) == 0
    finally:
        ext._set_fused_lstm(old)
    tol = TOLERANCE[torch.float32]
    assert torch.isfinite(h).all()
    assert_close("h", h.double(), h_ref, tol)
    assert_close("last_states", last.double(), last_ref, tol)
    assert_close("h vs the scalar packer", h.double(), h_plain.double(), tol)


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_gradients_with_d_dense_r(cell_name):
    cell = CELLS[cell_name]
    wx, r, b, states = make_rnn_inputs(cell, 4, 5, 2, 27, dtype=torch.float64, seed=11)
    leaves64 = [t.clone().requires_grad_() for t in (wx, r, b, states)]
    h_ref, last_ref = fused_rnn_reference(*leaves64, cell=cell)
    g = torch.Generator().manual_seed(2)
    dh = torch.randn(h_ref.shape, generator=g, dtype=torch.float64)
    grads_ref = torch.autograd.grad((h_ref * dh).sum() + last_ref.sum(), leaves64)
    leaves = [t.float().requires_grad_() for t in (wx, r, b, states)]
    ext = _ext()
    ext._transposed_packs(reset=True)
    h, last = flashseq.ops.fused_rnn(leaves[0], _d_dense(leaves[1]), leaves[2], leaves[3],
                                     cell=cell_name, backend="cpu")
    assert ext._transposed_packs(reset=True) >= 1  # the forward's panels
    grads = torch.autograd.grad((h * dh.float()).sum() + last.sum(), leaves)
    tol = TOLERANCE[torch.float32]
    assert_close("h", h.double(), h_ref, tol)
    for name, got, want in zip(("d_wx", "d_r", "d_b", "d_states"), grads, grads_ref):
        assert_close(name, got.double(), want, tol)
