"""The plain eager CPU call of flashseq.LSTM/GRU/RNN, run without the general plumbing.

Why: at small sizes the general forward (``FusedRNNBase._run_layers``) spent more time in
Python than in the kernels: per layer the entry point ``fused_rnn`` validates every argument,
checks the extras, asks the back ends which one serves, estimates the memory, and the no_grad
call still goes through two autograd Functions. Measured (1 thread, process CPU time, AMD EPYC,
LSTM I=H=200 B=20 2 layers, no_grad): T=1 took 720 us a call against 360 us of kernels.

``run`` serves the calls that need none of that: a plain CPU tensor (not packed, no functorch
transform or forward-mode AD, no tracing, compiling or autocast), float32 or float64,
``num_heads == 1``, no projection, a cell fused_rnn has (LSTM, GRU, tanh RNN), the "auto" or
"cpu" back end with the extension loaded, nothing beyond torch.nn (no reset, regularisers,
all_states), B and T >= 1 and outputs small enough that the memory check cannot refuse them.
It computes what the general path does (same kernels, same argument order, same tuned knobs):
without a gradient it calls the compiled loop and the projection directly (the float32 LSTM, at
the sizes where ``lstm_projected_pays`` measured it faster, runs both in one compiled loop,
lstm_projected_forward: the same arithmetic, float32 sums in another order); with one, the same
autograd Functions (``cpu.FusedRnnCpuFunction``, the projection's in cpu_linear.py),
so backward, double backward and DDP are unchanged, except that the float32 LSTM, where
``lstm_projected_train_pays`` measured it faster, runs its forward folded the same way and saving
for the same compiled backward (cpu_projected.py). Anything else returns None and the caller
takes the general path.

Nothing is cached between calls: every call reads the Parameters as they are (an optimizer's
in-place step, load_state_dict, ``.to()``, ``torch.func.functional_call``'s substitutes). A
cache of the re-laid-out weights keyed on the Parameters' version counters would miss writes
through ``param.data`` (``m.weight_hh_l0.data.uniform_()``, common in init loops), which bump
no counter of the Parameter, and silently run stale weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flashseq import _jit
from flashseq.kernels.fused_rnn import cpu, cpu_config, cpu_linear, cpu_projected

# The general path checks the memory a call needs first (problem.check_size); calls whose
# outputs and saved tensors stay below this many elements (1 GB of float32) cannot fail it.
MAX_ELEMENTS = 1 << 28

_SERVED = (torch.float32, torch.float64)
_CELLS = {"LSTM": ("lstm", 4, 2), "GRU": ("gru", 3, 1), "RNN_TANH": ("elman", 1, 1)}


def _plain_cpu_call(module, input, reset, generator, return_all_states) -> bool:
    """Whether this call is one ``run`` serves (see the module docstring)."""
    if (reset is not None or generator is not None or return_all_states is not False
            or type(input) is not torch.Tensor or module.mode not in _CELLS
            or module.backend not in ("auto", "cpu") or module.num_heads != 1
            or module.proj_size or getattr(module, "parallel_in_time", False)):
        return False
    if module.training and (module.dropconnect or module.variational_dropout
                            or any(module.zoneout)):
        return False
    if (input.device.type != "cpu" or input.dtype not in _SERVED or input.dim() not in (2, 3)
            or input.numel() == 0):
        return False
    if (torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling()
            or torch.jit.is_tracing() or torch.is_autocast_enabled("cpu")
            or cpu_linear._forward_ad_active()):
        return False  # forward AD: the compiled loop would drop tangents; the general path raises
    return _jit.extension_error() is None


def run(module, input, hx, reset=None, generator=None, return_all_states=False):
    """``module.forward(input, hx)`` for a call ``_plain_cpu_call`` accepts: (output, hx-like
    final states) as torch.nn returns them; None for any other call (nothing was run)."""
    if not _plain_cpu_call(module, input, reset, generator, return_all_states):
        return None
    weight = module.weight_ih_l0
    module._check_input(input, None, "input [T, B, input_size] or [T, input_size]", weight)
    batched = input.dim() == 3
    batch_dim = 0 if module.batch_first else 1
    x = input if batched else input.unsqueeze(batch_dim)
    x = x if module.batch_first else x.transpose(0, 1)  # [B, T, F]
    B, T = x.shape[:2]
    H, L, D = module.hidden_size, module.num_layers, module.num_directions
    cell, G, S = _CELLS[module.mode]
    if B * T * H * (2 * G + S + 2) * D > MAX_ELEMENTS:
        return None
    names = module._flat_weights_names
    per = len(names) // (L * D)  # parameters per layer and direction (w_ih, w_hh[, b_ih, b_hh])
    params = [getattr(module, name) for name in names]
    if any(p.dtype != input.dtype or p.device.type != "cpu" for p in params):
        return None  # mixed dtypes: the general path casts as it needs
    states = None
    if hx is not None:
        states = torch.stack(module._check_hx(hx, B, batched, x))  # [S, L*D, B, H]
    grad_mode = torch.is_grad_enabled()
    ext = _jit.extension()
    lasts = []
    for layer in range(L):
        outs = []
        for direction in range(D):
            k = layer * D + direction
            w_ih, w_hh, *biases = params[k * per:(k + 1) * per]
            b_ih, b_hh = biases if biases else (None, None)
            needs_grad = grad_mode and any(t is not None and t.requires_grad
                                           for t in (x, w_ih, w_hh, *biases, states))
            if _projected_lstm(ext, cell, x, B, H, needs_grad):
                h, last = _projected_layer(ext, x, direction, w_ih, w_hh, b_ih, b_hh,
                                           states[:, k] if states is not None else None,
                                           needs_grad)
                outs.append(h.flip(1) if direction else h)
                lasts.append(last)
                continue
            layer_in = x.flip(1) if direction else x
            wx = _projection(layer_in, w_ih, b_ih)                   # [B, T, G*H]
            wx = wx.view(B, T, G, 1, H)
            r = w_hh.view(G, H, H).transpose(1, 2).unsqueeze(1)       # [G, 1, H, H] = W_g^T
            b = b_hh.view(G, 1, H) if b_hh is not None else wx.new_zeros(G, 1, H)
            init = (states[:, k].unsqueeze(2) if states is not None
                    else wx.new_zeros(S, B, 1, H))                   # [S, B, 1, H]
            config = cpu_config.for_call(cell, wx)
            if grad_mode and (wx.requires_grad or r.requires_grad or b.requires_grad
                              or init.requires_grad):  # as cpu.fused_rnn decides to save
                h, last = cpu.FusedRnnCpuFunction.apply(wx, r, b, init, None, cell, True, config)
            else:
                with cpu_config.applied(config):
                    h, last, _, _ = ext.fused_rnn_forward(wx, r, b, init, None, cell, False)
            h = h.view(B, T, H)
            outs.append(h.flip(1) if direction else h)
            lasts.append(last)
        x = outs[0] if D == 1 else torch.cat(outs, dim=-1)
        if module.training and module.dropout > 0 and layer + 1 < L:
            x = F.dropout(x, module.dropout, training=True)
    finals = torch.stack(lasts, 1).view(S, L * D, B, H).unbind(0)  # each [L*D, B, H]
    out = x if module.batch_first else x.transpose(0, 1)
    if not batched:
        out = out.squeeze(batch_dim)
        finals = [s.squeeze(1) for s in finals]
    return out.contiguous(), module._join_hx(list(finals))


def _projected_lstm(ext, cell, x, B, H, needs_grad) -> bool:
    """Whether this layer runs with the input projection folded into the recurrence:
    ``lstm_projected_forward`` without a gradient, ``lstm_projected_forward_train`` (through
    cpu_projected.ProjectedLstmFunction) with one; the extension decides by sizes where that
    measured faster."""
    if cell != "lstm" or x.dtype != torch.float32:
        return False
    pays = ext.lstm_projected_train_pays if needs_grad else ext.lstm_projected_pays
    return pays(B, x.shape[-1], H)


def _projected_layer(ext, x, direction, w_ih, w_hh, b_ih, b_hh, init, needs_grad=False):
    """One direction of one LSTM layer through ``lstm_projected_forward`` (or, when needs_grad,
    the differentiable ``cpu_projected.projected_lstm``): x [B, T, F] (a view, possibly of a
    time-major buffer), init [2, B, H] or None -> (h [B, T, H] in the order the layer ran
    (reversed for direction 1, as the old path's h), last [2, B, 1, H] as fused_rnn_forward
    returns it)."""
    xt = x.transpose(0, 1)  # [T, B, F]
    xt = xt.flip(0) if direction else xt.contiguous()
    if init is None:
        h0 = c0 = xt.new_zeros(xt.shape[1], w_hh.shape[1])
    else:
        h0, c0 = init[0], init[1]
    if needs_grad:
        h, h_last, c_last = cpu_projected.projected_lstm(xt, w_ih, w_hh, b_ih, b_hh, h0, c0)
    else:
        bias = b_ih + b_hh if b_ih is not None else None
        with cpu_config.applied(cpu_projected.layer_config(xt, w_hh.shape[1])):  # tuned knobs
            h, h_last, c_last = ext.lstm_projected_forward(xt, w_ih, w_hh, bias, h0, c0)
    return h.transpose(0, 1), torch.stack((h_last, c_last)).unsqueeze(2)


def _projection(x, weight, bias):
    from .rnn_base import time_major_projection  # rnn_base imports this module
    return time_major_projection(x, weight, bias)
