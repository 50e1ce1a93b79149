"""flashseq.RNN: torch.nn.RNN's twin (Elman network, tanh or relu)."""
from __future__ import annotations

from torch import nn

from . import parallel_in_time as pit
from . import stepped
from .rnn_base import FusedRNNBase, reject_proj_size

NONLINEARITIES = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}


class RNN(FusedRNNBase, nn.RNN):
    """Drop-in replacement for ``torch.nn.RNN``; a subclass of it (isinstance checks and torch's
    attributes hold).

    Args (positional order as torch.nn.RNN, nonlinearity fourth): input_size, hidden_size,
    num_layers=1, nonlinearity="tanh", bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None; keyword-only ``backend`` (Default: "auto").
    ``proj_size`` raises ValueError, as in torch (only LSTM has projections).

    ``nonlinearity="tanh"`` runs fused_rnn's "elman" cell. ``"relu"`` has no fused cell: it runs
    a per-step PyTorch loop (same results) and warns once per module.
    Keyword-only ``parallel_in_time`` (Default: False): the recurrence runs in
    ``flashseq.ops.parallel_rnn`` (Newton iterations + parallel scan), same results; needs
    nonlinearity="tanh" and hidden_size <= 16 (one dense block), ValueError otherwise.
    Forward: see ``FusedRNNBase.forward``.

    Keyword-only ``dropconnect=0.0``, ``variational_dropout=0.0``, ``zoneout=(0.0, 0.0)`` (p_c
    must be 0: no cell state): the recurrent regularisers of ``flashseq.LSTM``, training mode
    only; forward's keyword-only ``reset``, ``generator`` and ``return_all_states`` as there
    (True: a third result h_all [num_layers * D, T, B, H], every step's h of every layer and
    direction; needs the fused recurrence, ValueError otherwise).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *,
                 backend="auto", parallel_in_time=False, dropconnect=0.0, variational_dropout=0.0,
                 zoneout=(0.0, 0.0), **unknown):
        reject_proj_size("RNN", unknown)
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu'; got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(NONLINEARITIES[nonlinearity], input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, 0, device, dtype, backend=backend,
                         dropconnect=dropconnect, variational_dropout=variational_dropout,
                         zoneout=zoneout)
        if parallel_in_time is True and nonlinearity != "tanh":
            raise ValueError("RNN: parallel_in_time=True needs nonlinearity='tanh' (the relu "
                             f"cell has no analytic Jacobian); got nonlinearity={nonlinearity!r}")
        self.parallel_in_time = pit.check_parallel_in_time(
            "RNN", parallel_in_time, self.hidden_size, self.num_heads, 0)
        self._check_regularisers_servable()

    def _run_direction(self, x, layer, direction, init, lengths, wx=None, extras=None):
        if getattr(self, "parallel_in_time", False):  # absent in modules pickled before it
            return pit.run_direction(self, x, layer, direction, init, lengths, wx)
        if self.nonlinearity == "tanh":
            return super()._run_direction(x, layer, direction, init, lengths, wx, extras)
        self._warn_not_fused("RNN with nonlinearity='relu'")
        _, w_hh, _, b_hh, _ = self._layer_weights(layer, direction)
        wx = self._input_projection(x, wx, layer, direction)  # [B, T, H]
        h0 = init[0] if init is not None else wx.new_zeros(wx.shape[0], self.hidden_size)
        out, h = stepped.relu_rnn(wx, w_hh, b_hh, h0, lengths)
        return out, [h]
