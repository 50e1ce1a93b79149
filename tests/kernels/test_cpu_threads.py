"""The compiled CPU loops run on torch's threads: the extension is built with OpenMP where
torch's at::parallel_for is OpenMP's (without -fopenmp its pragma was dropped and every loop ran
on one thread at any torch.set_num_threads), and results at 1 and 2 threads agree."""
from __future__ import annotations

import platform

import pytest
import torch

import flashseq
from flashseq import _jit

pytestmark = pytest.mark.skipif(_jit.extension_error() is not None,
                                reason="the CPU extension does not build here")


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.skipif(platform.system() != "Linux" or not torch.backends.openmp.is_available(),
                    reason="torch's parallel_for is OpenMP's only in OpenMP builds (Linux here)")
def test_parallel_for_runs_on_torchs_threads(threads):
    assert "-fopenmp" in _jit.compile_flags()
    ext = _jit.extension()
    threads(2)
    assert ext._parallel_for_threads(64) == 2
    threads(1)
    assert ext._parallel_for_threads(64) == 1


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("grad", [False, True])
def test_one_and_two_threads_agree(kind, grad, threads):
    torch.manual_seed(0)
    m = getattr(flashseq, kind)(24, 40, num_layers=2)  # B=8: the LSTM takes the folded projection
    x = torch.randn(9, 8, 24)
    results = []
    for n in (1, 2):
        threads(n)
        xi = x.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            y, _ = m(xi)
        out = [y.detach()]
        if grad:
            grads = torch.autograd.grad(y.square().sum(), [xi, *m.parameters()])
            out += list(grads)
        results.append(out)
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
