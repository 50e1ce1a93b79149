"""CPU checks of the CUDA back end's gradient assembly (flashseq/kernels/fused_rnn/cuda_function.py):
the weight gradients formed outside the backward kernel from the saved states and d(rh), against
float64 autograd of the reference (with lengths). Cells whose d(rh) equals d(wx) (all but GRU),
so the reference's d(wx) stands in for the kernel's d(rh)."""
import pytest
import torch

from flashseq.cells import get_cell
from flashseq.kernels.fused_rnn.cuda_function import SAVED_PER_STEP, weight_gradients
from flashseq.kernels.fused_rnn.reference import fused_rnn_reference


def _states_per_step(wx, r, b, states, cell, lengths):
    """[T, S, B, NH, DH]: the states after each step (rows past their length: zero, as the
    save-mode forward leaves them)."""
    out, st = [], states
    for t in range(wx.shape[1]):
        live = (lengths > t).long()
        _, st = fused_rnn_reference(wx[:, t:t + 1], r, b, st, cell=cell, lengths=live)
        out.append(st * live.view(1, -1, 1, 1).to(st.dtype))
    return torch.stack(out)


@pytest.mark.parametrize("cell_name", ["lstm", "slstm", "elman"])
def test_weight_gradients_match_reference_autograd(cell_name):
    cell = get_cell(cell_name)
    gen = torch.Generator().manual_seed(3)
    B, T, NH, DH, G, S = 4, 6, 2, 8, cell.num_gates, cell.num_states
    wx = torch.randn(B, T, G, NH, DH, generator=gen, dtype=torch.float64, requires_grad=True)
    r = (torch.randn(G, NH, DH, DH, generator=gen, dtype=torch.float64) / DH ** 0.5).requires_grad_(True)
    b = torch.randn(G, NH, DH, generator=gen, dtype=torch.float64, requires_grad=True)
    states = torch.randn(S, B, NH, DH, generator=gen, dtype=torch.float64) * 0.5
    if cell_name == "slstm":
        states[2] = states[2].abs() + 1.0
    lengths = torch.tensor([6, 0, 3, 5])
    h, last = fused_rnn_reference(wx, r, b, states, cell=cell, lengths=lengths)
    (h * torch.randn(h.shape, generator=gen, dtype=torch.float64)).sum().add(last.sum()).backward()
    with torch.no_grad():
        saved = _states_per_step(wx, r, b, states, cell, lengths)
        dr, db = weight_gradients(states, saved, wx.grad)  # d(rh) == d(wx) for these cells
    assert torch.allclose(dr, r.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(db, b.grad, rtol=1e-10, atol=1e-12)
    # the check can fail: h_{t-1} off by one step gives another d(r)
    shifted = torch.cat([saved[:1], saved[:-1]])
    assert not torch.allclose(weight_gradients(states, shifted, wx.grad)[0], r.grad)


def test_saved_values_per_step_follow_the_cell_headers():
    """SAVED_PER_STEP mirrors kNumSaved of csrc/cells/*.h (the save-mode buffer sizes)."""
    import re
    from flashseq import _jit
    for name, n in SAVED_PER_STEP.items():
        text = (_jit.CSRC_DIR / "cells" / f"{name}.h").read_text()
        assert int(re.search(r"kNumSaved = (\d+)", text).group(1)) == n, name
