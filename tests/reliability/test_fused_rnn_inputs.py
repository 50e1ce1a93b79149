"""fused_rnn under hostile inputs, on every back end: any strides of every argument, NaN in the
padding past a row's length, lengths out of range under torch.compile, bfloat16 under the Triton
interpreter, and sizes no device can hold.

Each test loops over the back ends itself (reference, cpu, triton; triton under the interpreter
on CPU, on tiny shapes) and reports every back end that fails, so one test covers one promise.
Several take 8-15 s on the 2-core CPU box: the interpreter needs about a second per Triton
forward+backward even at B=4, T=5, and each test needs 8-12 of them (or, for T = 2**40, a
fresh process importing torch and triton).
"""
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from flashseq.cells import get_cell
from flashseq.kernels.fused_rnn import backends, fused_rnn
from flashseq.kernels.fused_rnn.problem import Problem
from tests.conftest import HAS_CUDA
from tests.helpers import assert_close, make_rnn_inputs

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"
BACKENDS = ("reference", "cpu", "triton")

pytestmark = pytest.mark.skipif(not HAS_CUDA and not INTERPRETING,
                                reason="the triton back end needs CUDA or TRITON_INTERPRET=1")

B, T, NH, DH = 4, 5, 2, 4
LENGTHS = [5, 0, 3, 2]  # any order, a row of length 0 and one of T


def _setting(backend):
    """(dtype, device, tolerance) a back end is checked in: float64 where it runs, float32 on
    Triton (comparisons are against the same back end, so only rounding may differ)."""
    if backend == "triton":
        return torch.float32, TRITON_DEVICE, 1e-6
    return torch.float64, "cpu", 1e-12


def _loss_weights(cell, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    dh = torch.randn(B, T, NH, DH, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    dlast = torch.randn(cell.num_states, B, NH, DH, generator=g, dtype=torch.float64)
    return dh, dlast.to(dtype=dtype, device=device)


def _run(backend, cell, bases, make_args, lengths, weights):
    """Outputs of fused_rnn on ``make_args(*leaves)`` and the gradients of a weighted loss
    with respect to the leaves (fresh copies of ``bases``)."""
    leaves = [t.detach().clone().requires_grad_() for t in bases]
    h, last = fused_rnn(*make_args(*leaves), cell=cell.name, lengths=lengths, backend=backend)
    dh, dlast = weights
    grads = torch.autograd.grad((h * dh).sum() + (last * dlast).sum(), leaves)
    return [h, last, *grads]


NAMES = ("h", "last_states", "d wx", "d r", "d b", "d states")


def _compare(failures, label, got, expected, tol):
    for name, g, e in zip(NAMES, got, expected):
        try:
            assert_close(f"{label}: {name}", g, e, tol)
        except AssertionError as err:
            failures.append(str(err).splitlines()[0])


def _layouts(wx, r, b, states):
    """The same values in other strides: wx time-major, r transposed, b every other element of
    a wider tensor, states batch-major."""
    return (wx.transpose(0, 1).contiguous().transpose(0, 1),
            r.transpose(2, 3).contiguous().transpose(2, 3),
            torch.stack([b, torch.zeros_like(b)], dim=-1)[..., 0],
            states.transpose(0, 1).contiguous().transpose(0, 1))


def _expanded(wx, r, b, states):
    """Stride-0 views: one batch row of wx and of the states for all rows, one head of r and b
    for all heads."""
    return (wx[:1].expand(B, -1, -1, -1, -1), r[:, :1].expand(-1, NH, -1, -1),
            b[:, :1].expand(-1, NH, -1), states[:, :1].expand(-1, B, -1, -1))


def _dense(make_args):
    return lambda *leaves: [t.contiguous() for t in make_args(*leaves)]


def test_any_strides_of_every_argument_match_contiguous_ones():
    """Strided (t[::2]) and expanded (stride 0) lengths, and wx, r, b, states in other layouts
    or expanded, give the outputs and gradients of contiguous copies, on every back end."""
    cell = get_cell("lstm")
    strided_lengths = torch.tensor([v for v in LENGTHS for _ in range(2)])[::2]
    assert strided_lengths.stride() == (2,) and strided_lengths.tolist() == LENGTHS
    expanded_lengths = torch.tensor([3]).expand(B)
    failures = []
    for backend in BACKENDS:
        dtype, device, tol = _setting(backend)
        bases = make_rnn_inputs(cell, B, T, NH, DH, dtype=dtype, device=device, seed=11)
        weights = _loss_weights(cell, dtype, device, seed=12)
        for label, make_args, lengths, dense_lengths in (
                ("strided lengths, other layouts", _layouts, strided_lengths,
                 torch.tensor(LENGTHS)),
                ("expanded lengths and arguments", _expanded, expanded_lengths,
                 torch.full((B,), 3))):
            got = _run(backend, cell, bases, make_args, lengths, weights)
            expected = _run(backend, cell, bases, _dense(make_args), dense_lengths, weights)
            _compare(failures, f"{backend}, {label}", got, expected, tol)
    assert not failures, "\n".join(failures)


# The interpreter evaluates the cell on the padding before selecting it away (inf - inf there)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("poison", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_in_padding_leaves_every_gradient_finite(poison):
    """NaN (or inf) in wx at steps past a row's length changes nothing: outputs and all
    gradients equal those of finite padding, on every back end and cell."""
    lengths = torch.tensor(LENGTHS)
    past = torch.arange(T)[None, :] >= lengths[:, None]  # [B, T] steps that are padding
    failures = []
    for backend in BACKENDS:
        dtype, device, tol = _setting(backend)
        for cell_name in ("lstm", "gru", "slstm", "elman"):
            cell = get_cell(cell_name)
            wx, r, b, states = make_rnn_inputs(cell, B, T, NH, DH, dtype=dtype, device=device,
                                               seed=21)
            poisoned = wx.clone()
            poisoned[past.to(device)] = poison
            weights = _loss_weights(cell, dtype, device, seed=22)
            got = _run(backend, cell, (poisoned, r, b, states), lambda *a: a, lengths, weights)
            expected = _run(backend, cell, (wx, r, b, states), lambda *a: a, lengths, weights)
            _compare(failures, f"{backend}, {cell_name}", got, expected, tol)
    assert not failures, "\n".join(failures)


def test_nan_in_padding_leaves_second_derivatives_finite():
    """The same through a backward with create_graph=True (gradient penalties, gradgradcheck):
    first and second derivatives stay finite and equal those of finite padding."""
    lengths = torch.tensor(LENGTHS)
    past = torch.arange(T)[None, :] >= lengths[:, None]
    cell = get_cell("gru")
    failures = []
    for backend in BACKENDS:
        dtype, device, tol = _setting(backend)
        wx, r, b, states = make_rnn_inputs(cell, B, T, NH, DH, dtype=dtype, device=device, seed=25)
        poisoned = wx.clone()
        poisoned[past.to(device)] = float("nan")
        dh, dlast = _loss_weights(cell, dtype, device, seed=26)
        results = []
        for wx_in in (poisoned, wx):
            leaves = [t.detach().clone().requires_grad_() for t in (wx_in, r, b, states)]
            h, last = fused_rnn(*leaves, cell="gru", lengths=lengths, backend=backend)
            first = torch.autograd.grad((h * dh).sum() + (last * dlast).sum(), leaves,
                                        create_graph=True)
            penalty = sum((g * g).sum() for g in first)
            second = torch.autograd.grad(penalty, leaves)
            results.append([*first, *second])
        for i, (g, e) in enumerate(zip(*results)):
            try:
                assert_close(f"{backend}: {'first' if i < 4 else 'second'} derivative {i % 4}",
                             g, e, tol)
            except AssertionError as err:
                failures.append(str(err).splitlines()[0])
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("backend", ["auto", "reference", "cpu"])
def test_out_of_range_lengths_raise_under_torch_compile(backend):
    """A compiled fused_rnn (one graph) checks the values of lengths as eager does, whether
    the bad values come on the first call or after a good one."""
    torch._dynamo.reset()
    cell = get_cell("gru")
    wx, r, b, states = make_rnn_inputs(cell, B, T, NH, DH, dtype=torch.float64, seed=31)

    def run(wx, r, b, states, lengths):
        return fused_rnn(wx, r, b, states, cell="gru", lengths=lengths, backend=backend)

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    good = torch.tensor(LENGTHS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # auto's fallback note, if any
        got, expected = compiled(wx, r, b, states, good), run(wx, r, b, states, good)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        for bad in ([5, 0, 6, 2], [5, -1, 3, 2]):
            with pytest.raises(ValueError, match=r"lengths must lie in 0\.\.T = 0\.\.5"):
                compiled(wx, r, b, states, torch.tensor(bad))
        torch._dynamo.reset()
        fresh = torch.compile(run, fullgraph=True, backend="aot_eager")
        with pytest.raises(ValueError, match="lengths must lie in"):
            fresh(wx, r, b, states, torch.tensor([9, 9, 9, 9]))
    torch._dynamo.reset()


@pytest.mark.skipif(not INTERPRETING, reason="concerns the Triton interpreter only")
def test_bfloat16_under_the_triton_interpreter_is_refused():
    """Named: NotImplementedError saying why, before any kernel runs. auto (which considers
    triton on CUDA devices): falls back with one warning."""
    cell = get_cell("lstm")
    wx, r, b, states = make_rnn_inputs(cell, B, T, NH, 16, dtype=torch.bfloat16, seed=41)
    with pytest.raises(NotImplementedError, match="TRITON_INTERPRET=1"):
        fused_rnn(wx, r, b, states, cell="lstm", backend="triton")
    problem = Problem(cell, B, T, NH, 16, torch.bfloat16, torch.device("cuda"), False, False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backends._warned.clear()
        assert backends.choose_name("auto", problem) == "reference"
        assert backends.choose_name("auto", problem) == "reference"
    notes = [str(w.message) for w in caught if "interpreter" in str(w.message)]
    assert len(notes) == 1, [str(w.message) for w in caught]
    for dtype in (torch.float16, torch.float32):  # the interpreter gets these right
        fine = Problem(cell, B, T, NH, 16, dtype, torch.device("cpu"), False, False)
        assert backends.load("triton").unsupported_reason(fine) is None


def test_size_beyond_any_device_is_refused_by_every_backend_module():
    """size_error states the bytes and the device's memory for a call no machine can hold."""
    from flashseq.kernels.fused_rnn.problem import size_error

    cell = get_cell("lstm")
    for backend in BACKENDS:
        module = backends.load(backend)
        for needs_grad in (False, True):
            problem = Problem(cell, 1, 2**40, 1, 1, torch.float32, torch.device("cpu"), False,
                              needs_grad)
            message = size_error(module, problem)
            assert message and "T=1099511627776" in message and "GiB" in message, (backend,
                                                                                     message)
            small = Problem(cell, B, T, NH, DH, torch.float32, torch.device("cpu"), True,
                            needs_grad)
            assert size_error(module, small) is None


HUGE_T_SCRIPT = textwrap.dedent("""
    import os, sys, time
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch
    from flashseq.ops import available_backends, fused_rnn
    available_backends("cpu")  # loads (or builds) the extension before the clock starts
    G = 4
    for backend in sys.argv[1:]:
        for grad in (False, True):
            base = torch.zeros(1, 1, G, 1, 1, requires_grad=grad)
            wx = base.expand(1, 2**40, G, 1, 1)  # stride 0: a few bytes standing for 16 TiB
            start = time.perf_counter()
            try:
                fused_rnn(wx, torch.zeros(G, 1, 1, 1), torch.zeros(G, 1, 1), cell="lstm",
                          backend=backend)
                outcome = "no error"
            except Exception as err:
                outcome = type(err).__name__ + ": " + str(err).splitlines()[0]
            print(backend, grad, f"{time.perf_counter() - start:.2f}", outcome, flush=True)
""")


def test_huge_stride0_wx_raises_at_once_on_every_backend():
    """T = 2**40 with a stride-0 wx: ValueError naming the sizes within a second, before any
    step runs or any output is allocated (a separate process: without the check the reference
    back end steps through 2**40 steps)."""
    names = ["auto", *BACKENDS] if INTERPRETING or HAS_CUDA else ["auto", "reference", "cpu"]
    try:
        done = subprocess.run([sys.executable, "-c", HUGE_T_SCRIPT, *names], capture_output=True,
                              text=True, timeout=300)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"fused_rnn with T=2**40 did not return within 300 s: {err.stdout!r}")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 * len(names), done.stdout + done.stderr[-2000:]
    for line in lines:
        backend, grad, seconds, outcome = line.split(" ", 3)
        assert outcome.startswith("ValueError: ") and "T=1099511627776" in outcome, line
        assert float(seconds) < 1.0, line
