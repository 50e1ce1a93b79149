"""Ground truth for ``fused_rnn``: the cell's step, applied literally, one time step at a time.

Pure PyTorch with no performance tricks; runs in any floating dtype including float64 and is
differentiable through the loop by autograd.
"""
import torch

from flashseq.cells import Cell


def fused_rnn_reference(wx, r, b, states, *, cell: Cell, lengths=None, extras=None):
    """Same arguments and results as ``flashseq.ops.fused_rnn`` (layouts documented there).

    ``states`` must be given ([S, B, NH, DH]); ``lengths`` is None or int64 [B] on wx's device.
    ``extras`` is None or an ``extras.Extras`` (masks already drawn); with
    ``extras.return_all_states`` the result is ``(h, last_states, all_states)``.

    Order within step t: the rows with ``reset[:, t]`` restart from the initial states; h_{t-1}
    (times the variational mask) meets r (times the dropconnect mask); the cell steps; zoneout
    keeps the previous (post-reset) value of the chosen units; rows past their length keep their
    states unchanged.
    """
    B, T = wx.shape[:2]
    initial = list(states.unbind(0))
    state = initial
    normalize = getattr(cell, "normalize_recurrent", None)
    if extras is not None and extras.dropconnect is not None:
        r = r * extras.dropconnect
    hs, all_states = [], []
    for t in range(T):
        prev = state
        if extras is not None and extras.reset is not None:
            back = extras.reset[:, t].view(B, 1, 1)
            prev = [torch.where(back, s0, s) for s0, s in zip(initial, state)]
        h_in = prev[0]
        if extras is not None and extras.variational is not None:
            h_in = h_in * extras.variational
        hr = torch.einsum("bnd,gnde->bgne", h_in, r)  # [B, G, NH, DH]
        rh_t = (normalize(hr) if normalize is not None else hr) + b
        wx_t = wx[:, t]
        if lengths is not None:
            # Rows past their length step on zeros: a NaN/inf in wx's padding would otherwise
            # reach the backward (0 * NaN = NaN through the cell's derivative) and from there
            # every row's d r and d b. torch.where passes no gradient to the branch not taken.
            wx_t = torch.where((lengths > t).view(B, 1, 1, 1), wx_t, torch.zeros_like(wx_t))
        new = list(cell.step(wx_t, rh_t, prev))
        if extras is not None and extras.zoneout is not None:
            keep = extras.zoneout[t]  # [S, B, NH, DH]
            new = [torch.where(keep[s], p, n) for s, (n, p) in enumerate(zip(new, prev))]
        if lengths is None:
            hs.append(new[0])
        else:
            valid = (lengths > t).view(B, 1, 1)
            # past the length the states stay as they were, reset or not
            new = [torch.where(valid, s_new, s_old) for s_new, s_old in zip(new, state)]
            hs.append(torch.where(valid, new[0], torch.zeros_like(new[0])))
        state = new
        if extras is not None and extras.return_all_states:
            all_states.append(torch.stack(state, dim=0))
    h, last = torch.stack(hs, dim=1), torch.stack(state, dim=0)
    if extras is not None and extras.return_all_states:
        return h, last, torch.stack(all_states, dim=0)
    return h, last
