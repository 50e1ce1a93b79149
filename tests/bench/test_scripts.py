"""bench/gpu_session.sh's steps (README's set-up commands and .ci/run: tests/test_packaging.py)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.suites import SUITES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_session_dry_run_lists_every_step(tmp_path):
    script = ROOT / "bench" / "gpu_session.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = {**os.environ, "FLASHSEQ_PEER_WHEELS": str(tmp_path)}
    done = subprocess.run(["bash", str(script), "--dry-run", "--tiny"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "pytest -q -m gpu" in out
    assert "sanitizer" in out
    assert f"no wheels in {tmp_path}" in out
    for suite in SUITES:
        assert f"-m bench {suite} --tiny" in out and f"{suite}.json" in out and f"{suite}.md" in out


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine has nvidia-smi")
def test_gpu_session_without_gpu_exits_2():
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no GPU" in done.stderr


def test_gpu_session_rejects_unknown_arguments():
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), "--bogus"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--bogus" in done.stderr
