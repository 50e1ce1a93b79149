"""Test setup shared by every test module.

Without a CUDA device the Triton kernels run under the interpreter, which must be switched on
before triton is first imported, i.e. here.
"""
import os
import shutil

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()
HAS_NVCC = shutil.which("nvcc") is not None


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "nvcc: needs the nvcc compiler (skipped without it)")
    config.addinivalue_line("markers", "slow: long-running; run with --runslow")
    config.addinivalue_line("markers", "sanitizer: GPU test that bench/gpu_session.sh also runs under "
                                       "compute-sanitizer (needs a CUDA device)")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if ("gpu" in item.keywords or "sanitizer" in item.keywords) and not HAS_CUDA:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device; none found"))
        if "nvcc" in item.keywords and not HAS_NVCC:
            item.add_marker(pytest.mark.skip(reason="needs nvcc on PATH; not found"))
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="slow; run with --runslow"))


@pytest.fixture
def nan_poison_empty(monkeypatch):
    """Make torch.empty / empty_like / new_empty return NaN-filled floating tensors, so an output
    element a kernel never writes fails the comparison instead of passing by luck."""
    def poisoned(fn):
        def wrapper(*args, **kwargs):
            t = fn(*args, **kwargs)
            if t.is_floating_point():
                t.fill_(float("nan"))
            return t
        return wrapper
    monkeypatch.setattr(torch, "empty", poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", poisoned(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", poisoned(torch.Tensor.new_empty))
