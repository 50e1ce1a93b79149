"""``backend="cpu"``: the compiled C++ loop of csrc/cpu/ (float32 and float64, any NH and DH).

The whole time loop runs in C++: per step one GEMM ``h_prev @ r`` per head and one fused
pointwise pass from the cell's header in csrc/cells/, parallel over (head, batch) rows. The
pointwise pass runs on AVX2 vectors when the machine that built the extension has AVX2
(flashseq/_jit.py chooses the flags); for float32 LSTM and GRU on a CPU with AVX-512F it runs 32
units at a time as two independent 16-lane vectors, so two dependency chains overlap
(csrc/cpu/pointwise_avx512.cpp); the float32 LSTM forward without gradients updates its cells
through a forced-inline copy of the cell's formulas there (lstm_update16: the shared cell header
compiled to an out-of-line call), and the float32 LSTM training forward (which saves the gates)
and the backward's pointwise pass through their own (csrc/cpu/lstm_train_avx512.cpp). The backward is hand-written (reversed time, one GEMM per step
for d(h_prev), then d(r) and d(b) over all steps at once).

The per-step GEMM is csrc/cpu/step_gemm.h up to a live batch of 128 rows, at::mm (MKL) above:
the recurrent weight is packed once per call into contiguous column panels that every step
streams through a register tile (8 rows x 48 columns on AVX-512 for float32, 6 x 2 vectors on
AVX2), where at::mm would re-pack the weight on every step (the modules' r, a transposed view
of weight_hh, is packed 16 x 16 blocks at a time in AVX-512 registers). While a row computes step t, the
forward prefetches that row's wx (and its h output) of step t + 1 into L2. The crossover, the
AVX-512/AVX2 tile and the thread count are per-call knobs (cpu_config.py) that
``flashseq-tune --device cpu`` tunes per shape bucket; dispatch applies the cached choice.

Buffers of 256 KB and more (outputs, saved tensors, packed panels) come from
csrc/cpu/big_alloc.cpp: on Linux, when freed they are kept (256 MB at most by default) and
handed to the next call of about the same size, which then pays no page faults (sizes and
timings in csrc/cpu/big_alloc.h). ``FLASHSEQ_CPU_BUFFER_CACHE_MB`` (read once, when the
extension is loaded) sets that bound, 0 keeps nothing; ``cpu_buffer_cache_bytes`` and
``empty_cpu_buffer_cache`` below (exported by flashseq.ops) show and free what is kept.

What the forward keeps for the backward (only when a gradient is needed):
``saved_gates [T, NH, B, K, DH]``, K values per unit chosen by the cell header (LSTM and GRU
their gate activations, GRU also rh_n, sLSTM its four pre-activations, Elman nothing), and
``saved_states [T, S-1, NH, B, DH]``, the states other than h after every step (LSTM c, sLSTM
c, n, m). h after every step is the output itself, so it is not stored twice.

With ``lengths``, each step's GEMM covers rows 0 .. live[t]-1 only, live[t] being one past the
last row still running (csrc/cpu/fused_rnn_cpu.h, ``live_rows``): in the length-sorted order a
PackedSequence gives, no finished row is multiplied; in any other order the bound is safe but
looser. d(r) multiplies each row's own valid steps. This needs no reordering of the data (an
earlier version that sorted rows and ran time segments was slower than one full pass: 144 vs
108 ms). GRU B=16 T=512 H=128, lengths spread 1..T, fwd+bwd, 1 thread: 97 ms against 117 ms
for the padded batch.

The C++ functions are wrapped as the ``torch.library`` custom ops ``flashseq::fused_rnn_cpu_fwd``
and ``flashseq::fused_rnn_cpu_bwd`` with fake implementations, called by one autograd Function,
so ``torch.compile`` traces through ``fused_rnn(..., backend="cpu")``.
"""
from typing import Optional

import torch
from torch import Tensor

from flashseq import _jit

from . import cpu_config, cpu_extras
from .double_backward import reference_backward

SERVED_DTYPES = (torch.float32, torch.float64)

# The extras (dropconnect, variational dropout, zoneout, reset, return_all_states) and the
# LayerNorm cells run on the extras loop of cpu_extras.py; fused_rnn routes them there.
SERVES_EXTRAS = True


def unavailable_reason(device):
    """Why the compiled loop cannot run on ``device`` (not a CPU, or no extension), else None."""
    if device.type != "cpu":
        return f"the compiled CPU loop runs on CPU tensors only, not {device.type}"
    return _jit.extension_error()


def unsupported_reason(problem):
    """Why this call is not served (float16/bfloat16), else None."""
    if problem.dtype not in SERVED_DTYPES:
        return f"dtype {problem.dtype} is not served (float32 and float64 only)"
    return None


def _layout(cell: str):
    """(G, S, K): gates, states and values saved per unit and step, as the C++ loop has them."""
    return tuple(_jit.extension().cell_layout(cell))


def _forward_loop(wx, r, b, states, lengths, cell, save):
    return tuple(_jit.extension().fused_rnn_forward(wx, r, b, states, lengths, cell, save))


@torch.library.custom_op("flashseq::fused_rnn_cpu_fwd", mutates_args=())
def fused_rnn_cpu_fwd(wx: Tensor, r: Tensor, b: Tensor, states: Tensor, lengths: Optional[Tensor],
                      cell: str, save: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Forward loop. Layouts as ``fused_rnn``; returns (h [B, T, NH, DH] (time-major in memory
    when wx is, ``is_time_major``), last_states
    [S, B, NH, DH], saved_gates [T, NH, B, K, DH], saved_states [T, S-1, NH, B, DH]), the saved
    tensors with T replaced by 0 unless ``save``."""
    return _forward_loop(wx, r, b, states, lengths, cell, save)


def is_time_major(wx) -> bool:
    """Whether wx [B, T, G, NH, DH] (B, T > 1) is a view of a dense [T, B, G, NH, DH] buffer, as
    the projection of a time-major input gives it. The loop then reads each step's rows as
    adjacent memory and returns h [B, T, NH, DH] as a view of a time-major buffer too."""
    B, T, G, NH, DH = wx.shape
    return (B > 1 and T > 1 and wx.stride()[2:] == (NH * DH, DH, 1)
            and wx.stride(0) == G * NH * DH and wx.stride(1) == B * G * NH * DH)


@fused_rnn_cpu_fwd.register_fake
def _fused_rnn_cpu_fwd_fake(wx, r, b, states, lengths, cell, save):
    B, T, _, NH, DH = wx.shape
    _, S, K = _layout(cell)
    steps = T if save else 0
    h = (wx.new_empty(T, B, NH, DH).transpose(0, 1) if is_time_major(wx)
         else wx.new_empty(B, T, NH, DH))
    return (h, wx.new_empty(S, B, NH, DH),
            wx.new_empty(steps, NH, B, K, DH), wx.new_empty(steps, S - 1, NH, B, DH))


@torch.library.custom_op("flashseq::fused_rnn_cpu_bwd", mutates_args=())
def fused_rnn_cpu_bwd(dh: Optional[Tensor], d_last: Optional[Tensor], h: Tensor, states: Tensor,
                      r: Tensor, saved_gates: Tensor, saved_states: Tensor,
                      lengths: Optional[Tensor], cell: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward loop: upstream dh [B, T, NH, DH] and d_last [S, B, NH, DH] (None = zero) and
    what the forward saved -> (d_wx [B, T, G, NH, DH] (time-major in memory when h is and
    lengths is None), d_r [G, NH, DH, DH] with r's strides
    (``empty_like``), d_b [G, NH, DH], d_states [S, B, NH, DH])."""
    return _backward_loop(dh, d_last, h, states, r, saved_gates, saved_states, lengths, cell)


def _backward_loop(dh, d_last, h, states, r, saved_gates, saved_states, lengths, cell):
    return tuple(_jit.extension().fused_rnn_backward(
        dh, d_last, h, states, r, saved_gates, saved_states, lengths, cell))


def _eager(*tensors) -> bool:
    """True when plain eager tensors can skip the custom-op wrapper: its first call imports
    torch._dynamo and with it triton (1-2 s, see tests/test_import.py). torch.compile, export,
    jit.trace and fake/functional tensors keep going through the ops."""
    return (not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and all(t is None or type(t) is Tensor for t in tensors))


@fused_rnn_cpu_bwd.register_fake
def _fused_rnn_cpu_bwd_fake(dh, d_last, h, states, r, saved_gates, saved_states, lengths, cell):
    B, T, NH, DH = h.shape
    G, S, _ = _layout(cell)
    time_major = (lengths is None and B > 1 and T > 1 and h.stride(0) == NH * DH
                  and h.stride(1) == B * NH * DH)  # as the C++ backward decides
    d_wx = (h.new_empty(T, B, G, NH, DH).transpose(0, 1) if time_major
            else h.new_empty(B, T, G, NH, DH))
    return (d_wx, torch.empty_like(r), r.new_empty(G, NH, DH),
            states.new_empty(S, B, NH, DH))


class FusedRnnCpuFunction(torch.autograd.Function):
    """Autograd of the compiled loop: forward saves h, the inputs and the saved per-step
    tensors; backward runs the C++ backward once, or, under ``create_graph=True``, the
    differentiable ``double_backward.reference_backward`` (which is why wx and b are kept)."""

    @staticmethod
    def forward(ctx, wx, r, b, states, lengths, cell, save, config=None):
        forward = _forward_loop if _eager(wx, r, b, states, lengths) else fused_rnn_cpu_fwd
        with cpu_config.applied(config):  # the tuned knobs (cpu_config.py), restored after
            h, last_states, saved_gates, saved_states = forward(wx, r, b, states, lengths, cell,
                                                                save)
        ctx.cpu_config = config
        if save:
            ctx.save_for_backward(h, states, r, saved_gates, saved_states, lengths, wx, b)
        ctx.cell = cell
        ctx.set_materialize_grads(False)  # a missing upstream gradient stays None: no zeros
        return h, last_states

    @staticmethod
    def backward(ctx, dh, d_last):
        h, states, r, saved_gates, saved_states, lengths, wx, b = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a backward autograd can differentiate
            return (*reference_backward(ctx.cell, (wx, r, b, states), ctx.needs_input_grad[:4],
                                        (dh, d_last), lengths), None, None, None, None)
        backward = (_backward_loop if _eager(dh, d_last, h, states, r, saved_gates, saved_states,
                                             lengths) else fused_rnn_cpu_bwd)
        with cpu_config.applied(ctx.cpu_config):
            d_wx, d_r, d_b, d_states = backward(
                dh, d_last, h, states, r, saved_gates, saved_states, lengths, ctx.cell)
        # gradients in argument order: wx, r, b, states, lengths, cell, save, config
        return d_wx, d_r, d_b, d_states, None, None, None, None


def fused_rnn(wx, r, b, states, *, cell, lengths, extras=None):
    """``fused_rnn`` on the compiled CPU loop; arguments and results as
    ``flashseq.ops.fused_rnn`` (layouts in its docstring), ``states`` always given. A call with
    ``extras`` (extras.Extras) or a LayerNorm cell runs on cpu_extras.py's loop."""
    if extras is not None or cell.name in cpu_extras.LAYERNORM_CELLS:
        return cpu_extras.fused_rnn(wx, r, b, states, cell=cell, lengths=lengths, extras=extras)
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (wx, r, b, states))
    # Any strides are fine: the C++ side re-lays r, b and states out for its loop anyway, so a
    # .contiguous() here would only add a copy (r from a permuted nn.LSTM weight is 4 MB at H=512).
    # the tuning cache's config for this problem (flashseq-tune), else the defaults
    config = cpu_config.for_call(cell.name, wx)
    return FusedRnnCpuFunction.apply(wx, r, b, states, lengths, cell.name, save, config)


def cpu_buffer_cache_bytes() -> int:
    """Bytes of freed CPU-loop buffers kept now for the next call (0 when the extension is not
    loaded in this process; it is not built or loaded to answer).

    On Linux the compiled CPU loop keeps freed buffers of 256 KB and more (such as h, the
    tensors saved for the backward, d(wx) and the packed recurrent weight; elsewhere none) so
    that the next call of about the same size reuses them instead of page-faulting and zeroing
    fresh memory, which cost more than the computation at tens of MB per call (numbers in
    csrc/cpu/big_alloc.h). At most $FLASHSEQ_CPU_BUFFER_CACHE_MB megabytes (default 256; 0
    keeps none) and 32 buffers are kept; past that the longest-kept ones are freed. Buffers
    still held by tensors are not counted."""
    module = _jit.loaded_extension()
    return 0 if module is None else int(module._buffer_cache_bytes())


def empty_cpu_buffer_cache() -> None:
    """Return every kept CPU-loop buffer (``cpu_buffer_cache_bytes``) to the system. Buffers in
    use by live tensors are kept again when those are freed; the next call allocates fresh
    memory. Does nothing when the extension is not loaded in this process (never builds it)."""
    module = _jit.loaded_extension()
    if module is not None:
        module._empty_buffer_cache()


def workspace_bytes(problem):
    """Bytes the forward allocates: h [B, T, NH, DH] and the last states and, when a gradient
    is needed, saved_gates [T, NH, B, K, DH] and saved_states [T, S-1, NH, B, DH], all in wx's
    dtype (the C++ loop indexes with int64: memory is the only limit)."""
    if problem.extras:  # extras or a LayerNorm cell: cpu_extras.py's loop
        return cpu_extras.workspace_bytes(problem)
    unit = problem.batch * problem.heads * problem.head_dim * problem.dtype.itemsize
    S = problem.cell.num_states
    need = (problem.steps + S) * unit
    if problem.needs_grad:
        K = _layout(problem.cell.name)[2]
        need += problem.steps * (K + S - 1) * unit
    return need
