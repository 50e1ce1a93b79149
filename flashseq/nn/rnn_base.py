"""What flashseq.LSTM, GRU and RNN share: torch's parameters, argument checks and forward plumbing.

The parameters are created under torch.nn.RNNBase's names, shapes and order (``weight_ih_l{k}``,
``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, ``weight_hr_l{k}``, each direction's
followed by ``_reverse`` for the second one), so a state_dict loads either way with strict=True.

Forward of one layer and direction:

1. ``wx = x @ weight_ih.T + bias_ih`` for all time steps at once (one GEMM);
2. the recurrence through ``flashseq.ops.fused_rnn`` with ``r[g, 0] = weight_hh[g*H:(g+1)*H].T``
   and ``b = bias_hh`` viewed [G, 1, H] (views of the Parameters, so autograd reaches them);
3. the reverse direction runs the same kernel on each row's valid steps reversed by an index
   gather, and its output is gathered back.

A plain eager CPU call (no PackedSequence, no options beyond torch.nn, ...) takes the shorter
route of fast_path.py to the same kernels, skipping the general checks and dispatch of
``fused_rnn``; everything below describes the general path.

Internally every sequence is batch-major [B, T, F]; ragged batches (PackedSequence) are padded
once and described by ``lengths``, which fused_rnn honours, so no Python loop runs over rows.
Each layer's input projection then runs on the N live rows only (gathered by flat row index),
and the recurrence skips finished rows (the rows are in the packed, length-sorted order).

The modules subclass torch's (``flashseq.LSTM`` is a ``torch.nn.LSTM``, and every one is a
``torch.nn.RNNBase``), so torch's attributes and bookkeeping exist and stay current:
``_flat_weights`` / ``_flat_weights_names`` / ``_all_weights`` are kept by RNNBase's
``__setattr__``, ``_apply`` (``.to()``, ``.double()``), ``__getstate__``/``__setstate__``
(deepcopy, pickle) and ``_replicate_for_data_parallel``. Only ``__init__`` (flashseq's argument
checks, the head-wise ``weight_hh``), ``forward``, ``flatten_parameters``, ``extra_repr`` and
``__setstate__`` (which also loads modules pickled before the subclassing) are flashseq's own.

While ``torch.jit.trace`` or an ONNX export traces the module, a module with ``num_heads == 1``
runs torch.nn's own forward instead (same parameters, same results): it lowers to ``aten::lstm``
/ ``gru`` / ``rnn_*``, ops every exporter translates, where the fused kernels are opaque custom
ops. ``torch.export`` keeps the fused path (the ``flashseq::`` custom ops). ``torch.compile``
does too, but by torch's own rule dynamo does not trace into any torch.nn.RNN/GRU/LSTM instance
(these are ones): with the default config the module runs eagerly between compiled graphs, and
``torch._dynamo.config.allow_rnn = True`` lets dynamo trace it into the graph (fullgraph works).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from flashseq.kernels.fused_rnn import fused_rnn
from flashseq.kernels.fused_rnn import cpu_linear

from . import beyond, checks, fast_path, sequences
from .errors import RNNInputError, RNNInputTypeError

# mode -> (fused_rnn cell or None when no fused cell exists, gate count)
MODES = {"LSTM": ("lstm", 4), "GRU": ("gru", 3), "RNN_TANH": ("elman", 1), "RNN_RELU": (None, 1)}


def _exporting() -> bool:
    """Whether a tracer that cannot translate the fused custom ops is running: torch.jit.trace
    (also under the TorchScript ONNX exporter) or the dynamo ONNX exporter (which traces through
    torch.export, hence the cheap ``is_compiling`` test first: ``is_in_onnx_export`` costs a few
    microseconds per call)."""
    if torch.jit.is_tracing():
        return True
    return torch.compiler.is_compiling() and torch.onnx.is_in_onnx_export()


class FusedRNNBase(nn.RNNBase):
    """Base of the torch-compatible modules; see the module docstring. Not used directly.

    Each public class lists it before its torch class (``class LSTM(FusedRNNBase, nn.LSTM)``),
    so ``super().forward`` here is torch's forward of that class.
    """

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 backend="auto", num_heads=1, dropconnect=0.0, variational_dropout=0.0,
                 zoneout=(0.0, 0.0)):
        # Not RNNBase.__init__: its checks have other messages and it cannot make the head-wise
        # weight_hh. What it would set up is set up here, under the same names.
        nn.Module.__init__(self)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}; got {mode!r}")
        self.mode = mode
        self.input_size = checks.check_int("input_size", input_size, 1)
        self.hidden_size = checks.check_int("hidden_size", hidden_size, 1)
        self.num_layers = checks.check_int("num_layers", num_layers, 1)
        self.bias = checks.check_bool("bias", bias)
        self.batch_first = checks.check_bool("batch_first", batch_first)
        self.dropout = checks.check_dropout(dropout)
        self.bidirectional = checks.check_bool("bidirectional", bidirectional)
        self.proj_size = checks.check_int("proj_size", proj_size, 0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size ({self.hidden_size}), or 0 "
                             f"for no projection; got proj_size={self.proj_size}")
        self.backend = checks.check_backend(backend)
        self.num_heads = checks.check_heads(self.hidden_size, num_heads)
        self.dropconnect, self.variational_dropout, self.zoneout = beyond.check_regularisers(
            type(self).__name__, dropconnect, variational_dropout, zoneout,
            2 if mode == "LSTM" else 1)
        if self.num_heads > 1 and self.proj_size:
            raise ValueError(f"proj_size > 0 needs num_heads=1; got proj_size={self.proj_size}, "
                             f"num_heads={self.num_heads}")
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout is applied to the output of every layer but the last, so "
                          f"dropout={self.dropout} with num_layers=1 has no effect", stacklevel=3)
        self._warned_not_fused = False

        cell, gates = MODES[mode]
        H, NH = self.hidden_size, self.num_heads
        out_size = self.proj_size or H
        factory = {"device": device, "dtype": dtype}
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                suffix = "_reverse" if direction else ""
                layer_in = self.input_size if layer == 0 else out_size * self.num_directions
                hh_shape = (gates * H, out_size) if NH == 1 else (gates, NH, H // NH, H // NH)
                params = {f"weight_ih_l{layer}{suffix}": (gates * H, layer_in),
                          f"weight_hh_l{layer}{suffix}": hh_shape}
                if self.bias:
                    params[f"bias_ih_l{layer}{suffix}"] = (gates * H,)
                    params[f"bias_hh_l{layer}{suffix}"] = (gates * H,)
                if self.proj_size:
                    params[f"weight_hr_l{layer}{suffix}"] = (self.proj_size, H)
                for name, shape in params.items():
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                self._flat_weights_names.extend(params)
                self._all_weights.append(list(params))
        self._init_flat_weights()  # RNNBase's _flat_weights and _flat_weight_refs
        self.reset_parameters()  # RNNBase's: U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))

    # ------------------------------------------------------------------ torch.nn.RNNBase surface
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def cell(self) -> str | None:
        """The fused_rnn cell this module runs, or None when it runs the stepped fallback."""
        return MODES[self.mode][0]

    def __setstate__(self, state):
        # Modules pickled before flashseq's classes subclassed torch's have no _flat_weights list
        # in their state; RNNBase.__setstate__ needs it.
        if "_flat_weights" not in state:
            state["_flat_weights"] = [state["_parameters"].get(name)
                                      for name in state["_flat_weights_names"]]
        super().__setstate__(state)

    def flatten_parameters(self) -> None:
        """Accepted for compatibility and does nothing: the kernels read the Parameters as they
        are (there is no cuDNN weight buffer to compact)."""

    def extra_repr(self) -> str:
        """torch's ``extra_repr``, then ``num_heads``, the regularisers and ``backend`` when not
        the defaults."""
        parts = [super().extra_repr()]
        if self.num_heads != 1:
            parts.append(f"num_heads={self.num_heads}")
        parts += beyond.regularisers_repr(self)
        if self.backend != "auto":
            parts.append(f"backend={self.backend!r}")
        return ", ".join(parts)

    # ------------------------------------------------------------------ states (hx) layout
    def _state_sizes(self) -> list[int]:
        """Feature size of each state tensor of hx, in order (LSTM: h then c)."""
        return [self.proj_size or self.hidden_size]

    def _split_hx(self, hx) -> list:
        """hx as the list of its state tensors (GRU/RNN: one tensor)."""
        return [hx]

    def _join_hx(self, states: list):
        return states[0]

    def _hx_names(self) -> list[str]:
        return ["hx"]

    # ------------------------------------------------------------------ forward
    def forward(self, input, hx=None, *, reset=None, generator=None, return_all_states=False):
        """Run the recurrence; same inputs and outputs as the torch twin.

        Args:
            input: [T, B, input_size] ([B, T, input_size] with batch_first), unbatched
                [T, input_size], or a PackedSequence (sorted or not).
            hx: initial states, [num_layers * num_directions, B, size] each ([.., size] without
                the B axis for unbatched input); LSTM takes a tuple (h0, c0), h0 of size
                proj_size or hidden_size, c0 of size hidden_size. Default: None, zeros.
            reset (keyword-only): [B, T] bool ([T] for unbatched input; batch-first or not,
                and for a PackedSequence B rows in the original order, T its longest length),
                on the CPU or the input's device, or None. ``reset[b, t]`` starts a new
                sequence at step t of row b: every layer's states go back to their initial
                value (``hx``, else zeros) before step t, and the reverse direction's before
                step t - 1, so the result equals separate calls on the pieces. Default: None.
            generator (keyword-only): torch.Generator on the input's device the dropconnect,
                variational and zoneout masks are drawn from (training mode), or None for
                torch's default generator. Default: None.
            return_all_states (keyword-only): bool. When True also return every step's states
                (layout in flashseq/nn/beyond.py); needs the fused recurrence (not proj_size > 0,
                nonlinearity='relu' nor parallel_in_time; ValueError). Default: False.

        Returns:
            output: [T, B, D * out] ([B, T, ...] with batch_first; a PackedSequence for packed
                input), out = proj_size or hidden_size, D = 2 if bidirectional else 1.
            final states: same layout as hx (LSTM: a tuple (h_n, c_n)).
            all_states (only with return_all_states=True): hx's structure (LSTM: a tuple
                (h_all, c_all)), each [L * D, T, B, H] ([L * D, B, T, H] with batch_first,
                [L * D, T, H] unbatched; for a PackedSequence padded to its longest length,
                rows in its original order): the states after the step at each time position,
                of every layer and direction (reverse direction: after it processed position
                t); past a row's length that row's final states. Differentiable.

        Under ``torch.jit.trace`` or ONNX export a module with num_heads=1 runs torch.nn's forward
        (see the module docstring); there ``reset``, ``return_all_states=True`` and the
        regularisers in training mode raise ValueError (a trace would keep one draw of the masks
        as constants; torch.nn's forward has no per-step states).
        """
        fast = fast_path.run(self, input, hx, reset, generator, return_all_states)
        if fast is not None:  # a plain eager CPU call (fast_path.py), already computed
            return fast
        regs = beyond.regularisers(self)
        extras_used = reset is not None or regs != beyond.OFF
        all_states = checks.check_bool("return_all_states", return_all_states)
        if self.num_heads == 1 and _exporting():
            if extras_used:
                raise ValueError(f"{type(self).__name__}: reset and the dropconnect / "
                                 "variational_dropout / zoneout masks cannot be traced or "
                                 "exported; call .eval() and pass reset=None")
            if all_states:
                raise ValueError(f"{type(self).__name__}: return_all_states=True cannot be "
                                 "traced or exported (the trace runs torch.nn's forward, which "
                                 "returns no per-step states); pass return_all_states=False")
            return super().forward(input, hx)
        if extras_used:
            self._check_extras_servable()
            beyond.check_generator(type(self).__name__, generator, self.weight_ih_l0.device)
        if all_states:
            reason = self._not_fused_reason()
            if reason:
                raise ValueError(f"{type(self).__name__}: return_all_states=True needs the "
                                 f"fused_rnn recurrence; this module runs {reason}")
        packed = isinstance(input, PackedSequence)
        weight = self.weight_ih_l0
        if packed:
            self._check_input(input.data, 2, "PackedSequence.data [N, input_size]", weight)
            x, lengths, row_index = sequences.packed_to_padded(input.data, input.batch_sizes)
            batched = True
        else:
            self._check_input(input, None, "input [T, B, input_size] or [T, input_size]", weight)
            batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            x = input if batched else input.unsqueeze(batch_dim)
            x = x if self.batch_first else x.transpose(0, 1)  # [B, T, F]
            lengths = None
        B, T = x.shape[:2]
        if T == 0:
            raise RNNInputError(f"input must have at least one time step; got {checks.describe(input)}")
        states = None
        if hx is not None:
            states = self._check_hx(hx, B, batched, x)
            if packed and input.sorted_indices is not None:
                states = [s.index_select(1, input.sorted_indices) for s in states]
        reset = beyond.check_reset(type(self).__name__, reset, B, T, batched, x.device)
        if reset is not None and packed and input.sorted_indices is not None:
            reset = reset.index_select(0, input.sorted_indices.to(reset.device))
        extras = (regs, reset, generator) if extras_used else None

        # Packed input: every layer projects only the N packed rows (not B*T padded positions).
        out, finals, every = self._run_layers(
            x, states, lengths, (input.data, row_index) if packed else None, extras, all_states)
        if all_states:
            every = self._join_hx(beyond.all_states_layout(
                every, self.batch_first, batched, input.unsorted_indices if packed else None))

        if packed:
            if input.unsorted_indices is not None:
                finals = [s.index_select(1, input.unsorted_indices) for s in finals]
            output = sequences.repack(sequences.padded_to_packed(out, row_index), input)
            return (output, self._join_hx(finals)) + ((every,) if all_states else ())
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(batch_dim)
            finals = [s.squeeze(1) for s in finals]
        return (out.contiguous(), self._join_hx(finals)) + ((every,) if all_states else ())

    def _check_input(self, x, ndim, doc, weight):
        if not isinstance(x, torch.Tensor):
            raise RNNInputTypeError(f"{type(self).__name__}: input must be a torch.Tensor or a "
                                    f"PackedSequence; got {type(x).__name__}")
        if x.layout != torch.strided:  # sparse / mkldnn: the kernels and views need dense memory
            raise RNNInputTypeError(f"{type(self).__name__}: input must be a dense tensor "
                                    f"(layout torch.strided); got layout {x.layout}, "
                                    f"{checks.describe(x)}")
        if (ndim is not None and x.dim() != ndim) or (ndim is None and x.dim() not in (2, 3)):
            raise RNNInputError(f"{type(self).__name__}: {doc} expected; got {checks.describe(x)}")
        if x.shape[-1] != self.input_size:
            raise RNNInputError(f"{type(self).__name__}: input.size(-1) must equal input_size="
                                f"{self.input_size}; got {checks.describe(x)}")
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise RNNInputError(f"{type(self).__name__}: input dtype must match the parameters' dtype "
                                f"{weight.dtype} (convert the input or the module with .to()); "
                                f"got {checks.describe(x)}")
        if x.device != weight.device:
            raise RNNInputError(f"{type(self).__name__}: input must be on the parameters' device "
                                f"{weight.device}; got {checks.describe(x)}")

    def _check_hx(self, hx, B, batched, x) -> list:
        states = self._split_hx(hx)
        LD = self.num_layers * self.num_directions
        for i, (name, size) in enumerate(zip(self._hx_names(), self._state_sizes())):
            s = states[i]
            if not isinstance(s, torch.Tensor):
                raise RNNInputTypeError(f"{type(self).__name__}: {name} must be a torch.Tensor; "
                                        f"got {type(s).__name__}")
            if s.layout != torch.strided:
                raise RNNInputTypeError(f"{type(self).__name__}: {name} must be a dense tensor "
                                        f"(layout torch.strided); got layout {s.layout}, "
                                        f"{checks.describe(s)}")
            expected = (LD, B, size) if batched else (LD, size)
            doc = "[num_layers * num_directions, B, size]" if batched else \
                "[num_layers * num_directions, size] (unbatched input)"
            if tuple(s.shape) != expected:
                raise RNNInputError(f"{type(self).__name__}: {name} must have shape {doc} = "
                                    f"{expected}; got {checks.describe(s)}")
            autocast = torch.is_autocast_enabled(x.device.type)  # states follow wx's dtype then
            if (s.dtype != x.dtype and not autocast) or s.device != x.device:
                raise RNNInputError(f"{type(self).__name__}: {name} must have the input's dtype "
                                    f"{x.dtype} and device {x.device}; got {checks.describe(s)}")
            states[i] = s if batched else s.unsqueeze(1)
        return states

    def _layer_weights(self, layer: int, direction: int):
        suffix = "_reverse" if direction else ""
        get = lambda name: getattr(self, f"{name}_l{layer}{suffix}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr")

    def _run_layers(self, x, states, lengths, packed_rows=None, extras=None, all_states=False):
        """x [B, T, F]; states: list of S tensors [L*D, B, size] or None; lengths [B] or None;
        packed_rows: (PackedSequence.data [N, F], its row index from packed_to_padded) or None;
        extras: None, or (regularisers, reset [B, T] or None, generator) of beyond.py;
        all_states: whether to collect every step's states.
        Returns output [B, T, D*out], the list of S final-state tensors [L*D, B, size] and, with
        all_states, the list of [S, B, T, H] per layer and direction
        (``beyond.direction_all_states``), else None."""
        B, T = x.shape[:2]
        if B == 0:  # fused_rnn needs B >= 1
            return self._empty_batch(x, states, all_states)
        if lengths is not None:
            lengths = lengths.to(x.device)
        reverse_index = sequences.reversal_index(lengths, B, T, x.device) if self.bidirectional else None
        kwargs = [{}, {}]  # fused_rnn keyword arguments of each direction
        if extras is not None:
            regs, reset, generator = extras
            kwargs[0] = beyond.fused_kwargs(regs, reset, generator)
            if self.bidirectional:
                back = None if reset is None else beyond.reverse_reset(reset, lengths, reverse_index)
                kwargs[1] = beyond.fused_kwargs(regs, back, generator)
        if all_states:
            kwargs = [dict(k, return_all_states=True) for k in kwargs]
        finals, every = [], ([] if all_states else None)
        for layer in range(self.num_layers):
            outs = []
            if packed_rows is not None:  # the N live rows of this layer's input, packed order
                data, row_index = packed_rows
                data = data if layer == 0 else sequences.padded_to_packed(x, row_index)
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                init = None if states is None else [s[k] for s in states]
                wx = None
                if packed_rows is not None:
                    wx = self._packed_projection(data, row_index, B, T, layer, direction)
                    wx = sequences.reverse_time(wx, reverse_index) if direction else wx
                    layer_in = None
                else:
                    layer_in = sequences.reverse_time(x, reverse_index) if direction else x
                out, last, *steps = self._run_direction(layer_in, layer, direction, init, lengths,
                                                        wx, kwargs[direction])
                outs.append(sequences.reverse_time(out, reverse_index) if direction else out)
                finals.append(last)
                if all_states:
                    every.append(beyond.direction_all_states(steps[0], reverse_index, direction == 1))
            x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
            if self.training and self.dropout > 0 and layer + 1 < self.num_layers:
                x = F.dropout(x, self.dropout, training=True)
        return x, [torch.stack(per_state) for per_state in zip(*finals)], every

    def _empty_batch(self, x, states, all_states=False):
        """_run_layers for B == 0: output [0, T, D*out] and final states [L*D, 0, size] (the
        given ones, else zeros), as torch returns, and with all_states L*D empty [S, 0, T, H].
        Every parameter and x enter the results through a zero-valued term, so backward gives
        each its zero (or empty) gradient as torch.nn does, instead of leaving them out of the
        graph."""
        link = x.sum() * 0
        for name in self._flat_weights_names:
            link = link + getattr(self, name).sum() * 0
        out = x.new_zeros(0, x.shape[1], self.num_directions * (self.proj_size or self.hidden_size))
        LD = self.num_layers * self.num_directions
        if states is None:
            states = [x.new_zeros(LD, 0, size) for size in self._state_sizes()]
        every = None
        if all_states:
            S, T = len(self._state_sizes()), x.shape[1]
            every = [x.new_zeros(S, 0, T, self.hidden_size) + link for _ in range(LD)]
        return out + link, [s + link for s in states], every

    def _packed_projection(self, data, row_index, batch, steps, layer, direction):
        """x @ w_ih^T + b_ih on the packed rows data [N, F] only, scattered to [B, T, G*H] in
        sorted row order; padded positions hold 0 (fused_rnn never reads them)."""
        w_ih, _, b_ih, _, _ = self._layer_weights(layer, direction)
        wx_rows = cpu_linear.linear(data, w_ih, b_ih)  # [N, G*H]; oneDNN on CPU
        return sequences.scatter_rows(wx_rows, row_index, batch, steps)

    def _input_projection(self, x, wx, layer, direction):
        """wx [B, T, G*H] as given, or x @ w_ih^T + b_ih for every step in one GEMM."""
        if wx is not None:
            return wx
        w_ih, _, b_ih, _, _ = self._layer_weights(layer, direction)
        return time_major_projection(x, w_ih, b_ih)

    def _run_direction(self, x, layer, direction, init, lengths, wx=None, extras=None):
        """One layer and direction over x [B, T, F] (already reversed for direction 1), or over
        its precomputed input projection wx [B, T, G*H] (then x is None).
        init: list of S tensors [B, size] or None; extras: fused_rnn keyword arguments beyond
        torch.nn (``beyond.fused_kwargs``; empty or None for the plain call).
        Returns out [B, T, out], list of S [B, size] and, when extras holds
        ``return_all_states=True``, fused_rnn's all_states [T, S, B, NH, DH] third."""
        _, w_hh, _, b_hh, _ = self._layer_weights(layer, direction)
        wx = self._input_projection(x, wx, layer, direction)  # [B, T, G*H]
        B, T = wx.shape[:2]
        G, NH, H = MODES[self.mode][1], self.num_heads, self.hidden_size
        DH = H // NH
        if NH == 1:
            r = w_hh.view(G, H, H).transpose(1, 2).unsqueeze(1)  # [G, 1, H, H], r[g,0] = W_g^T
        else:
            r = w_hh  # already [G, NH, DH, DH]
        b = b_hh.view(G, NH, DH) if b_hh is not None else wx.new_zeros(G, NH, DH)
        states = None if init is None else torch.stack([s.view(B, NH, DH) for s in init])
        if r.dtype != wx.dtype:  # autocast ran the GEMM in lower precision: follow it
            r, b = r.to(wx.dtype), b.to(wx.dtype)
        if states is not None and states.dtype != wx.dtype:
            states = states.to(wx.dtype)
        h, last, *every = fused_rnn(wx.view(B, T, G, NH, DH), r, b, states, cell=self.cell,
                                    lengths=lengths, backend=self.backend, **(extras or {}))
        return (h.reshape(B, T, H), [s.reshape(B, H) for s in last.unbind(0)], *every)

    def _not_fused_reason(self) -> str | None:
        """Why this module's recurrence does not run in fused_rnn (then it cannot apply the
        options beyond torch.nn), or None."""
        if getattr(self, "parallel_in_time", False):
            return "parallel_in_time=True (parallel_rnn)"
        if self.cell is None:
            return "nonlinearity='relu' (a per-step PyTorch loop)"
        if self.proj_size:
            return "proj_size > 0 (a per-step PyTorch loop)"
        return None

    def _check_regularisers_servable(self) -> None:
        """At construction: ValueError when a regulariser is set on a module without fused_rnn."""
        if (self.dropconnect, self.variational_dropout, self.zoneout) != beyond.OFF:
            self._check_extras_servable()

    def _check_extras_servable(self) -> None:
        """ValueError when the module uses reset or a regulariser but does not run fused_rnn."""
        reason = self._not_fused_reason()
        if reason:
            raise ValueError(f"{type(self).__name__}: dropconnect, variational_dropout, zoneout "
                             f"and reset need the fused_rnn recurrence; this module runs {reason}")

    def _warn_not_fused(self, what: str):
        if not self._warned_not_fused:
            self._warned_not_fused = True
            warnings.warn(f"{type(self).__name__}: {what} has no fused kernel; running a per-step "
                          "PyTorch loop instead (correct, slower)", RuntimeWarning, stacklevel=4)


# Whether a batch-major CPU input x [B, T, F] (batch_first) is copied time-major before its
# projection, so that the loop gets a time-major wx too (time_major_projection). Off: measured
# (LSTM, 1 thread, thread CPU time, paired with the batch-major path) the copies of x and of the
# output cost more than the loop gains (1.02-1.05x at I=H=200 B=20 T=35 L=2, H=128 B=16 T=512).
TIME_MAJOR_BATCH_FIRST = False


def time_major_projection(x, weight, bias):
    """``x @ weight.T + bias`` for x [B, T, F] -> [B, T, N], on CPU as a view of a time-major
    [T, B, N] buffer. Why: the compiled loop reads each step's B rows of the projection; time-major
    they are adjacent, batch-major they lie T*N values apart and each one's first load missed the
    caches. A time-major x (torch.nn's default [T, B, F] input, or a previous layer's output) is
    projected as it is; a batch-major one is copied time-major first (F values per position, fewer
    than the N = G*H of the projection) when TIME_MAJOR_BATCH_FIRST. Elsewhere: F.linear's layout."""
    if x.device.type == "cpu" and x.dim() == 3 and x.shape[0] > 1 and x.shape[1] > 1:
        xt = x.transpose(0, 1)
        if not xt.is_contiguous() and TIME_MAJOR_BATCH_FIRST:
            xt = xt.contiguous()
        if xt.is_contiguous():
            return cpu_linear.linear(xt, weight, bias).transpose(0, 1)
    return cpu_linear.linear(x, weight, bias)  # F.linear; oneDNN on CPU (its docstring)


def reject_proj_size(kind: str, unknown: dict) -> None:
    """GRU/RNN take no projection: ``proj_size`` is a ValueError as in torch.nn.GRU/RNN, any
    other unknown keyword a TypeError as for any Python function."""
    if "proj_size" in unknown:
        raise ValueError(f"proj_size is only supported by LSTM, not {kind}; got "
                         f"proj_size={unknown['proj_size']!r}")
    if unknown:
        raise TypeError(f"{kind}.__init__() got unexpected keyword arguments {sorted(unknown)}")
