"""The CPU backward's one-live-row step (csrc/cpu/row_gemv_avx512.cpp): d(h_prev) += d(rh) @ W^T
streamed from weight_hh's rows in place, in alternating directions. Checked against the float64
reference and against the panel GEMM it replaces, for every gradient, at B = 1 and where a
ragged batch leaves one row live, with one and two heads; r laid out as the modules pass it (a
transposed view of weight_hh, the layout the step needs) and densely (which keeps the panels)."""
import pytest
import torch

from flashseq.cells import CELLS
from flashseq.kernels.fused_rnn import cpu as cpu_backend
from flashseq.kernels.fused_rnn import fused_rnn
from flashseq.kernels.fused_rnn.reference import fused_rnn_reference
from tests.helpers import TOLERANCE, assert_close


def _has_avx512_tile() -> bool:
    if cpu_backend.unavailable_reason(torch.device("cpu")) is not None:
        return False
    return bool(cpu_backend._jit.extension()._uses_avx512_tile())


pytestmark = pytest.mark.skipif(not _has_avx512_tile(),
                                reason="the one-row step needs the AVX-512 tile (CPU or build)")


def _inputs(cell, B, T, NH, DH, seed):
    """float64 (wx, r, b, states); r [G, NH, DH, DH] a transposed view of a [G, NH, DH(e), DH(d)]
    buffer, i.e. its d axis dense, as the modules' r = weight_hh.view(G, H, H).transpose(1, 2)."""
    g = torch.Generator().manual_seed(seed)
    G, S = cell.num_gates, cell.num_states
    wx = torch.randn(B, T, G, NH, DH, generator=g, dtype=torch.float64)
    r = (torch.randn(G, NH, DH, DH, generator=g, dtype=torch.float64) / DH ** 0.5).transpose(2, 3)
    b = torch.randn(G, NH, DH, generator=g, dtype=torch.float64) * 0.1
    states = torch.randn(S, B, NH, DH, generator=g, dtype=torch.float64) * 0.5
    return wx, r, b, states


def _gradients(cell_name, inputs, upstream, lengths, mode=None):
    """(d_wx, d_r, d_b, d_states) of sum(h * dh) + sum(last * d_last): the float64 reference
    (mode None), else the cpu back end in float32 with the one-row step set to ``mode``."""
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    if mode is None:
        h, last = fused_rnn_reference(*leaves, cell=CELLS[cell_name], lengths=lengths)
        return torch.autograd.grad([h, last], leaves, list(upstream))
    ext = cpu_backend._jit.extension()
    old = ext._set_row_gemv(mode)  # the setting the backward reads
    try:
        h, last = fused_rnn(*[t.float() for t in leaves], cell=cell_name, lengths=lengths,
                            backend="cpu")
        return torch.autograd.grad([h, last], leaves, [u.float() for u in upstream])
    finally:
        ext._set_row_gemv(old)


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
@pytest.mark.parametrize("B,NH,lengths", [(1, 1, None), (3, 1, [6, 2, 1]), (1, 2, None)],
                         ids=["B1", "ragged-one-live-row", "B1-two-heads"])
@pytest.mark.parametrize("r_layout", ["transposed", "dense"])
@pytest.mark.parametrize("threads", [1, 2])
def test_one_row_step_matches_reference_and_panels(cell_name, B, NH, lengths, r_layout, threads):
    # two threads split every row's columns between them (uneven: 15 vectors)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_one_row_step(cell_name, B, NH, lengths, r_layout)
    finally:
        torch.set_num_threads(before)


def _check_one_row_step(cell_name, B, NH, lengths, r_layout):
    # DH = 232: 15 vectors of 16 columns (the last half masked), one pass over each row; the
    # weight, 4 (or 3) x 232 x 232 floats per head, is over the step's 512 KB floor
    cell, T, DH = CELLS[cell_name], 6, 232
    wx, r, b, states = _inputs(cell, B, T, NH, DH, seed=B * 10 + NH)
    if r_layout == "dense":
        r = r.contiguous()
    g = torch.Generator().manual_seed(99)
    upstream = (torch.randn(B, T, NH, DH, generator=g, dtype=torch.float64),
                torch.randn(cell.num_states, B, NH, DH, generator=g, dtype=torch.float64))
    lengths = None if lengths is None else torch.tensor(lengths)
    inputs = (wx, r, b, states)
    want = _gradients(cell_name, inputs, upstream, lengths)
    by_mode = {mode: _gradients(cell_name, inputs, upstream, lengths, mode) for mode in (0, 1, 2)}
    tol = TOLERANCE[torch.float32]
    names = ("d_wx", "d_r", "d_b", "d_states")
    for mode, got in by_mode.items():
        for i, (name, g_, w_) in enumerate(zip(names, got, want)):
            assert torch.isfinite(g_).all(), (mode, name)
            assert_close(f"{name} (mode {mode})", g_.double(), w_, tol)
            assert_close(f"{name} (mode {mode} vs panels)", g_.double(), by_mode[0][i].double(),
                         tol)
    # which path ran: the row step sums in another order than the panels, so its d(wx) differs
    # in the last bits exactly when it served the one-row steps (r's d axis dense only)
    for mode in (1, 2):
        assert torch.equal(by_mode[mode][0], by_mode[0][0]) == (r_layout == "dense"), mode
