"""flashseq.sLSTM: xLSTM's scalar-memory LSTM (exponential gating, normaliser, stabiliser)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flashseq.kernels.fused_rnn import fused_rnn

from . import checks
from .errors import RNNInputError, RNNInputTypeError

NUM_STATES = 4  # h, c, n, m: fused_rnn's "slstm" state order


class sLSTM(nn.Module):  # noqa: N801 (the model's published name)
    """A stack of sLSTM layers, each one ``fused_rnn(..., cell="slstm")`` (formulas: docs/api.md).

    Args:
        input_size: features of the input. hidden_size: H, features of h (and of c, n, m).
        num_heads: NH, a divisor of H; the recurrence is block-diagonal over heads of
            DH = H / NH units. Default: 1.
        num_layers: stacked layers, layer k > 0 reads layer k-1's h. Default: 1.
        bias: whether each layer has a bias. Default: True.
        batch_first: input and output are [B, T, F] instead of [T, B, F]. Default: False.
        backend: fused_rnn back end. Default: "auto".
        device, dtype: of the parameters. Default: torch's defaults.

    Parameters of layer k (gates in the order i, f, z, o):
        ``weight_ih_l{k}`` [4H, in_k] (in_0 = input_size, else H): ``wx = x @ weight_ih.T``;
        ``weight_hh_l{k}`` [4, NH, DH, DH]: fused_rnn's ``r`` (gate g of head n gets
        ``h_prev[:, n] @ weight_hh[g, n]``);
        ``bias_l{k}`` [4H] (if bias): added to every gate pre-activation (fused_rnn's ``b``).
        A single bias per layer: torch's pair bias_ih + bias_hh would be redundant here.

    Initialisation: weights U(-1/sqrt(H), 1/sqrt(H)) as torch.nn.LSTM; biases zero except the
    forget gate's, which runs linearly from 3 to 6 over each head's DH units (sigmoid(3..6) =
    0.95..0.998) so that a fresh model keeps its memory over long spans, as xLSTM does.

    Forward: ``output, states = m(input, states=None)``
        input: [T, B, input_size] ([B, T, input_size] with batch_first) or unbatched
            [T, input_size].
        states: [num_layers, 4, B, H] (h, c, n, m per layer; [num_layers, 4, H] unbatched) or
            None for zeros (m = 0 too, the formulas applied literally).
        output: [T, B, H] ([B, T, H] with batch_first; [T, H] unbatched), the last layer's h.
        states: [num_layers, 4, B, H] after the last step, same layout as the input states.
    """

    def __init__(self, input_size, hidden_size, num_heads=1, num_layers=1, bias=True,
                 batch_first=False, backend="auto", device=None, dtype=None):
        super().__init__()
        self.input_size = checks.check_int("input_size", input_size, 1)
        self.hidden_size = checks.check_int("hidden_size", hidden_size, 1)
        self.num_heads = checks.check_heads(self.hidden_size, num_heads)
        self.num_layers = checks.check_int("num_layers", num_layers, 1)
        self.bias = checks.check_bool("bias", bias)
        self.batch_first = checks.check_bool("batch_first", batch_first)
        self.backend = checks.check_backend(backend)
        H, NH = self.hidden_size, self.num_heads
        factory = {"device": device, "dtype": dtype}
        for k in range(self.num_layers):
            layer_in = self.input_size if k == 0 else H
            setattr(self, f"weight_ih_l{k}", nn.Parameter(torch.empty(4 * H, layer_in, **factory)))
            setattr(self, f"weight_hh_l{k}", nn.Parameter(torch.empty(4, NH, H // NH, H // NH, **factory)))
            if self.bias:
                setattr(self, f"bias_l{k}", nn.Parameter(torch.empty(4 * H, **factory)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights U(-1/sqrt(H), 1/sqrt(H)); bias 0 but the forget gate's, linspace(3, 6) per head."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        NH, DH = self.num_heads, self.hidden_size // self.num_heads
        with torch.no_grad():
            for k in range(self.num_layers):
                nn.init.uniform_(getattr(self, f"weight_ih_l{k}"), -bound, bound)
                nn.init.uniform_(getattr(self, f"weight_hh_l{k}"), -bound, bound)
                if self.bias:
                    b = getattr(self, f"bias_l{k}")
                    b.zero_()
                    b.view(4, NH, DH)[1] = torch.linspace(3.0, 6.0, DH, dtype=b.dtype, device=b.device)

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}"]
        if self.num_heads != 1:
            parts.append(f"num_heads={self.num_heads}")
        if self.num_layers != 1:
            parts.append(f"num_layers={self.num_layers}")
        if not self.bias:
            parts.append("bias=False")
        if self.batch_first:
            parts.append("batch_first=True")
        if self.backend != "auto":
            parts.append(f"backend={self.backend!r}")
        return ", ".join(parts)

    def forward(self, input, states=None):
        """See the class docstring: input [T, B, I] -> (output [T, B, H], states [L, 4, B, H])."""
        x, batched = checks.sequence_input("sLSTM", input, self.input_size, self.weight_ih_l0,
                                           self.batch_first)  # [B, T, I]
        B, T = x.shape[:2]
        H, NH = self.hidden_size, self.num_heads
        DH = H // NH
        if states is not None:
            expected = (self.num_layers, NUM_STATES, B, H) if batched else (self.num_layers, NUM_STATES, H)
            if not isinstance(states, torch.Tensor):
                raise RNNInputTypeError(f"sLSTM: states must be a torch.Tensor {expected} or None; "
                                        f"got {type(states).__name__}")
            if tuple(states.shape) != expected:
                raise RNNInputError(f"sLSTM: states must have shape [num_layers, 4 (h, c, n, m), "
                                    f"B, H] = {expected}; got {tuple(states.shape)}")
            if states.dtype != x.dtype or states.device != x.device:
                raise RNNInputError(f"sLSTM: states must have the input's dtype {x.dtype} and "
                                    f"device {x.device}; got {states.dtype} on {states.device}")
            if not batched:
                states = states.unsqueeze(2)
        finals = []
        for k in range(self.num_layers):
            wx = F.linear(x, getattr(self, f"weight_ih_l{k}"))  # [B, T, 4H]
            bias = getattr(self, f"bias_l{k}", None)
            b = bias.view(4, NH, DH) if bias is not None else wx.new_zeros(4, NH, DH)
            init = None if states is None else states[k].reshape(NUM_STATES, B, NH, DH)
            h, last = fused_rnn(wx.view(B, T, 4, NH, DH), getattr(self, f"weight_hh_l{k}"), b, init,
                                cell="slstm", backend=self.backend)
            x = h.reshape(B, T, H)
            finals.append(last.reshape(NUM_STATES, B, H))
        out = x if self.batch_first else x.transpose(0, 1)
        finals = torch.stack(finals)  # [L, 4, B, H]
        if not batched:
            out, finals = out.squeeze(0 if self.batch_first else 1), finals.squeeze(2)
        return out.contiguous(), finals
