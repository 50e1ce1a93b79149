"""The float32 CPU backward's d(r) over many rows (B*T >= 2*DH, one head) for the layouts the
modules pass: h time-major (a [B, T] view of a [T, B] buffer) or batch-major, and r either dense
or a transposed view (the modules' weight_hh), against the float64 reference, every gradient.
On an AVX-512 CPU these take the blocked transposes of csrc/cpu/fused_rnn_backward.cpp."""
import pytest
import torch

import flashseq
from flashseq.cells import CELLS
from flashseq.kernels.fused_rnn.reference import fused_rnn_reference
from tests.helpers import TOLERANCE, assert_close, make_rnn_inputs


def _time_major(t):
    """The values of t [B, T, ...] as a view of a dense [T, B, ...] buffer."""
    return t.transpose(0, 1).contiguous().transpose(0, 1)


def _r_transposed(r):
    """The values of r [G, NH, DH, DH] with its last two axes swapped in memory."""
    return r.transpose(2, 3).contiguous().transpose(2, 3)


@pytest.mark.parametrize("r_transposed", [False, True], ids=["r_dense", "r_transposed"])
@pytest.mark.parametrize("time_major", [False, True], ids=["batch_major", "time_major"])
@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_recurrent_weight_gradient_layouts(cell_name, time_major, r_transposed):
    cell = CELLS[cell_name]
    # B*T = 350 rows against DH=37 (not a multiple of the 32-wide transpose block)
    B, T, NH, DH = 7, 50, 1, 37
    wx, r, b, states = make_rnn_inputs(cell, B, T, NH, DH, seed=41)
    gen = torch.Generator().manual_seed(42)
    grad_h = torch.randn(B, T, NH, DH, generator=gen, dtype=torch.float64)
    grad_last = torch.randn(cell.num_states, B, NH, DH, generator=gen, dtype=torch.float64)

    def grads(fn, tensors):
        leaves = [t.detach().requires_grad_() for t in tensors]
        h, last = fn(*leaves)
        loss = (h * grad_h.to(h.dtype)).sum() + (last * grad_last.to(h.dtype)).sum()
        return [h.detach(), last.detach(), *torch.autograd.grad(loss, leaves)]

    ref = grads(lambda *ts: fused_rnn_reference(*ts, cell=cell, lengths=None), (wx, r, b, states))
    wx32, r32 = wx.float(), r.float()
    wx32 = _time_major(wx32) if time_major else wx32
    r32 = _r_transposed(r32) if r_transposed else r32
    assert (wx32.stride(0) < wx32.stride(1)) == time_major
    assert (r32.stride(2) < r32.stride(3)) == r_transposed
    ours = grads(lambda *ts: flashseq.ops.fused_rnn(*ts, cell=cell_name, backend="cpu"),
                 (wx32, r32, b.float(), states.float()))
    for name, got, want in zip(("h", "last", "d_wx", "d_r", "d_b", "d_states"), ours, ref):
        assert torch.isfinite(got).all(), name
        assert_close(name, got, want, TOLERANCE[torch.float32])



def _check_module_layouts(B, T, DH, seed):
    """LSTM h, d_wx, d_r, d_b, d_states in the modules' layouts (time-major h, r a transposed view
    of weight_hh) against the float64 reference."""
    cell = CELLS["lstm"]
    wx, r, b, states = make_rnn_inputs(cell, B, T, 1, DH, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    grad_h = torch.randn(B, T, 1, DH, generator=gen, dtype=torch.float64)
    grad_last = torch.randn(cell.num_states, B, 1, DH, generator=gen, dtype=torch.float64)
    leaves = [t.detach().requires_grad_() for t in (wx, r, b, states)]
    h_ref, last_ref = fused_rnn_reference(*leaves, cell=cell, lengths=None)
    ref = torch.autograd.grad((h_ref * grad_h).sum() + (last_ref * grad_last).sum(), leaves)
    leaves32 = [t.detach().float().requires_grad_() for t in (wx, r, b, states)]
    h, last = flashseq.ops.fused_rnn(_time_major(leaves32[0]), _r_transposed(leaves32[1]),
                                     *leaves32[2:], cell="lstm", backend="cpu")
    ours = torch.autograd.grad((h * grad_h.float()).sum() + (last * grad_last.float()).sum(),
                               leaves32)
    assert_close("h", h.double(), h_ref, TOLERANCE[torch.float32])
    for name, got, want in zip(("d_wx", "d_r", "d_b", "d_states"), ours, ref):
        assert torch.isfinite(got).all(), name
        assert_close(name, got.double(), want, TOLERANCE[torch.float32])


def test_recurrent_weight_gradient_past_256_units():
    # DH=260 (> 256, not a multiple of 16 or 48) with B*T=640 rows: on a CPU whose L2 gives
    # k-blocks of half a MB (grad_gemm_max_rows 512) this takes the blocked d(r) kernel in two
    # k-blocks (512 + 128 rows) instead of oneDNN
    ext = flashseq.kernels.fused_rnn.cpu._jit.extension()
    if ext._grad_gemm_max_rows() < 260 or not ext._linear_weight_grad_fast():
        pytest.skip("the blocked weight gradient serves DH=260 only with AVX-512 and an L2 >= 1 MB")
    _check_module_layouts(B=4, T=160, DH=260, seed=43)


@pytest.mark.parametrize("B,T,DH", [(1, 48, 48), (2, 30, 50), (3, 20, 40)],
                         ids=["rows_eq_DH", "rows_1.2DH", "rows_1.5DH"])
def test_recurrent_weight_gradient_few_rows(B, T, DH):
    # B*T from DH to below 2*DH: the blocked d(r) kernel's rows (one k-block), one row (B=1: h
    # is batch-major, not time-major) or a few
    _check_module_layouts(B=B, T=T, DH=DH, seed=B * 7 + DH)
