"""flashseq.LSTM: torch.nn.LSTM's twin, plus a head-wise (block-diagonal) variant."""
from __future__ import annotations

from torch import nn

from . import parallel_in_time as pit
from . import stepped
from .errors import RNNInputTypeError
from .rnn_base import FusedRNNBase


class LSTM(FusedRNNBase, nn.LSTM):
    """Drop-in replacement for ``torch.nn.LSTM`` whose recurrence runs in ``fused_rnn``.

    A subclass of ``torch.nn.LSTM`` (isinstance checks and torch's attributes hold).

    Args (positional order as torch.nn.LSTM): input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None;
    keyword-only:

        backend: fused_rnn back end, "auto" | "reference" | "cpu" | "triton" | "cuda".
            Default: "auto".
        num_heads: NH, a divisor of hidden_size. Default: 1, exactly torch.nn.LSTM (parameters,
            state_dict and results). With NH > 1 the recurrence is block-diagonal: hidden unit
            block n (DH = hidden_size / NH units) only sees block n of h_prev, and
            ``weight_hh_l{k}`` has shape [4, NH, DH, DH] in fused_rnn's ``r`` layout (gate g of
            head n gets ``h_prev[:, n] @ weight_hh[g, n]``), gates in torch's order i, f, g, o.
            The other parameters keep torch's names and shapes, so such a state_dict is NOT
            loadable into torch.nn.LSTM (torch has no head-wise LSTM). Needs proj_size=0.
            Code that walks ``isinstance(m, nn.LSTM)`` modules sees this 4-D ``weight_hh``, and
            ONNX export / ``torch.jit.trace`` need num_heads=1 (they run torch's forward).
        parallel_in_time: run each layer's recurrence with ``flashseq.ops.parallel_rnn``
            (Newton iterations over the whole sequence, each a parallel scan) instead of step
            by step; same parameters and results. Needs structured recurrent weights, head-wise
            blocks of DH = hidden_size / num_heads <= 16 units, and proj_size=0 (ValueError
            otherwise). Default: False.

        dropconnect, variational_dropout, zoneout: recurrent regularisers applied in training
            mode only (eval applies none): dropconnect p, one Bernoulli mask on the recurrent
            weights per sequence; variational_dropout p, one mask per row on h_{t-1} where it
            enters the recurrence; zoneout (p_h, p_c), per step and unit keep the previous h / c.
            Semantics as ``flashseq.ops.fused_rnn``; masks drawn from forward's ``generator``.
            Need the fused recurrence (not proj_size > 0 nor parallel_in_time; ValueError).
            Defaults 0.0, 0.0, (0.0, 0.0): none, exactly torch.nn.LSTM.

    forward(input, hx=None, *, reset=None, generator=None, return_all_states=False): torch's
    two arguments, plus ``reset`` [B, T] bool (a new sequence starts where True), the
    ``generator`` of the masks and ``return_all_states`` (True: a third result ``(h_all, c_all)``,
    every step's states of every layer and direction, each [num_layers * D, T, B, H]; needs
    proj_size=0 and parallel_in_time=False); see ``FusedRNNBase.forward``.

    Parameters are initialised U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) as torch's.
    ``proj_size > 0`` has no fused cell (the projected h feeds back): it runs a per-step PyTorch
    loop and warns once per module.

    Shapes of forward's inputs and outputs: see ``FusedRNNBase.forward`` (torch's).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 backend="auto", num_heads=1, parallel_in_time=False, dropconnect=0.0,
                 variational_dropout=0.0, zoneout=(0.0, 0.0)):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, backend=backend, num_heads=num_heads,
                         dropconnect=dropconnect, variational_dropout=variational_dropout,
                         zoneout=zoneout)
        self.parallel_in_time = pit.check_parallel_in_time(
            "LSTM", parallel_in_time, self.hidden_size, self.num_heads, self.proj_size)
        self._check_regularisers_servable()

    def _state_sizes(self):
        return [self.proj_size or self.hidden_size, self.hidden_size]

    def _hx_names(self):
        return ["hx[0] (h0)", "hx[1] (c0)"]

    def _split_hx(self, hx):
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            length = f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else ""
            raise RNNInputTypeError("LSTM: hx must be a tuple (h0, c0) of two tensors; got "
                                    f"{type(hx).__name__}{length}")
        return list(hx)

    def _join_hx(self, states):
        return tuple(states)

    def _run_direction(self, x, layer, direction, init, lengths, wx=None, extras=None):
        if getattr(self, "parallel_in_time", False):  # absent in modules pickled before it
            return pit.run_direction(self, x, layer, direction, init, lengths, wx)
        if not self.proj_size:
            return super()._run_direction(x, layer, direction, init, lengths, wx, extras)
        self._warn_not_fused("LSTM with proj_size > 0")
        _, w_hh, _, b_hh, w_hr = self._layer_weights(layer, direction)
        wx = self._input_projection(x, wx, layer, direction)  # [B, T, 4H]
        B = wx.shape[0]
        h0, c0 = init if init is not None else (wx.new_zeros(B, self.proj_size),
                                                 wx.new_zeros(B, self.hidden_size))
        out, (h, c) = stepped.projected_lstm(wx, w_hh, b_hh, w_hr, h0, c0, lengths)
        return out, [h, c]
