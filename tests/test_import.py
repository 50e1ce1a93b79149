"""``import flashseq`` stays light: no triton (nor torch._dynamo, which imports it) until a
Triton kernel or torch.compile is needed."""
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU-only call path, even on a GPU machine
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_cpu_lstm_call_leaves_triton_unimported():
    from flashseq import _jit

    # Build (or find) the CPU extension here first, so the subprocess loads it from the shared
    # cache instead of compiling it inside its timeout; its own path is what the test checks.
    _jit.extension_error()
    done = _run(
        "import sys, torch, flashseq\n"
        "print('after import:', sorted(m for m in ('triton', 'torch._dynamo') if m in sys.modules))\n"
        "y, _ = flashseq.LSTM(4, 8)(torch.randn(2, 3, 4, requires_grad=True))\n"
        "y.sum().backward()\n"
        "print('after call:', sorted(m for m in ('triton', 'torch._dynamo') if m in sys.modules))\n"
        "print('shape:', tuple(y.shape))\n")
    assert done.returncode == 0, done.stderr
    assert "after import: []" in done.stdout, done.stdout
    assert "after call: []" in done.stdout, done.stdout
    assert "shape: (2, 3, 8)" in done.stdout


def test_constant_result_mark_is_the_one_torch_sets(monkeypatch):
    # flashseq/_lazy_dynamo.py marks functions without importing torch._dynamo; under
    # torch.compile dynamo must find the very mark its own decorator sets.
    import torch._dynamo  # noqa: F401

    from flashseq import _lazy_dynamo

    def probe():
        return 0

    def ours():
        return 0

    expected = dict(vars(torch.compiler.assume_constant_result(probe)))
    assert expected, "torch's assume_constant_result sets no attribute any more"
    monkeypatch.delitem(sys.modules, "torch._dynamo")  # as at `import flashseq` time
    assert _lazy_dynamo.assume_constant_result(ours) is ours
    assert "torch._dynamo" not in sys.modules
    assert dict(vars(ours)) == expected
