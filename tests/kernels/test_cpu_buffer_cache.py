"""The freed buffers the compiled CPU loop keeps for its next call (csrc/cpu/big_alloc.cpp):
flashseq.ops.cpu_buffer_cache_bytes / empty_cpu_buffer_cache and $FLASHSEQ_CPU_BUFFER_CACHE_MB
(read once, when the extension is loaded: the settings that need a fresh process run in one)."""
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import flashseq
from flashseq import _jit
from flashseq.cells import CELLS
from flashseq.kernels.fused_rnn.reference import fused_rnn_reference
from tests.helpers import TOLERANCE, assert_close, make_rnn_inputs

ROOT = pathlib.Path(__file__).resolve().parents[2]
# h [B, T, NH, DH] float32 = 512 KB and packed weight panels of about 270 KB: both kept when freed
SHAPE = dict(B=16, T=64, NH=1, DH=128)


def run_checked(seed, with_grad):
    """One LSTM call on backend="cpu" of SHAPE, checked against the float64 reference (forward,
    and every gradient when ``with_grad``); the outputs are gone when it returns."""
    cell = CELLS["lstm"]
    wx, r, b, states = make_rnn_inputs(cell, **SHAPE, dtype=torch.float64, seed=seed)
    leaves = [t.float().requires_grad_(with_grad) for t in (wx, r, b, states)]
    ref_leaves = [t.clone().requires_grad_(with_grad) for t in (wx, r, b, states)]
    h, last = flashseq.ops.fused_rnn(*leaves, cell="lstm", backend="cpu")
    h_ref, last_ref = fused_rnn_reference(*ref_leaves, cell=cell)
    tol = TOLERANCE[torch.float32]
    assert_close("h", h, h_ref, tol)
    assert_close("last_states", last, last_ref, tol)
    if with_grad:
        gen = torch.Generator().manual_seed(seed + 1)
        grad_h = torch.randn(h_ref.shape, generator=gen, dtype=torch.float64)
        grad_last = torch.randn(last_ref.shape, generator=gen, dtype=torch.float64)
        grads = torch.autograd.grad((h * grad_h.float()).sum() + (last * grad_last.float()).sum(),
                                    leaves)
        grads_ref = torch.autograd.grad((h_ref * grad_h).sum() + (last_ref * grad_last).sum(),
                                        ref_leaves)
        for name, g, g_ref in zip(("d_wx", "d_r", "d_b", "d_states"), grads, grads_ref):
            assert_close(name, g, g_ref, tol)


@pytest.fixture
def default_limit():
    """The default limit in this process whatever $FLASHSEQ_CPU_BUFFER_CACHE_MB says here (the
    variable itself is tested in subprocesses); restored afterwards."""
    ext = _jit.extension()
    old = ext._set_buffer_cache_limit(_jit.DEFAULT_BUFFER_CACHE_MB << 20)
    yield ext
    ext._set_buffer_cache_limit(old)


def test_buffers_are_kept_emptied_and_results_stay_right(default_limit):
    flashseq.ops.empty_cpu_buffer_cache()
    assert flashseq.ops.cpu_buffer_cache_bytes() == 0
    run_checked(seed=1, with_grad=False)
    kept = flashseq.ops.cpu_buffer_cache_bytes()
    assert kept >= 512 << 10, f"only {kept} bytes kept after a call whose h is 512 KB"
    flashseq.ops.empty_cpu_buffer_cache()
    assert flashseq.ops.cpu_buffer_cache_bytes() == 0
    run_checked(seed=2, with_grad=True)  # fresh memory after emptying: still right
    assert flashseq.ops.cpu_buffer_cache_bytes() > 0
    run_checked(seed=3, with_grad=True)  # and on the kept buffers again
    flashseq.ops.empty_cpu_buffer_cache()
    assert flashseq.ops.cpu_buffer_cache_bytes() == 0


def test_lowering_the_limit_frees_what_is_past_it(default_limit):
    run_checked(seed=4, with_grad=False)
    assert flashseq.ops.cpu_buffer_cache_bytes() > 0
    default_limit._set_buffer_cache_limit(0)
    assert flashseq.ops.cpu_buffer_cache_bytes() == 0
    run_checked(seed=5, with_grad=False)
    assert flashseq.ops.cpu_buffer_cache_bytes() == 0


def test_unset_or_empty_variable_gives_the_default(monkeypatch):
    monkeypatch.delenv(_jit.BUFFER_CACHE_ENV, raising=False)
    assert _jit.buffer_cache_limit_bytes() == 256 << 20
    monkeypatch.setenv(_jit.BUFFER_CACHE_ENV, " ")
    assert _jit.buffer_cache_limit_bytes() == 256 << 20
    monkeypatch.setenv(_jit.BUFFER_CACHE_ENV, "3")
    assert _jit.buffer_cache_limit_bytes() == 3 << 20


# Run in a fresh process with the variable set: the counters before any call (nothing may be
# built or loaded for them), then two calls, then the limit the extension was given.
SCRIPT = r"""
import warnings
warnings.simplefilter("always")  # count every warning, not one per place
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch, flashseq
    from flashseq import _jit
    print("before:", flashseq.ops.cpu_buffer_cache_bytes(), _jit._load.cache_info().currsize)
    flashseq.ops.empty_cpu_buffer_cache()
    print("loaded after empty:", _jit._load.cache_info().currsize)
    for _ in range(2):
        wx = torch.randn(16, 64, 4, 1, 128)
        r = torch.randn(4, 1, 128, 128) / 12
        h, last = flashseq.ops.fused_rnn(wx, r, torch.zeros(4, 1, 128), cell="lstm",
                                         backend="cpu")
        del h, last
        print("kept:", flashseq.ops.cpu_buffer_cache_bytes())
    print("limit:", _jit.extension()._set_buffer_cache_limit(0))
for w in caught:
    print("WARNING:", w.category.__name__, w.message)
"""


def run_with_variable(value):
    _jit.extension_error()  # build (or find) the extension here; the subprocess loads it
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env[_jit.BUFFER_CACHE_ENV] = value
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_zero_keeps_nothing_from_the_first_call_on():
    out = run_with_variable("0")
    assert "before: 0 0\n" in out, out  # answered without loading (or building) the extension
    assert "loaded after empty: 0\n" in out, out
    assert out.count("kept: 0\n") == 2, out
    assert "limit: 0\n" in out, out
    assert "WARNING" not in out, out


@pytest.mark.parametrize("value", ["lots", "-5", "1.5"])
def test_bad_value_warns_once_and_keeps_the_default(value):
    out = run_with_variable(value)
    warned = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert len(warned) == 1, out
    assert "RuntimeWarning" in warned[0] and _jit.BUFFER_CACHE_ENV in warned[0], warned
    assert repr(value) in warned[0] and "0 keeps no buffers" in warned[0], warned
    kept = [int(line.split()[1]) for line in out.splitlines() if line.startswith("kept:")]
    assert len(kept) == 2 and all(k > 0 for k in kept), out
    assert f"limit: {256 << 20}\n" in out, out
