"""The Triton back end with the extras (extras.py) and the LayerNorm cells: launchers, custom ops
and ``FusedRNNTritonExtrasFunction``.

Only the persistent path ("fused": the whole head in one program) serves them; the kernels are
``triton_extras_fwd``/``triton_extras_bwd``. Heads the plan splits over programs ("split",
"stepwise": large DH) are refused with a reason (``split_reason``): ``backend="auto"`` then
falls back to the reference back end with one warning, ``backend="triton"`` raises
``NotImplementedError`` (backends.py).

The dropconnect mask multiplies r once, here, before the launch (autograd then gives d r the
mask); the variational, zoneout and reset masks and every step's states are served inside the
kernels' time loop. d r and d b are one reduction after the backward kernel, as in
``triton_function``, over the h_{t-1} the forward's tl.dot received (reset and variational mask
applied, rounded to wx's dtype).
"""
from __future__ import annotations

from typing import Optional

import torch

from flashseq.cells import get_cell

from .reference import fused_rnn_reference
from .triton_function import _cdiv, _dense, _precision, plan_tiles

# the LayerNorm cells: (the cell whose pointwise Triton step they use, NORM_C)
NORM_CELLS = {"layernorm_lstm": ("lstm", True), "layernorm_gru": ("gru", False)}


def base_cell_name(name: str) -> str:
    """The cell whose tiles and pointwise Triton functions ``name`` runs with."""
    return NORM_CELLS[name][0] if name in NORM_CELLS else name


def split_reason(plan) -> Optional[str]:
    """Why the extras kernels cannot run ``plan`` (a head split over programs), else None."""
    if plan.path == "fused":
        return None
    return (f"the extras and the LayerNorm cells run on the persistent kernel only; head size "
            f"{plan.head_dim} takes the {plan.path!r} path ({plan.reason})")


# The extras kernels' launch: their own warps and stages rather than the plan's (whose register
# model counts the plain kernels only), chosen from cuobjdump on sm_80/sm_90 cubins with every
# extra on (tests/kernels/test_fused_rnn_triton_extras_compile.py). Spills (stack bytes) at the
# plan's warps, bf16 DH 64: forward 8-136, backward 8-448 (16 warps: at most 128 registers per
# thread). 8 warps (255 registers) for both; 16 for the light forwards (Elman, float32 GRU at DH
# 64+), where ptxas otherwise settles at 128 registers (two blocks per SM) and spills 8-16 B.
# Capping the registers at 255 (maxnreg) makes ptxas use them where it otherwise settles at 128
# and spills (GRU fp16 DH 16 forward: 8 B at 128, none at 164; sLSTM fp32 DH 32 backward: 16 B,
# none at 182), but moves its choices elsewhere (sLSTM DH 64 forward 16 B, LSTM DH 64 backward
# 8 B), so only the launches measured to need it take it; likewise 3 stages for the sLSTM DH 16
# backward (8 B at 1, none at 3). Keys: (cell, padded DH, dtype, backward).
EXTRAS_WARPS = 8
_LAUNCH_OVERRIDES = {
    ("gru", 16, "float16", False): dict(maxnreg=255),
    ("slstm", 32, "float32", True): dict(maxnreg=255),
    ("slstm", 16, "bfloat16", True): dict(num_stages=3),
    ("slstm", 16, "float16", True): dict(num_stages=3),
}
# Software pipelining (num_stages > 1) keeps the next step's loads in registers: the extras
# backward spills with it (bf16 DH 64 sm_90: LSTM 32 B at 3 stages, 0 at 1) and the step's
# products have no loaded operand to pipeline.
EXTRAS_STAGES = 1


def extras_launch(plan, cell_name: str, backward: bool = False) -> dict:
    """num_warps, num_stages and (where measured to help) maxnreg of an extras kernel launch
    for ``plan`` (the base cell's) and the cell ``cell_name``."""
    light = cell_name == "elman" or (cell_name == "gru" and plan.dtype == "float32")
    wide_head = plan.padded_head_dim >= 64
    warps = 2 * EXTRAS_WARPS if light and wide_head and not backward else EXTRAS_WARPS
    launch = dict(num_warps=warps, num_stages=EXTRAS_STAGES)
    launch.update(_LAUNCH_OVERRIDES.get((cell_name, plan.padded_head_dim, plan.dtype, backward),
                                        {}))
    return launch


def needs_wide_offsets(wx, r, num_states: int) -> bool:
    """Whether an extras launch on wx [B,T,G,NH,DH], r must compute offsets in int64 (a tensor
    it indexes, the largest being wx and the [T+1,S,B,NH,DH] states, has 2**31 elements or
    more); int32 offsets take fewer registers."""
    B, T, _, NH, DH = wx.shape
    return max(wx.numel(), r.numel(), (T + 1) * num_states * B * NH * DH) >= 2 ** 31


def _flags(cell, lengths, var, zone, reset, all_states):
    from flashseq.cells.triton import get_triton_cell
    base, norm_c = NORM_CELLS.get(cell.name, (cell.name, False))
    return base, get_triton_cell(base), dict(
        NORM=cell.name in NORM_CELLS, NORM_C=norm_c, HAS_LEN=lengths is not None,
        HAS_VAR=var is not None, HAS_ZONE=zone is not None, HAS_RESET=reset is not None,
        ALL_STATES=all_states)


def _u8(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    # bool masks as uint8 (same bytes): the kernels compare them with 0
    return None if mask is None else mask.contiguous().view(torch.uint8)


def _plan(cell, wx):
    plan = plan_tiles(get_cell(base_cell_name(cell.name)), wx)
    reason = split_reason(plan)
    if reason:
        raise NotImplementedError(f"fused_rnn backend 'triton' cannot run this call: {reason}")
    return plan


def fused_rnn_fwd_extras(wx, r, b, states, lengths, var, zone, reset, cell, all_states: bool,
                         save: bool):
    """wx [B,T,G,NH,DH], r [G,NH,DH,DH] (dropconnect applied), b [G,NH,DH], states
    [S,B,NH,DH], lengths [B] int64, var [B,NH,DH], zone [T,S,B,NH,DH] bool, reset [B,T] bool
    (each None when unused). Returns h [B,T,NH,DH], last [S,B,NH,DH], all [T,S,B,NH,DH]
    (wx's dtype; empty unless ``all_states``) and, if ``save``, rh_st [B,T,G,NH,DH], (NORM)
    hr_st (flat: LN(h @ r) [B,T,G,NH,DH] then its 1/std [B,T,NH]) and s_st [T+1,S,B,NH,DH],
    all fp32 (else empty)."""
    from .triton_extras_fwd import fused_rnn_fwd_extras_kernel
    B, T, G, NH, DH = wx.shape
    S = cell.num_states
    plan = _plan(cell, wx)
    base, tcell, flags = _flags(cell, lengths, var, zone, reset, all_states)
    h = wx.new_empty(B, T, NH, DH)
    last = wx.new_empty(S, B, NH, DH)
    every = wx.new_empty((T, S, B, NH, DH) if all_states else (0,))
    gates = (B, T, G, NH, DH)
    rh_st = wx.new_empty(gates if save else (0,), dtype=torch.float32)
    hr_st = wx.new_empty(_hr_numel(wx) if save and flags["NORM"] else 0, dtype=torch.float32)
    s_st = wx.new_empty((T + 1, S, B, NH, DH) if save else (0,), dtype=torch.float32)
    dummy = wx
    fused_rnn_fwd_extras_kernel[(_cdiv(B, plan.BB), NH)](
        wx, r, b, states, _or(lengths, dummy), _or(var, dummy), _or(_u8(zone), dummy),
        _or(_u8(reset), dummy), h, last, _or_empty(every, dummy), rh_st,
        *_split_hr(hr_st, wx, dummy), s_st,
        B, T, NH, DH,
        CELL=tcell.fwd, G=G, S=S, BB=plan.BB, DHP=plan.padded_head_dim, SAVE=save,
        PREC=_precision(wx.dtype), WIDE=needs_wide_offsets(wx, r, S),
        **extras_launch(plan, cell.name),
        **flags)
    return h, last, every, rh_st, hr_st, s_st


def fused_rnn_bwd_extras(dh, dlast, dall, wx, r, rh_st, hr_st, s_st, lengths, var, zone, reset,
                         cell):
    """d wx (with a norm: d LN(wx), see ``norm_gates_backward``), d rh, d hr ([B,T,G,NH,DH]
    fp32; d hr is d rh without a norm) and d states0
    [S,B,NH,DH] fp32 from the gradients of h, last and (or None) all_states."""
    from .triton_extras_bwd import fused_rnn_bwd_extras_kernel
    B, T, G, NH, DH = wx.shape
    S = cell.num_states
    plan = _plan(cell, wx)
    base, tcell, flags = _flags(cell, lengths, var, zone, reset, dall is not None)
    drh = wx.new_empty(B, T, G, NH, DH, dtype=torch.float32)
    # LayerNorm LSTM: d LN(wx) = d rh, so the kernel writes only DRH
    dwx = drh if flags["NORM_C"] else torch.empty_like(drh)
    dhr = torch.empty_like(drh) if flags["NORM"] else drh
    ds0 = wx.new_empty(S, B, NH, DH, dtype=torch.float32)
    dummy = wx
    fused_rnn_bwd_extras_kernel[(_cdiv(B, plan.BB), NH)](
        wx, r, rh_st, *_split_hr(hr_st, wx, dummy), s_st, dh.contiguous(),
        dlast.float().contiguous(), dummy if dall is None else dall.float().contiguous(),
        _or(lengths, dummy), _or(var, dummy), _or(_u8(zone), dummy), _or(_u8(reset), dummy),
        dwx, drh, dhr, ds0,
        B, T, NH, DH,
        CELL=tcell.bwd, G=G, S=S, BB=plan.BB, DHP=plan.padded_head_dim,
        PREC=_precision(wx.dtype), WIDE=needs_wide_offsets(wx, r, S),
        **extras_launch(plan, cell.name, backward=True),
        **flags)
    return dwx, drh, dhr, ds0


def _hr_numel(wx) -> int:
    # the norm's saved values: LN(h @ r) [B,T,G,NH,DH] then its 1/std [B,T,NH], one buffer
    B, T, G, NH, DH = wx.shape
    return B * T * NH * (G * DH + 1)


def _split_hr(hr_st, wx, dummy):
    """(HR_ST, RSTD_ST) kernel arguments: views of the one saved buffer, or dummies."""
    if hr_st.numel() == 0:
        return dummy, dummy
    n = wx.numel()
    return hr_st[:n], hr_st[n:]


def _or(t, dummy):
    return dummy if t is None else t


def _or_empty(t, dummy):
    return dummy if t.numel() == 0 else t


def norm_gates_backward(wx, d_norm, lengths=None):
    """d wx [B,T,G,NH,DH] fp32 from d LN(wx) (fp32, same layout): the backward of the gate norm
    (per row, step and head over its G*DH pre-activations, unit gain, eps as
    ``triton_layernorm.EPS``), ``dx = rstd * (dy - mean(dy) - y * mean(dy * y))``; 0 past a
    row's length (``lengths`` [B] or None), where wx is never read."""
    from .triton_layernorm import EPS
    x = wx.float()
    if lengths is not None:
        T = wx.shape[1]
        valid = (torch.arange(T, device=wx.device) < lengths[:, None])[:, :, None, None, None]
        x = torch.where(valid, x, 0.0)
    x = x.transpose(2, 3)  # [B,T,NH,G,DH]: a row's G*DH values together
    dy = d_norm.transpose(2, 3)
    dims = (-2, -1)
    mean = x.mean(dim=dims, keepdim=True)
    rstd = torch.rsqrt(((x - mean) ** 2).mean(dim=dims, keepdim=True) + EPS.value)
    y = (x - mean) * rstd
    dx = rstd * (dy - dy.mean(dim=dims, keepdim=True) - y * (dy * y).mean(dim=dims, keepdim=True))
    dx = dx.transpose(2, 3)
    return dx if lengths is None else torch.where(valid, dx, 0.0)


def recurrent_inputs(s_st, wx, var, reset):
    """[T, B, NH, DH] fp32: the h_{t-1} each step's tl.dot received (after reset and the
    variational mask, rounded to wx's dtype)."""
    T = wx.shape[1]
    h_prev = s_st[:T, 0]
    if reset is not None:
        h_prev = torch.where(reset.t()[:, :, None, None], s_st[0, 0].unsqueeze(0), h_prev)
    if var is not None:
        h_prev = h_prev * var.float()
    return h_prev.to(wx.dtype).float()


@torch.library.custom_op("flashseq::fused_rnn_triton_extras_fwd", mutates_args=())
def _fwd_op(wx: torch.Tensor, r: torch.Tensor, b: torch.Tensor, states: torch.Tensor,
            lengths: Optional[torch.Tensor], var: Optional[torch.Tensor],
            zone: Optional[torch.Tensor], reset: Optional[torch.Tensor], cell: str,
            all_states: bool, save: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor, torch.Tensor, torch.Tensor]:
    return fused_rnn_fwd_extras(wx.contiguous(), r.contiguous(), b.contiguous(),
                                states.contiguous(), _dense(lengths), _dense(var), zone, reset,
                                get_cell(cell), all_states, save)


@_fwd_op.register_fake
def _fwd_fake(wx, r, b, states, lengths, var, zone, reset, cell, all_states, save):
    B, T, G, NH, DH = wx.shape
    S = states.shape[0]
    gates = (B, T, G, NH, DH)
    norm = cell in NORM_CELLS
    return (wx.new_empty(B, T, NH, DH), wx.new_empty(S, B, NH, DH),
            wx.new_empty((T, S, B, NH, DH) if all_states else (0,)),
            wx.new_empty(gates if save else (0,), dtype=torch.float32),
            wx.new_empty(_hr_numel(wx) if save and norm else 0, dtype=torch.float32),
            wx.new_empty((T + 1, S, B, NH, DH) if save else (0,), dtype=torch.float32))


@torch.library.custom_op("flashseq::fused_rnn_triton_extras_bwd", mutates_args=())
def _bwd_op(dh: torch.Tensor, dlast: torch.Tensor, dall: Optional[torch.Tensor],
            wx: torch.Tensor, r: torch.Tensor, rh_st: torch.Tensor, hr_st: torch.Tensor,
            s_st: torch.Tensor, lengths: Optional[torch.Tensor], var: Optional[torch.Tensor],
            zone: Optional[torch.Tensor], reset: Optional[torch.Tensor], cell: str
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    wx, r = wx.contiguous(), r.contiguous()
    dwx, drh, dhr, ds0 = fused_rnn_bwd_extras(dh, dlast, dall, wx, r, rh_st, hr_st, s_st,
                                              _dense(lengths), _dense(var), zone, reset,
                                              get_cell(cell))
    if cell in NORM_CELLS:
        dwx = norm_gates_backward(wx, dwx, _dense(lengths))
    h_in = recurrent_inputs(s_st, wx, var, reset)
    dr = torch.einsum("tbnk,btgnj->gnkj", h_in, dhr)
    db = drh.sum(dim=(0, 1))
    return dwx.to(wx.dtype), dr.to(r.dtype).contiguous(), db.to(r.dtype), ds0.to(wx.dtype)


@_bwd_op.register_fake
def _bwd_fake(dh, dlast, dall, wx, r, rh_st, hr_st, s_st, lengths, var, zone, reset, cell):
    G, NH, DH = r.shape[:3]
    return (torch.empty_like(wx), torch.empty_like(r), r.new_empty(G, NH, DH),
            dlast.new_empty(dlast.shape, dtype=wx.dtype))


class FusedRNNTritonExtrasFunction(torch.autograd.Function):
    """Differentiable Triton ``fused_rnn`` with extras; r arrives with dropconnect applied.
    Under ``create_graph=True`` the backward differentiates the reference loop instead (as
    ``double_backward``), so second derivatives exist."""

    @staticmethod
    def forward(ctx, wx, r, b, states, lengths, var, zone, reset, cell: str, all_states: bool):
        save = any(ctx.needs_input_grad[:4])
        h, last, every, rh_st, hr_st, s_st = torch.ops.flashseq.fused_rnn_triton_extras_fwd(
            wx, r, b, states, lengths, var, zone, reset, cell, all_states, save)
        ctx.save_for_backward(wx, r, b, states, rh_st, hr_st, s_st, lengths, var, zone, reset)
        ctx.cell = cell
        ctx.all_states = all_states
        return (h, last, every) if all_states else (h, last)

    @staticmethod
    def backward(ctx, dh, dlast, dall=None):
        wx, r, b, states, rh_st, hr_st, s_st, lengths, var, zone, reset = ctx.saved_tensors
        none = (None,) * 6
        if torch.is_grad_enabled():
            return (*_reference_backward(ctx, (wx, r, b, states), (dh, dlast, dall), lengths,
                                         var, zone, reset), *none)
        B, T, _, NH, DH = wx.shape
        dh = wx.new_zeros(B, T, NH, DH) if dh is None else dh
        dlast = wx.new_zeros(s_st.shape[1:]) if dlast is None else dlast
        dwx, dr, db, ds0 = torch.ops.flashseq.fused_rnn_triton_extras_bwd(
            dh, dlast, dall if ctx.all_states else None, wx, r, rh_st, hr_st, s_st, lengths,
            var, zone, reset, ctx.cell)
        return dwx, dr, db, ds0, *none


def _reference_backward(ctx, inputs, upstream, lengths, var, zone, reset):
    # create_graph=True: autograd's gradients of the reference loop with the same masks
    from .extras import Extras
    wanted = [t for t, need in zip(inputs, ctx.needs_input_grad[:4]) if need]
    pairs = [(i, g) for i, g in enumerate(upstream) if g is not None]
    result = [None] * 4
    if not wanted or not pairs:
        return tuple(result)
    with torch.enable_grad():
        extras = Extras(variational=var, zoneout=zone, reset=reset,
                        return_all_states=ctx.all_states)
        outputs = fused_rnn_reference(*inputs, cell=get_cell(ctx.cell), lengths=lengths,
                                      extras=extras)
        grads = iter(torch.autograd.grad([outputs[i] for i, _ in pairs], wanted,
                                         [g for _, g in pairs], create_graph=True,
                                         allow_unused=True))
    for i, need in enumerate(ctx.needs_input_grad[:4]):
        if need:
            result[i] = next(grads)
    return tuple(result)


def fused_rnn_triton_extras(wx, r, b, states, *, cell, lengths=None, extras=None):
    """``fused_rnn`` with extras on the Triton kernels (layouts: the ``fused_rnn`` docstring;
    ``extras``: an ``extras.Extras`` or None, for a LayerNorm cell without extras)."""
    cell = get_cell(cell) if isinstance(cell, str) else cell
    if extras is not None and extras.dropconnect is not None:
        r = r * extras.dropconnect  # once for the sequence; autograd gives d r the mask
    get = (lambda name: None) if extras is None else (lambda name: getattr(extras, name))
    all_states = bool(extras is not None and extras.return_all_states)
    return FusedRNNTritonExtrasFunction.apply(wx, r, b, states, lengths, get("variational"),
                                              get("zoneout"), get("reset"), cell.name,
                                              all_states)
