"""The float32 LSTM training path of the compiled CPU loop: the forward that saves its gates and the
backward's pointwise pass through the forced-inline AVX-512 cell math (csrc/cpu/lstm_train_avx512.cpp,
lstm_train_chunk / lstm_backward_chunk), against the float64 reference, forward and every gradient,
over unit counts that fill whole 16-unit chunks, pairs, lone chunks and masked tails, one and
several rows and heads, lengths and initial states; and against the shared cell header the switch
``_set_lstm_fast_train(False)`` restores (results must differ in their last bits: the fast path ran)."""
import pytest
import torch

import flashseq
from flashseq.cells import CELLS
from flashseq.kernels.fused_rnn import cpu as cpu_backend
from flashseq.kernels.fused_rnn.reference import fused_rnn_reference
from tests.helpers import TOLERANCE, assert_close, cpu_has_avx512_tile, make_rnn_inputs

pytestmark = pytest.mark.skipif(not cpu_has_avx512_tile(),
                                reason="the fast LSTM training path needs AVX-512 (CPU or build)")


def _fwd_bwd(inputs, grad_h, grad_last, lengths, fast: bool):
    """h, last states and the gradients of sum(h grad_h) + sum(last grad_last) w.r.t. inputs."""
    ext = cpu_backend._jit.extension()
    old = ext._set_lstm_fast_train(fast)
    try:
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        wx = leaves[0].transpose(0, 1).contiguous().transpose(0, 1)  # time-major, as the modules
        h, last = flashseq.ops.fused_rnn(wx, *leaves[1:], cell="lstm", lengths=lengths,
                                         backend="cpu")
        loss = (h * grad_h).sum() + (last * grad_last).sum()
        return h.detach(), last.detach(), torch.autograd.grad(loss, leaves)
    finally:
        ext._set_lstm_fast_train(old)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("B,NH,DH", [(1, 1, 7), (3, 1, 16), (2, 2, 20), (5, 1, 48), (4, 1, 50),
                                     (1, 1, 100), (6, 3, 33)])
def test_lstm_training_path_matches_reference(B, NH, DH, with_lengths):
    # DH 7: only a masked tail; 16: one whole chunk; 20, 50: a pair then a masked chunk; 48: a
    # pair and a lone chunk; 100: three pairs and a tail; 33: a pair and a one-unit tail.
    cell = CELLS["lstm"]
    T = 6
    seed = 17 * B + DH + NH
    wx, r, b, states = make_rnn_inputs(cell, B, T, NH, DH, dtype=torch.float64, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    lengths = (torch.randint(1, T + 1, (B,), generator=gen).sort(descending=True).values
               if with_lengths else None)
    grad_h = torch.randn(B, T, NH, DH, generator=gen, dtype=torch.float64)
    grad_last = torch.randn(2, B, NH, DH, generator=gen, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (wx, r, b, states)]
    h_ref, last_ref = fused_rnn_reference(*leaves, cell=cell, lengths=lengths)
    grads_ref = torch.autograd.grad((h_ref * grad_h).sum() + (last_ref * grad_last).sum(), leaves)

    inputs = [t.float() for t in (wx, r, b, states)]
    h, last, grads = _fwd_bwd(inputs, grad_h.float(), grad_last.float(), lengths, fast=True)
    tol = TOLERANCE[torch.float32]
    assert_close("h", h.double(), h_ref, tol)
    assert_close("last_states", last.double(), last_ref, tol)
    for name, g, g_ref in zip(("d_wx", "d_r", "d_b", "d_states"), grads, grads_ref):
        assert torch.isfinite(g).all(), name
        assert_close(name, g.double(), g_ref, tol)

    h_hdr, last_hdr, grads_hdr = _fwd_bwd(inputs, grad_h.float(), grad_last.float(), lengths,
                                          fast=False)
    assert_close("h vs the cell header", h.double(), h_hdr.double(), tol)
    assert_close("d_wx vs the cell header", grads[0].double(), grads_hdr[0].double(), tol)
    # different formulas round differently: bit-identical results would mean the switch (and so
    # the fast path) did nothing
    assert not torch.equal(h, h_hdr)
    assert not torch.equal(grads[0], grads_hdr[0])


def test_lstm_training_path_saturates_without_nan():
    # pre-activations far past the exp clamps: gates exactly 0/1, tanh +-1; forward and
    # gradients finite and equal to the float64 reference's
    cell = CELLS["lstm"]
    B, T, NH, DH = 3, 4, 1, 37
    wx, r, b, states = make_rnn_inputs(cell, B, T, NH, DH, dtype=torch.float64, seed=5)
    wx = wx * 400.0
    gen = torch.Generator().manual_seed(6)
    grad_h = torch.randn(B, T, NH, DH, generator=gen, dtype=torch.float64)
    grad_last = torch.randn(2, B, NH, DH, generator=gen, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (wx, r, b, states)]
    h_ref, last_ref = fused_rnn_reference(*leaves, cell=cell)
    grads_ref = torch.autograd.grad((h_ref * grad_h).sum() + (last_ref * grad_last).sum(), leaves)
    h, last, grads = _fwd_bwd([t.float() for t in (wx, r, b, states)], grad_h.float(),
                              grad_last.float(), None, fast=True)
    tol = TOLERANCE[torch.float32]
    assert torch.isfinite(h).all() and torch.isfinite(last).all()
    assert_close("h", h.double(), h_ref, tol)
    assert_close("last_states", last.double(), last_ref, tol)
    for name, g, g_ref in zip(("d_wx", "d_r", "d_b", "d_states"), grads, grads_ref):
        assert torch.isfinite(g).all(), name
        assert_close(name, g.double(), g_ref, tol)
