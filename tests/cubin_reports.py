"""Running a kernel family's ``triton_compile`` module in a subprocess, for the cubin tests.

The compile must run without ``TRITON_INTERPRET`` (the interpreter compiles nothing), so it gets
its own process; each line it prints is one kernel's JSON resource report.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compile_reports(module: str, args: list[str], timeout: float) -> list[dict]:
    """``python -m <module> <args>`` from the repository root with the interpreter switched
    off; returns its reports in print order (the test fails with the compiler's stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"compile subprocess failed:\n{proc.stderr[-4000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines()]
