"""``backend="cpu"`` with the extras of ``fused_rnn`` and the LayerNorm cells.

The calls that use ``dropconnect``, ``variational_dropout``, ``zoneout``, ``reset``,
``return_all_states`` or the cells ``"layernorm_lstm"``/``"layernorm_gru"`` run here, on the C++
loop of csrc/cpu/fused_rnn_extras_forward.cpp and fused_rnn_extras_backward.cpp (layouts in
csrc/cpu/fused_rnn_extras.h); the plain calls keep the faster loop of cpu.py. The masks arrive
drawn (extras.py), so the results equal the reference back end's for the same generator state.

- dropconnect: ``r * mask`` once per call, here in PyTorch before the loop (autograd gives d(r)
  the mask); the loop sees the masked weights.
- variational dropout, zoneout and reset are applied inside the C++ time loop, per step and row.
- return_all_states: the loop writes every step's states [T, S, B, NH, DH]; they are also what the
  backward reads its previous states from, so they are kept whenever a gradient is needed.

What the forward keeps for the backward (only when a gradient is needed): all_states, hin_all
[NH, T, B, DH] (h_{t-1} after reset and mask: the step GEMM's operand, for d(r)) and hr_all
[NH, T, B, G*DH] (``hin @ r`` before the bias and norm); the backward recomputes each step's cell
from hr_all. Under ``create_graph=True`` the backward is the reference loop's (as cpu.py's), with
the same masks, so second derivatives work.

The C++ functions are the ``torch.library`` custom ops ``flashseq::fused_rnn_cpu_extras_fwd`` and
``flashseq::fused_rnn_cpu_extras_bwd`` with fake implementations, so ``torch.compile`` traces
through them.
"""
from typing import Optional

import torch
from torch import Tensor

from flashseq import _jit
from flashseq.cells import get_cell

from .extras import Extras
from .reference import fused_rnn_reference

LAYERNORM_CELLS = ("layernorm_lstm", "layernorm_gru")


def _layout(cell: str):
    """(G, S): gates and states of ``cell`` as the extras loop has them."""
    return tuple(_jit.extension().extras_cell_layout(cell))


def _forward_loop(wx, r, b, states, lengths, variational, zoneout, reset, cell, save, every):
    return tuple(_jit.extension().fused_rnn_extras_forward(
        wx, r, b, states, lengths, variational, zoneout, reset, cell, save, every))


@torch.library.custom_op("flashseq::fused_rnn_cpu_extras_fwd", mutates_args=())
def fused_rnn_cpu_extras_fwd(wx: Tensor, r: Tensor, b: Tensor, states: Tensor,
                             lengths: Optional[Tensor], variational: Optional[Tensor],
                             zoneout: Optional[Tensor], reset: Optional[Tensor], cell: str,
                             save: bool, every: bool
                             ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Forward loop; layouts as ``fused_rnn``, masks as ``extras.Extras`` (dropconnect already
    in ``r``). Returns (h [B, T, NH, DH], last_states [S, B, NH, DH], all_states
    [T, S, B, NH, DH] (T = 0 unless ``save`` or ``every``), hin_all [NH, T, B, DH] and hr_all
    [NH, T, B, G*DH] (T = 0 unless ``save``))."""
    return _forward_loop(wx, r, b, states, lengths, variational, zoneout, reset, cell, save, every)


@fused_rnn_cpu_extras_fwd.register_fake
def _fused_rnn_cpu_extras_fwd_fake(wx, r, b, states, lengths, variational, zoneout, reset, cell,
                                   save, every):
    B, T, G, NH, DH = wx.shape
    S = states.shape[0]
    kept = T if save else 0
    return (wx.new_empty(B, T, NH, DH), wx.new_empty(S, B, NH, DH),
            wx.new_empty(T if save or every else 0, S, B, NH, DH),
            wx.new_empty(NH, kept, B, DH), wx.new_empty(NH, kept, B, G * DH))


def _backward_loop(dh, d_last, d_all, wx, r, b, states, all_states, hin_all, hr_all, lengths,
                   variational, zoneout, reset, cell):
    return tuple(_jit.extension().fused_rnn_extras_backward(
        dh, d_last, d_all, wx, r, b, states, all_states, hin_all, hr_all, lengths, variational,
        zoneout, reset, cell))


@torch.library.custom_op("flashseq::fused_rnn_cpu_extras_bwd", mutates_args=())
def fused_rnn_cpu_extras_bwd(dh: Optional[Tensor], d_last: Optional[Tensor],
                             d_all: Optional[Tensor], wx: Tensor, r: Tensor, b: Tensor,
                             states: Tensor, all_states: Tensor, hin_all: Tensor, hr_all: Tensor,
                             lengths: Optional[Tensor], variational: Optional[Tensor],
                             zoneout: Optional[Tensor], reset: Optional[Tensor], cell: str
                             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward loop: upstream dh [B, T, NH, DH], d_last [S, B, NH, DH], d_all [T, S, B, NH, DH]
    (None = zero) and what the forward returned -> (d_wx [B, T, G, NH, DH], d_r [G, NH, DH, DH]
    (of the masked r), d_b [G, NH, DH], d_states [S, B, NH, DH])."""
    return _backward_loop(dh, d_last, d_all, wx, r, b, states, all_states, hin_all, hr_all,
                          lengths, variational, zoneout, reset, cell)


@fused_rnn_cpu_extras_bwd.register_fake
def _fused_rnn_cpu_extras_bwd_fake(dh, d_last, d_all, wx, r, b, states, all_states, hin_all,
                                   hr_all, lengths, variational, zoneout, reset, cell):
    return (torch.empty_like(wx, memory_format=torch.contiguous_format),
            torch.empty_like(r, memory_format=torch.contiguous_format),
            torch.empty_like(b, memory_format=torch.contiguous_format),
            torch.empty_like(states, memory_format=torch.contiguous_format))


def _eager(*tensors) -> bool:
    """As cpu.py's: plain eager tensors skip the custom-op wrapper (its first call imports
    torch._dynamo); tracing and fake tensors go through the ops."""
    return (not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and all(t is None or type(t) is Tensor for t in tensors))


def _reference_backward(ctx, inputs, upstream, masks):
    """Differentiable gradients through the reference loop with the same masks (create_graph=True);
    as double_backward.reference_backward, plus the masks and every step's states."""
    needs = ctx.needs_input_grad[:4]
    wanted = [t for t, need in zip(inputs, needs) if need]
    pairs = [(i, g) for i, g in enumerate(upstream) if g is not None]
    result = [None] * 4
    if not wanted or not pairs:
        return tuple(result)
    lengths, variational, zoneout, reset = masks
    extras = Extras(variational=variational, zoneout=zoneout, reset=reset, return_all_states=True)
    with torch.enable_grad():
        wx, r, b, states = inputs
        outputs = fused_rnn_reference(wx, r, b, states, cell=get_cell(ctx.cell), lengths=lengths,
                                      extras=extras)
        grads = iter(torch.autograd.grad([outputs[i] for i, _ in pairs], wanted,
                                         [g for _, g in pairs], create_graph=True,
                                         allow_unused=True))
    for i, need in enumerate(needs):
        if need:
            result[i] = next(grads)
    return tuple(result)


class FusedRnnCpuExtrasFunction(torch.autograd.Function):
    """Autograd of the extras loop: forward keeps the inputs, the masks and the per-step tensors;
    backward runs the C++ backward once, or under ``create_graph=True`` the reference loop's."""

    @staticmethod
    def forward(ctx, wx, r, b, states, lengths, variational, zoneout, reset, cell, save, every):
        tensors = (wx, r, b, states, lengths, variational, zoneout, reset)
        forward = _forward_loop if _eager(*tensors) else fused_rnn_cpu_extras_fwd
        h, last, all_states, hin_all, hr_all = forward(wx, r, b, states, lengths, variational,
                                                       zoneout, reset, cell, save, every)
        if save:
            ctx.save_for_backward(wx, r, b, states, all_states, hin_all, hr_all, lengths,
                                  variational, zoneout, reset)
        ctx.cell = cell
        ctx.set_materialize_grads(False)  # a missing upstream gradient stays None: no zeros
        return h, last, all_states

    @staticmethod
    def backward(ctx, dh, d_last, d_all):
        (wx, r, b, states, all_states, hin_all, hr_all, lengths, variational, zoneout,
         reset) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a backward autograd can differentiate
            grads = _reference_backward(ctx, (wx, r, b, states), (dh, d_last, d_all),
                                        (lengths, variational, zoneout, reset))
        else:
            args = (dh, d_last, d_all, wx, r, b, states, all_states, hin_all, hr_all, lengths,
                    variational, zoneout, reset, ctx.cell)
            backward = _backward_loop if _eager(*args[:-1]) else fused_rnn_cpu_extras_bwd
            grads = backward(*args)
        # gradients in argument order: wx, r, b, states, lengths, variational, zoneout, reset,
        # cell, save, every
        return (*grads, None, None, None, None, None, None, None)


def fused_rnn(wx, r, b, states, *, cell, lengths, extras: Optional[Extras] = None):
    """``fused_rnn`` with extras on the compiled CPU loop; arguments and results as
    ``flashseq.ops.fused_rnn`` (layouts in its docstring), ``states`` always given, ``extras``
    the drawn masks (None: a LayerNorm cell without extras)."""
    extras = extras if extras is not None else Extras()
    if extras.dropconnect is not None:
        r = r * extras.dropconnect  # once per call; autograd gives d(r) the mask
    reset = extras.reset.to("cpu") if extras.reset is not None else None
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (wx, r, b, states))
    h, last, every = FusedRnnCpuExtrasFunction.apply(
        wx, r, b, states, lengths, extras.variational, extras.zoneout, reset, cell.name, save,
        extras.return_all_states)
    if extras.return_all_states:
        return h, last, every
    return h, last


def workspace_bytes(problem):
    """Bytes the forward allocates: h [B, T, NH, DH] and the last states; with
    return_all_states or a gradient every step's states [T, S, B, NH, DH]; with a gradient
    hin_all [NH, T, B, DH] and hr_all [NH, T, B, G*DH]; all in wx's dtype."""
    unit = problem.batch * problem.heads * problem.head_dim * problem.dtype.itemsize
    S, G, T = problem.cell.num_states, problem.cell.num_gates, problem.steps
    need = (T + S) * unit
    if problem.needs_grad or "return_all_states" in problem.extras:
        need += T * S * unit
    if problem.needs_grad:
        need += T * (1 + G) * unit
    return need
