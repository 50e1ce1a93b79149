"""flashseq.GRU: torch.nn.GRU's twin."""
from __future__ import annotations

from .rnn_base import FusedRNNBase


class GRU(FusedRNNBase):
    """Drop-in replacement for ``torch.nn.GRU`` whose recurrence runs in ``fused_rnn``.

    Args (positional order as torch.nn.GRU): input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None; keyword-only
    ``backend`` ("auto" | "reference" | "cpu" | "triton" | "cuda", Default: "auto").

    Same parameters (gates r, z, n), state_dict, initialisation and results as torch.nn.GRU;
    ``bias_hh`` is the recurrent bias b of fused_rnn's "gru" cell, so it sits inside
    ``r * (h @ W_hn^T + b_hn)`` exactly as in torch. Forward: see ``FusedRNNBase.forward``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend="auto"):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend=backend)
