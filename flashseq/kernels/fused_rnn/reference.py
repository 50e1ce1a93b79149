"""Ground truth for ``fused_rnn``: the cell's step, applied literally, one time step at a time.

Pure PyTorch with no performance tricks; runs in any floating dtype including float64 and is
differentiable through the loop by autograd.
"""
import torch

from flashseq.cells import Cell


def fused_rnn_reference(wx, r, b, states, *, cell: Cell, lengths=None):
    """Same arguments and results as ``flashseq.ops.fused_rnn`` (layouts documented there).

    ``states`` must be given ([S, B, NH, DH]); ``lengths`` is None or int64 [B] on wx's device.
    """
    B, T = wx.shape[:2]
    state = list(states.unbind(0))
    hs = []
    for t in range(T):
        rh_t = torch.einsum("bnd,gnde->bgne", state[0], r) + b  # [B, G, NH, DH]
        wx_t = wx[:, t]
        if lengths is not None:
            # Rows past their length step on zeros: a NaN/inf in wx's padding would otherwise
            # reach the backward (0 * NaN = NaN through the cell's derivative) and from there
            # every row's d r and d b. torch.where passes no gradient to the branch not taken.
            wx_t = torch.where((lengths > t).view(B, 1, 1, 1), wx_t, torch.zeros_like(wx_t))
        new = cell.step(wx_t, rh_t, state)
        if lengths is None:
            hs.append(new[0])
        else:
            valid = (lengths > t).view(B, 1, 1)
            new = [torch.where(valid, s_new, s_old) for s_new, s_old in zip(new, state)]
            hs.append(torch.where(valid, new[0], torch.zeros_like(new[0])))
        state = list(new)
    return torch.stack(hs, dim=1), torch.stack(state, dim=0)
