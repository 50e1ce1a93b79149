"""Ragged batches: the segmented run over active rows equals the plain run."""
import pytest
import torch

from flashseq.cells import CELLS
from flashseq.kernels.fused_rnn.ragged import plan_segments, run_ragged
from flashseq.kernels.fused_rnn.reference import fused_rnn_reference
from flashseq.ops import fused_rnn
from tests.helpers import TOLERANCE, assert_close, make_rnn_inputs


def test_segments_cover_time_and_shrink():
    lengths = sorted(range(1, 65), reverse=True)  # 64 rows, lengths 1..64
    segments, work = plan_segments(lengths)
    assert segments[0][0] == 0 and segments[-1][1] == 64
    assert all(a[1] == b[0] for a, b in zip(segments, segments[1:]))
    actives = [s[2] for s in segments]
    assert actives == sorted(actives, reverse=True) and actives[0] == 64
    assert 0.5 < work < 0.65  # about half the row-steps, plus the segments' granularity


def _grads(fn, inputs, seed):
    leaves = [t.detach().requires_grad_() for t in inputs]
    h, last = fn(*leaves)
    g = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) for t in (h, last)]
    torch.autograd.backward([h, last], upstream)
    return [h.detach(), last.detach()] + [t.grad for t in leaves]


NAMES = ("h", "last_states", "d_wx", "d_r", "d_b", "d_states")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("cell_name", sorted(CELLS))
def test_cpu_backend_ragged_matches_reference(cell_name, dtype):
    """Unsorted spread lengths (0..T) take the segmented path; forward and every gradient."""
    cell = CELLS[cell_name]
    B, T = 12, 9
    g = torch.Generator().manual_seed(7)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[3], lengths[5] = 0, T - 2
    _, work = plan_segments(sorted(lengths.tolist(), reverse=True))
    assert work * max(lengths.tolist()) / T < 0.8, "the case must exercise the segmented path"
    inputs = make_rnn_inputs(cell, B, T, 2, 5, seed=11)
    ref = _grads(lambda *a: fused_rnn_reference(*a, cell=cell, lengths=lengths), inputs, 3)
    low = [t.to(dtype) for t in inputs]
    out = _grads(lambda *a: fused_rnn(*a, cell=cell_name, lengths=lengths, backend="cpu"), low, 3)
    for name, o, rf in zip(NAMES, out, ref):
        assert_close(name, o, rf, TOLERANCE[dtype])


@pytest.mark.parametrize("lengths", [[0, 0, 0], [4, 4, 4], [4, 0, 2]], ids=["all-zero", "all-full", "mixed"])
def test_run_ragged_edge_cases_equal_plain_run(lengths):
    cell = CELLS["lstm"]
    lengths = torch.tensor(lengths)
    wx, r, b, states = make_rnn_inputs(cell, 3, 4, 1, 3, seed=5)

    def run(wx, r, b, states, lengths):
        return fused_rnn_reference(wx, r, b, states, cell=cell, lengths=lengths)

    h, last = run_ragged(run, wx, r, b, states, lengths, min_saving=0.0)
    h_ref, last_ref = run(wx, r, b, states, lengths)
    assert_close("h", h, h_ref, 1e-12)
    assert_close("last_states", last, last_ref, 1e-12)
