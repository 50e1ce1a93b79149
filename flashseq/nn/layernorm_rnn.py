"""LayerNorm LSTM and GRU modules (Ba, Kiros and Hinton 2016, "Layer Normalization",
arXiv:1607.06450), with the recurrent regularisers of ``flashseq.ops.fused_rnn``.

``LayerNormLSTM`` and ``LayerNormGRU`` take torch.nn.LSTM/GRU's arguments and parameters
(``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, ``_reverse`` for the
second direction; same shapes and gate order: LSTM i, f, g, o; GRU r, z, n) and return torch's
shapes, but each step runs the cells ``"layernorm_lstm"`` / ``"layernorm_gru"``:

    LSTM: pre = LN(x W_ih^T + b_ih) + LN(h_prev W_hh^T) + b_hh
          c = sigmoid(f) * c_prev + sigmoid(i) * tanh(g),  h = sigmoid(o) * tanh(LN(c))
    GRU:  a = LN(x W_ih^T + b_ih),  u = LN(h_prev W_hh^T) + b_hh
          r = sigmoid(a_r + u_r),  z = sigmoid(a_z + u_z),  n = tanh(a_n + r * u_n)
          h = (1 - z) * n + z * h_prev

Each gate norm runs over all G * hidden_size pre-activations of a row together, LN(c) over the
hidden_size units; unit gain, zero bias, eps 1e-5 (flashseq/cells/layernorm_lstm.py and
layernorm_gru.py hold the cells and the reasons). ``bias_hh`` is added after the norm, so it is
the bias that acts; ``bias_ih`` enters before the norm, which removes its mean.

Per layer and direction the input projection ``x W_ih^T + b_ih`` is one GEMM over all steps and
the recurrence one ``fused_rnn`` call with ``r[g, 0] = W_hh[g*H:(g+1)*H]^T``.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from flashseq.kernels.fused_rnn import fused_rnn

from . import beyond, checks, sequences
from .errors import RNNInputError, RNNInputTypeError


class _LayerNormRNNBase(nn.Module):
    """What LayerNormLSTM and LayerNormGRU share; not used directly."""

    _cell = ""
    _gates = 0
    _num_states = 1

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 dropconnect=0.0, variational_dropout=0.0, zoneout=(0.0, 0.0), backend="auto"):
        super().__init__()
        kind = type(self).__name__
        if proj_size != 0:
            raise ValueError(f"proj_size is not supported by {kind} (only 0, no projection); "
                             f"got proj_size={proj_size!r}")
        self.input_size = checks.check_int("input_size", input_size, 1)
        self.hidden_size = checks.check_int("hidden_size", hidden_size, 1)
        self.num_layers = checks.check_int("num_layers", num_layers, 1)
        self.bias = checks.check_bool("bias", bias)
        self.batch_first = checks.check_bool("batch_first", batch_first)
        self.dropout = checks.check_dropout(dropout)
        self.bidirectional = checks.check_bool("bidirectional", bidirectional)
        self.backend = checks.check_backend(backend)
        self.dropconnect, self.variational_dropout, self.zoneout = beyond.check_regularisers(
            kind, dropconnect, variational_dropout, zoneout, self._num_states)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout is applied to the output of every layer but the last, so "
                          f"dropout={self.dropout} with num_layers=1 has no effect", stacklevel=3)

        G, H = self._gates, self.hidden_size
        factory = {"device": device, "dtype": dtype}
        self._flat_weights_names: list[str] = []
        for layer in range(self.num_layers):
            layer_in = self.input_size if layer == 0 else H * self.num_directions
            for direction in range(self.num_directions):
                suffix = "_reverse" if direction else ""
                shapes = {f"weight_ih_l{layer}{suffix}": (G * H, layer_in),
                          f"weight_hh_l{layer}{suffix}": (G * H, H)}
                if self.bias:
                    shapes[f"bias_ih_l{layer}{suffix}"] = (G * H,)
                    shapes[f"bias_hh_l{layer}{suffix}"] = (G * H,)
                for name, shape in shapes.items():
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                self._flat_weights_names.extend(shapes)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def cell(self) -> str:
        """The fused_rnn cell this module runs."""
        return self._cell

    def reset_parameters(self) -> None:
        """torch.nn.LSTM/GRU's initialisation: every parameter U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}"]
        defaults = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0,
                    "bidirectional": False, "dropconnect": 0.0, "variational_dropout": 0.0,
                    "zoneout": (0.0, 0.0), "backend": "auto"}
        for name, default in defaults.items():
            value = getattr(self, name)
            if value != default:
                parts.append(f"{name}={value!r}")
        return ", ".join(parts)

    # ------------------------------------------------------------------ forward
    def forward(self, input, hx=None, *, reset=None, generator=None, return_all_states=False):
        """Run the sequence.

        Args:
            input: [T, B, input_size] ([B, T, input_size] with batch_first), unbatched
                [T, input_size], or a PackedSequence (sorted or not) of [N, input_size] rows.
            hx: initial states, each [num_layers * num_directions, B, hidden_size]
                ([num_layers * num_directions, hidden_size] for unbatched input); LayerNormLSTM
                takes a tuple (h0, c0), LayerNormGRU one tensor h0. Default: None, zeros.
            reset (keyword-only): [B, T] bool ([T] unbatched; for a PackedSequence B rows in
                the original order, T its longest length), on the CPU or the input's device,
                or None. ``reset[b, t]`` starts a new sequence at step t of row b: the states
                go back to their initial value before step t (the reverse direction's before
                step t - 1), in every layer. Default: None.
            generator (keyword-only): torch.Generator on the input's device the masks are
                drawn from in training mode, or None (torch's default generator).
            return_all_states (keyword-only): bool; when True also return every step's
                states. Default: False.

        Returns:
            output: [T, B, D * hidden_size] ([B, T, ...] with batch_first, [T, D * hidden_size]
                unbatched, a PackedSequence for packed input), D = 2 if bidirectional else 1:
                the last layer's h at every step.
            final states in hx's layout: (h_n, c_n) for LayerNormLSTM, h_n for LayerNormGRU
                (each row's states after its last step for packed input).
            all_states (only with return_all_states=True): hx's structure ((h_all, c_all) for
                LayerNormLSTM, h_all for LayerNormGRU), each [num_layers * D, T, B,
                hidden_size] ([.., B, T, ..] with batch_first, [.., T, ..] unbatched; for a
                PackedSequence padded to its longest length, rows in its original order): the
                states after the step at each time position of every layer and direction
                (reverse direction: after it processed position t); past a row's length that
                row's final states (flashseq/nn/beyond.py). Differentiable.

        In training mode the dropconnect, variational and zoneout masks are drawn from
        ``generator`` (torch's default one when None: ``torch.manual_seed`` then makes them
        reproducible), one draw per layer and direction in the order layer 0 forward, layer 0
        reverse, layer 1 forward, ...; eval mode applies none of them, nor the inter-layer
        ``dropout``.
        """
        kind = type(self).__name__
        packed = isinstance(input, PackedSequence)
        lengths = row_index = None
        if packed:
            x, lengths, row_index = self._packed_input(input)
            batched = True
        else:
            x, batched = checks.sequence_input(kind, input, self.input_size, self.weight_ih_l0,
                                               self.batch_first)  # [B, T, F]
        B, T = x.shape[:2]
        states = None if hx is None else self._check_hx(hx, B, batched, x)
        reset = beyond.check_reset(kind, reset, B, T, batched, x.device)
        if packed and input.sorted_indices is not None:
            if states is not None:
                states = [s.index_select(1, input.sorted_indices) for s in states]
            if reset is not None:
                reset = reset.index_select(0, input.sorted_indices.to(reset.device))
        regs = beyond.regularisers(self)
        if reset is not None or regs != beyond.OFF:
            beyond.check_generator(kind, generator, x.device)
        all_states = checks.check_bool("return_all_states", return_all_states)
        reverse_index = None
        if self.bidirectional and lengths is not None:
            lengths = lengths.to(x.device)
            reverse_index = sequences.reversal_index(lengths, B, T, x.device)
        kwargs = [beyond.fused_kwargs(regs, reset, generator)]
        if self.bidirectional:
            back = None if reset is None else beyond.reverse_reset(reset, lengths, reverse_index)
            kwargs.append(beyond.fused_kwargs(regs, back, generator))
        if all_states:
            kwargs = [dict(k, return_all_states=True) for k in kwargs]

        finals, every = [], []
        for layer in range(self.num_layers):
            outs = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                init = None if states is None else torch.stack([s[k] for s in states])
                layer_in = sequences.reverse_time(x, reverse_index) if direction else x
                out, last, *steps = self._run_direction(layer_in, layer, direction, init,
                                                        lengths, kwargs[direction])
                outs.append(sequences.reverse_time(out, reverse_index) if direction else out)
                finals.append(last)
                if all_states:
                    every.append(beyond.direction_all_states(steps[0], reverse_index, direction == 1))
            x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
            if self.training and self.dropout > 0 and layer + 1 < self.num_layers:
                x = F.dropout(x, self.dropout, training=True)
        finals = [torch.stack(per_state) for per_state in zip(*finals)]  # S x [L*D, B, H]
        extra = ()
        if all_states:
            extra = (self._join_hx(beyond.all_states_layout(
                every, self.batch_first, batched, input.unsorted_indices if packed else None)),)
        if packed:
            if input.unsorted_indices is not None:
                finals = [s.index_select(1, input.unsorted_indices) for s in finals]
            data = sequences.padded_to_packed(x, row_index)
            return (sequences.repack(data, input), self._join_hx(finals)) + extra
        out = x if self.batch_first else x.transpose(0, 1)
        if not batched:
            out = out.squeeze(0 if self.batch_first else 1)
            finals = [s.squeeze(1) for s in finals]
        return (out.contiguous(), self._join_hx(finals)) + extra

    def _packed_input(self, input: PackedSequence):
        """A PackedSequence's rows checked and padded: (x [B, T, F] in sorted row order,
        lengths [B] int64 on the CPU, row index for ``sequences.padded_to_packed``)."""
        kind = type(self).__name__
        data, weight = input.data, self.weight_ih_l0
        if data.dim() != 2 or data.shape[-1] != self.input_size:
            raise RNNInputError(f"{kind}: PackedSequence.data must be [N, input_size] with "
                                f"input_size={self.input_size}; got {checks.describe(data)}")
        if data.dtype != weight.dtype or data.device != weight.device:
            raise RNNInputError(f"{kind}: PackedSequence.data must have the parameters' dtype "
                                f"{weight.dtype} and device {weight.device}; got "
                                f"{checks.describe(data)}")
        return sequences.packed_to_padded(data, input.batch_sizes)

    def _run_direction(self, x, layer, direction, init, lengths=None, extras=None):
        """x [B, T, F] (time-reversed for direction 1), init [S, B, H] or None, lengths [B] or
        None, extras: fused_rnn's keyword arguments beyond torch.nn (``beyond.fused_kwargs``).
        Returns out [B, T, H], the list of S final states [B, H] and, when extras holds
        ``return_all_states=True``, fused_rnn's all_states [T, S, B, 1, H] third."""
        suffix = "_reverse" if direction else ""
        w_ih = getattr(self, f"weight_ih_l{layer}{suffix}")
        w_hh = getattr(self, f"weight_hh_l{layer}{suffix}")
        b_ih = getattr(self, f"bias_ih_l{layer}{suffix}", None)
        b_hh = getattr(self, f"bias_hh_l{layer}{suffix}", None)
        G, H = self._gates, self.hidden_size
        B, T = x.shape[:2]
        wx = F.linear(x, w_ih, b_ih).view(B, T, G, 1, H)
        r = w_hh.view(G, H, H).transpose(1, 2).unsqueeze(1)  # [G, 1, H, H], r[g, 0] = W_g^T
        b = b_hh.view(G, 1, H) if b_hh is not None else wx.new_zeros(G, 1, H)
        states = None if init is None else init.view(self._num_states, B, 1, H)
        h, last, *every = fused_rnn(wx, r, b, states, cell=self._cell, lengths=lengths,
                                    backend=self.backend, **(extras or {}))
        return (h.reshape(B, T, H), [s.reshape(B, H) for s in last.unbind(0)], *every)

    def _check_hx(self, hx, B, batched, x) -> list:
        kind = type(self).__name__
        states = self._split_hx(hx)
        LD = self.num_layers * self.num_directions
        expected = (LD, B, self.hidden_size) if batched else (LD, self.hidden_size)
        for i, name in enumerate(self._hx_names()):
            s = states[i]
            if not isinstance(s, torch.Tensor):
                raise RNNInputTypeError(f"{kind}: {name} must be a torch.Tensor; got "
                                        f"{type(s).__name__}")
            if tuple(s.shape) != expected:
                raise RNNInputError(f"{kind}: {name} must have shape [num_layers * num_directions"
                                    f"{', B' if batched else ''}, hidden_size] = {expected}; got "
                                    f"{checks.describe(s)}")
            if s.dtype != x.dtype or s.device != x.device:
                raise RNNInputError(f"{kind}: {name} must have the input's dtype {x.dtype} and "
                                    f"device {x.device}; got {checks.describe(s)}")
            states[i] = s if batched else s.unsqueeze(1)
        return states


class LayerNormLSTM(_LayerNormRNNBase):
    """LayerNorm LSTM (Ba, Kiros and Hinton 2016) with torch.nn.LSTM's arguments and shapes.

    ``LayerNormLSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, *, dropconnect=0.0, variational_dropout=0.0,
    zoneout=(0.0, 0.0), backend="auto")``; ``proj_size`` other than 0 is a ValueError.

    Each step: ``pre = LN(x W_ih^T + b_ih) + LN(h_prev W_hh^T) + b_hh`` (each LN over the
    4 * hidden_size gate pre-activations of a row), ``c = sigmoid(f) c_prev + sigmoid(i) tanh(g)``,
    ``h = sigmoid(o) tanh(LN(c))`` (LN over hidden_size); unit gain, zero bias, eps 1e-5.

    ``dropconnect`` (one mask on W_hh per sequence), ``variational_dropout`` (one mask per row on
    h_{t-1} entering the recurrence) and ``zoneout=(p_h, p_c)`` (per step and unit, keep the
    previous h / c) act in training mode only; semantics as ``flashseq.ops.fused_rnn``.

    forward(input, hx=None, *, reset=None, generator=None, return_all_states=False) ->
    (output, (h_n, c_n)) (and ``(h_all, c_all)`` third with return_all_states=True): input
    [T, B, input_size] ([B, T, ...] with batch_first, unbatched [T, input_size], or a
    PackedSequence); h0, c0, h_n, c_n [num_layers * D, B, hidden_size] (no B axis unbatched);
    output [T, B, D * hidden_size] (a PackedSequence for packed input), D = 2 if bidirectional
    else 1; ``reset`` [B, T] bool starts new sequences, ``generator`` draws the masks (see
    ``forward``).
    """

    _cell = "layernorm_lstm"
    _gates = 4
    _num_states = 2

    def _split_hx(self, hx) -> list:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise RNNInputTypeError("LayerNormLSTM: hx must be a tuple (h0, c0); got "
                                    f"{type(hx).__name__}")
        return list(hx)

    def _join_hx(self, states):
        return states[0], states[1]

    def _hx_names(self):
        return ["h0", "c0"]


class LayerNormGRU(_LayerNormRNNBase):
    """LayerNorm GRU, the norm placed as in Ba, Kiros and Hinton 2016's LayerNorm LSTM, with
    torch.nn.GRU's arguments and shapes.

    ``LayerNormGRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, *, dropconnect=0.0, variational_dropout=0.0,
    zoneout=(0.0, 0.0), backend="auto")``; ``proj_size`` other than 0 is a ValueError, and
    zoneout's p_c must be 0 (a GRU has no cell state).

    Each step: ``a = LN(x W_ih^T + b_ih)``, ``u = LN(h_prev W_hh^T) + b_hh`` (each LN over the
    3 * hidden_size gate pre-activations of a row), ``r = sigmoid(a_r + u_r)``,
    ``z = sigmoid(a_z + u_z)``, ``n = tanh(a_n + r * u_n)``, ``h = (1 - z) n + z h_prev``;
    unit gain, zero bias, eps 1e-5. The regularisers act in training mode only.

    forward(input, hx=None, *, reset=None, generator=None, return_all_states=False) ->
    (output, h_n) (and ``h_all`` third with return_all_states=True): input
    [T, B, input_size] ([B, T, ...] with batch_first, unbatched [T, input_size], or a
    PackedSequence); h0, h_n [num_layers * D, B, hidden_size] (no B axis unbatched); output
    [T, B, D * hidden_size] (a PackedSequence for packed input), D = 2 if bidirectional else 1;
    ``reset`` and ``generator`` as LayerNormLSTM's.
    """

    _cell = "layernorm_gru"
    _gates = 3
    _num_states = 1

    def _split_hx(self, hx) -> list:
        return [hx]

    def _join_hx(self, states):
        return states[0]

    def _hx_names(self):
        return ["hx"]
