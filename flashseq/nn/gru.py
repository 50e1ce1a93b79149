"""flashseq.GRU: torch.nn.GRU's twin."""
from __future__ import annotations

from torch import nn

from . import parallel_in_time as pit
from .rnn_base import FusedRNNBase, reject_proj_size


class GRU(FusedRNNBase, nn.GRU):
    """Drop-in replacement for ``torch.nn.GRU`` whose recurrence runs in ``fused_rnn``; a
    subclass of ``torch.nn.GRU`` (isinstance checks and torch's attributes hold).

    Args (positional order as torch.nn.GRU): input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None; keyword-only
    ``backend`` ("auto" | "reference" | "cpu" | "triton" | "cuda", Default: "auto").
    ``proj_size`` raises ValueError, as in torch (only LSTM has projections). Keyword-only
    ``parallel_in_time`` (Default: False): the recurrence runs in ``flashseq.ops.parallel_rnn``
    (Newton iterations + parallel scan), same results; needs hidden_size <= 16 (the recurrent
    matrix is one dense block), ValueError otherwise.

    Same parameters (gates r, z, n), state_dict, initialisation and results as torch.nn.GRU;
    ``bias_hh`` is the recurrent bias b of fused_rnn's "gru" cell, so it sits inside
    ``r * (h @ W_hn^T + b_hn)`` exactly as in torch. Forward: see ``FusedRNNBase.forward``.

    Keyword-only ``dropconnect=0.0``, ``variational_dropout=0.0``, ``zoneout=(0.0, 0.0)`` (p_c
    must be 0: no cell state): the recurrent regularisers of ``flashseq.LSTM``, training mode
    only; forward's keyword-only ``reset``, ``generator`` and ``return_all_states`` as there
    (True: a third result h_all [num_layers * D, T, B, H], every step's h of every layer and
    direction; needs the fused recurrence, ValueError otherwise).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend="auto",
                 parallel_in_time=False, dropconnect=0.0, variational_dropout=0.0,
                 zoneout=(0.0, 0.0), **unknown):
        reject_proj_size("GRU", unknown)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend=backend, dropconnect=dropconnect,
                         variational_dropout=variational_dropout, zoneout=zoneout)
        self.parallel_in_time = pit.check_parallel_in_time(
            "GRU", parallel_in_time, self.hidden_size, self.num_heads, 0)
        self._check_regularisers_servable()

    def _run_direction(self, x, layer, direction, init, lengths, wx=None, extras=None):
        if getattr(self, "parallel_in_time", False):  # absent in modules pickled before it
            return pit.run_direction(self, x, layer, direction, init, lengths, wx)
        return super()._run_direction(x, layer, direction, init, lengths, wx, extras)
