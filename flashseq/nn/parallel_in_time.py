"""``parallel_in_time=True`` of flashseq.LSTM / GRU / RNN: the recurrence of each layer and
direction runs in ``flashseq.ops.parallel_rnn`` (Newton iterations + parallel scan) instead of
``fused_rnn``. Same parameters and results; only recurrent weights structured as head-wise
blocks of DH = hidden_size / num_heads <= 16 units qualify (the Newton Jacobians are
(S*DH) x (S*DH) per head and step)."""
from __future__ import annotations

import torch

from flashseq.kernels.parallel_rnn import parallel_rnn
from flashseq.kernels.parallel_rnn.problem import MAX_BLOCK_DH

from .checks import check_bool


def check_parallel_in_time(kind: str, flag, hidden_size: int, num_heads: int,
                           proj_size: int) -> bool:
    """``flag`` as a bool; ValueError when the module's recurrent weights do not qualify."""
    flag = check_bool("parallel_in_time", flag)
    if not flag:
        return False
    head_dim = hidden_size // num_heads
    if head_dim > MAX_BLOCK_DH:
        heads = "" if kind != "LSTM" else f" or num_heads >= {-(-hidden_size // MAX_BLOCK_DH)}"
        raise ValueError(
            f"{kind}: parallel_in_time=True needs structured recurrent weights, head-wise "
            "blocks of "
            f"DH = hidden_size / num_heads <= {MAX_BLOCK_DH} units; got hidden_size={hidden_size}, "
            f"num_heads={num_heads} (DH={head_dim}). Use hidden_size <= {MAX_BLOCK_DH}{heads}, "
            "or parallel_in_time=False")
    if proj_size:
        raise ValueError(f"{kind}: parallel_in_time=True needs proj_size=0; "
                         f"got proj_size={proj_size}")
    return True


def scan_backend(backend: str) -> str:
    """The parallel_rnn scan back end for a module's fused_rnn ``backend``."""
    return backend if backend in ("reference", "triton") else "auto"


def run_direction(module, x, layer, direction, init, lengths, wx=None):
    """``FusedRNNBase._run_direction`` with the recurrence in ``parallel_rnn`` (structure
    "block"). Returns out [B, T, H] and the list of S final states [B, H]."""
    _, w_hh, _, b_hh, _ = module._layer_weights(layer, direction)
    wx = module._input_projection(x, wx, layer, direction)  # [B, T, G*H]
    B, T = wx.shape[:2]
    NH, H = module.num_heads, module.hidden_size
    G, DH = wx.shape[2] // H, H // NH
    if NH == 1:
        r = w_hh.view(G, H, H).transpose(1, 2).unsqueeze(1)  # [G, 1, H, H], r[g,0] = W_g^T
    else:
        r = w_hh  # already [G, NH, DH, DH]
    b = b_hh.view(G, NH, DH) if b_hh is not None else wx.new_zeros(G, NH, DH)
    states = None if init is None else torch.stack([s.reshape(B, NH, DH) for s in init])
    r, b = r.to(wx.dtype), b.to(wx.dtype)
    if states is not None:
        states = states.to(wx.dtype)
    h, last = parallel_rnn(wx.view(B, T, G, NH, DH), r, b, states, cell=module.cell,
                           structure="block", lengths=lengths, backend=scan_backend(module.backend))
    return h.reshape(B, T, H), [s.reshape(B, H) for s in last.unbind(0)]
