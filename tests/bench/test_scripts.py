"""The shell entry points: .ci/run runs exactly the README's commands; gpu_session.sh's steps."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.suites import SUITES

ROOT = Path(__file__).resolve().parents[2]


def _readme_setup_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_readme_has_the_two_setup_commands():
    assert _readme_setup_commands() == ['pip install --no-build-isolation -e ".[dev]"',
                                        "python -m pytest -q"]
    assert "python -m bench quick" in (ROOT / "README.md").read_text()


def test_ci_runs_exactly_the_readme_commands():
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK)
    lines = [line.strip() for line in script.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "set -euo pipefail"
    commands = [line for line in lines if not line.startswith(("set ", "cd "))]
    assert commands == ['pip install torch==2.13.0 ninja "setuptools>=77"', *_readme_setup_commands()]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_session_dry_run_lists_every_step(tmp_path):
    script = ROOT / "bench" / "gpu_session.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = {**os.environ, "FLASHSEQ_PEER_WHEELS": str(tmp_path)}
    done = subprocess.run(["bash", str(script), "--dry-run", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "pytest -q -m gpu" in out
    assert "sanitizer" in out
    assert f"no wheels in {tmp_path}" in out
    for suite in SUITES:
        assert f"-m bench {suite} --quick" in out and f"{suite}.json" in out and f"{suite}.md" in out


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
