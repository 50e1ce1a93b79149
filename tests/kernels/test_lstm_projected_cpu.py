"""The no_grad float32 LSTM layer with its input projection folded into the recurrence
(csrc/cpu/lstm_projected_forward.cpp, lstm_fused_avx512.cpp), against torch.nn.LSTM in float64:
the op itself over hidden sizes that do and do not fill the 16-unit blocks, batch sizes that split
into uneven row tiles (and B=1), input sizes from 1 up, with and without bias and initial states;
saturated gates; and the modules' no_grad forward that takes it (flashseq/nn/fast_path.py), with
its path counter, next to the calls that must not take it."""
import pytest
import torch

from flashseq.kernels.fused_rnn import cpu as cpu_backend
from tests.helpers import TOLERANCE, assert_close, cpu_has_avx512_tile, lstm_module_pair

pytestmark = pytest.mark.skipif(
    not cpu_has_avx512_tile(), reason="the projected LSTM step needs the AVX-512 tile (CPU, build)")

TOL = TOLERANCE[torch.float32]


def _ext():
    return cpu_backend._jit.extension()


def _reference(x, w_ih, w_hh, b_ih, b_hh, h0, c0):
    """torch.nn.LSTM in float64 with these weights: (y [T, B, H], h_T, c_T)."""
    I, H = w_ih.shape[1], w_hh.shape[1]
    ref = torch.nn.LSTM(I, H, bias=b_ih is not None, dtype=torch.float64)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(w_ih)
        ref.weight_hh_l0.copy_(w_hh)
        if b_ih is not None:
            ref.bias_ih_l0.copy_(b_ih)
            ref.bias_hh_l0.copy_(b_hh)
        y, (h, c) = ref(x.double(), (h0.double()[None], c0.double()[None]))
    return y, h[0], c[0]


def _inputs(T, B, I, H, bias=True, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=1.0):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * s

    w_ih = rnd(4 * H, I, s=scale / I ** 0.5)
    w_hh = rnd(4 * H, H, s=scale / H ** 0.5)
    b_ih, b_hh = (rnd(4 * H, s=0.5), rnd(4 * H, s=0.5)) if bias else (None, None)
    return rnd(T, B, I), w_ih, w_hh, b_ih, b_hh, rnd(B, H), rnd(B, H)


def _run(x, w_ih, w_hh, b_ih, b_hh, h0, c0):
    bias = (b_ih + b_hh).float() if b_ih is not None else None
    return _ext().lstm_projected_forward(x.float(), w_ih.float(), w_hh.float(), bias,
                                         h0.float(), c0.float())


# H: one block, a partial block, several blocks with a masked tail; B: 1, odd, tiles of 6 and
# uneven splits (13 = 5 + 4 + 4); I: 1, smaller and larger than H.
@pytest.mark.parametrize("T,B,I,H", [(5, 1, 7, 16), (4, 5, 1, 40), (3, 6, 30, 7), (6, 7, 24, 33),
                                     (3, 13, 100, 48), (2, 20, 17, 100), (1, 9, 64, 31)])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_op_matches_float64_lstm(T, B, I, H, bias):
    args = _inputs(T, B, I, H, bias=bias, seed=T * 1000 + B * 10 + H)
    y_ref, h_ref, c_ref = _reference(*args)
    ext = _ext()
    ext._lstm_projected_calls(True)
    y, h, c = _run(*args)
    assert ext._lstm_projected_calls(True) == 1
    assert y.dtype == torch.float32 and y.shape == (T, B, H)
    assert_close("y", y.double(), y_ref, TOL)
    assert_close("h_T", h.double(), h_ref, TOL)
    assert_close("c_T", c.double(), c_ref, TOL)


def test_op_saturated_gates_stay_finite():
    # weights 40x the usual scale: pre-activations in the hundreds (sigmoid and tanh at 0 / +-1)
    args = _inputs(4, 7, 12, 20, scale=40.0, seed=5)
    y_ref, h_ref, c_ref = _reference(*args)
    y, h, c = _run(*args)
    assert torch.isfinite(y).all() and torch.isfinite(c).all()
    assert_close("y", y.double(), y_ref, TOL)
    assert_close("c_T", c.double(), c_ref, TOL)


def test_op_leaves_callers_states_alone():
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = (t.float() for t in _inputs(3, 8, 5, 20, seed=2))
    before = (h0.clone(), c0.clone())
    _ext().lstm_projected_forward(x, w_ih, w_hh, b_ih + b_hh, h0, c0)
    assert torch.equal(h0, before[0]) and torch.equal(c0, before[1])


def test_op_rejects_mismatched_weights():
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = (t.float() for t in _inputs(3, 8, 5, 20, seed=2))
    with pytest.raises(RuntimeError, match="w_ih"):
        _ext().lstm_projected_forward(x, w_ih[:, :4], w_hh, None, h0, c0)
    with pytest.raises(RuntimeError, match="x must be a float32"):
        _ext().lstm_projected_forward(x.double(), w_ih, w_hh, None, h0, c0)


def test_pays_only_where_measured():
    ext = _ext()
    assert ext.lstm_projected_pays(32, 64, 256) and ext.lstm_projected_pays(16, 512, 512)
    assert ext.lstm_projected_pays(4, 128, 128) and ext.lstm_projected_pays(6, 512, 512)
    assert not ext.lstm_projected_pays(1, 256, 256)       # one row: the projection GEMM wins
    assert not ext.lstm_projected_pays(4, 512, 512)       # few rows for 8 MB of weights a step
    assert not ext.lstm_projected_pays(8, 1024, 1024)     # 32 MB of weights per step
    old = ext._set_projected_lstm(False)
    try:
        assert not ext.lstm_projected_pays(32, 64, 256)
    finally:
        ext._set_projected_lstm(old)


@pytest.mark.parametrize("options", [dict(), dict(batch_first=True), dict(bidirectional=True),
                                     dict(bias=False)],
                         ids=["time_major", "batch_first", "bidirectional", "no_bias"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["zero_states", "hx"])
def test_module_no_grad_forward_takes_it_and_matches_torch(options, with_hx):
    I, H, L, B, T = 24, 40, 2, 9, 6
    ref, ours = lstm_module_pair(I, H, L, **options)
    D = 2 if options.get("bidirectional") else 1
    g = torch.Generator().manual_seed(11)
    shape = (B, T, I) if options.get("batch_first") else (T, B, I)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    hx = tuple(torch.randn(L * D, B, H, generator=g, dtype=torch.float64) for _ in range(2))
    ext = _ext()
    ext._lstm_projected_calls(True)
    with torch.no_grad():
        y, (h, c) = ours(x.float(), tuple(t.float() for t in hx) if with_hx else None)
        y_ref, (h_ref, c_ref) = ref(x, hx if with_hx else None)
    assert ext._lstm_projected_calls(True) == L * D  # every layer and direction took it
    assert_close("y", y.double(), y_ref, TOL)
    assert_close("h_n", h.double(), h_ref, TOL)
    assert_close("c_n", c.double(), c_ref, TOL)


def test_module_calls_that_must_not_take_it():
    ref, ours = lstm_module_pair(24, 40, 1)
    x = torch.randn(6, 9, 24)
    ext = _ext()
    ext._lstm_projected_calls(True)
    y, _ = ours(x.requires_grad_(True))           # a gradient is wanted: the training loop
    y.sum().backward()
    with torch.no_grad():
        ours(torch.randn(6, 1, 24))                 # B=1: lstm_projected_pays says no
        ours.double()(torch.randn(6, 9, 24, dtype=torch.float64))  # float64
    assert ext._lstm_projected_calls(True) == 0
    ours.float()
    old = ext._set_projected_lstm(False)
    try:
        with torch.no_grad():
            y, _ = ours(x.detach())
    finally:
        ext._set_projected_lstm(old)
    assert ext._lstm_projected_calls(True) == 0
    with torch.no_grad():
        assert_close("y (switched off)", y.double(), ref(x.detach().double())[0], TOL)


def test_module_no_grad_forward_applies_the_tuned_knobs():
    # a tuned (here: overridden) one-thread cap reaches the folded no_grad loop too
    from flashseq.kernels.fused_rnn import cpu_config

    _, ours = lstm_module_pair(24, 40, 1)
    x = torch.randn(6, 9, 24)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    ext = _ext()
    try:
        ext._lstm_projected_calls(True)
        with cpu_config.override(cpu_config.CpuConfig(threads=1)), torch.no_grad():
            ours(x)
        run = cpu_config.last_run()
    finally:
        torch.set_num_threads(before)
    assert ext._lstm_projected_calls(True) == 1
    assert run.source == "override" and run.threads == 1
