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
    env = {**os.environ, "FLASHSEQ_PEER_WHEELS": str(tmp_path),
           "FLASHSEQ_SESSION_CACHE": str(tmp_path / "session")}
    env.pop("FLASHSEQ_GPU_SLUG", None)
    done = subprocess.run(["bash", str(script), "--dry-run", "--tiny"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "pytest -q -m gpu" in out
    assert "sanitizer" in out
    assert f"no wheels in {tmp_path}" in out
    for suite in SUITES:
        assert f"-m bench {suite} --tiny" in out and f"{suite}.json" in out and f"{suite}.md" in out
    # the tuner runs before the suites, over the fused_rnn suite's tiny shapes, into the cache
    # the suites' dispatch reads ($FLASHSEQ_CACHE_DIR/tune), and its results land in the folder
    lines = out.splitlines()
    tune = next(i for i, line in enumerate(lines) if line.startswith("[dry-run] tune:"))
    first_suite = next(i for i, line in enumerate(lines) if line.startswith("[dry-run] bench-"))
    assert tune < first_suite
    step = lines[tune]
    cache = str(tmp_path / "session" / "tune")
    assert "-m autotune.cli --gpu auto --ops lstm --shapes fused_rnn-tiny" in step
    assert "--budget" in step and f"--cache {cache}" in step
    assert "dry-run/tune.json" in step and "dry-run/tune.md" in step
    assert f"{cache}/cuda-*.json to bench/results/dry-run/tune_cache.json" in out
    readme = next(i for i, line in enumerate(lines) if "-m bench.readme_table" in line)
    assert readme > max(i for i, line in enumerate(lines) if line.startswith("[dry-run] bench-"))
    assert "--out bench/results/dry-run/README_table.md" in lines[readme]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_session_dry_run_full_size_tunes_the_full_shape_list_and_no_tune_skips(tmp_path):
    script = ROOT / "bench" / "gpu_session.sh"
    env = {**os.environ, "FLASHSEQ_PEER_WHEELS": str(tmp_path), "FLASHSEQ_GPU_SLUG": "x"}
    full = subprocess.run(["bash", str(script), "--dry-run", "--suites", "fused_rnn"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert full.returncode == 0, full.stderr
    step = next(line for line in full.stdout.splitlines() if line.startswith("[dry-run] tune:"))
    assert "--shapes fused_rnn " in step and "--budget" in step
    skipped = subprocess.run(["bash", str(script), "--dry-run", "--no-tune", "--suites",
                              "fused_rnn"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
    assert skipped.returncode == 0, skipped.stderr
    assert "[dry-run] tune:" not in skipped.stdout and "tune: skipped (--no-tune)" in skipped.stdout


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


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_session_tunes_into_the_cache_the_suites_read(tmp_path):
    """The script's real (not dry-run) path with stand-ins for nvidia-smi and python: the tune
    step gets the session cache, its exit 3 (budget reached) counts as done, the cache file is
    copied into the results folder, the suite runs with FLASHSEQ_CACHE_DIR at that cache, and
    the README table step reads the folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'NVIDIA Fake GPU'\n")
    (bin_dir / "compute-sanitizer").write_text("#!/usr/bin/env bash\nexit 0\n")
    calls = tmp_path / "calls.log"
    (bin_dir / "fake-python").write_text(f"""#!/usr/bin/env bash
echo "$* | FLASHSEQ_CACHE_DIR=$FLASHSEQ_CACHE_DIR" >> {calls}
for ((i = 1; i < $#; i++)); do [ "${{!i}}" = --json ] && j=$((i + 1)) && touch "${{!j}}"; done
if [ "$1 $2" = "-m autotune.cli" ]; then
    while [ $# -gt 0 ]; do
        if [ "$1" = --cache ]; then mkdir -p "$2"; echo '{{"layout": 1}}' > "$2/cuda-0123.json"; fi
        shift
    done
    exit 3
fi
exit 0
""")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    out = tmp_path / "results"
    session = tmp_path / "session"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "PYTHON": str(bin_dir / "fake-python"), "FLASHSEQ_PEER_WHEELS": str(tmp_path),
           "FLASHSEQ_SESSION_CACHE": str(session)}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), "--out", str(out),
                           "--suites", "fused_rnn"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = calls.read_text().splitlines()
    tune = next(i for i, line in enumerate(lines) if line.startswith("-m autotune.cli --gpu auto"))
    suite = next(i for i, line in enumerate(lines)
                 if line.startswith("-m bench fused_rnn") and "--headline" not in line)
    readme = next(i for i, line in enumerate(lines) if line.startswith("-m bench.readme_table"))
    assert tune < suite < readme
    assert f"--cache {session}/tune" in lines[tune]
    assert lines[suite].endswith(f"FLASHSEQ_CACHE_DIR={session}")
    assert (out / "tune_cache.json").read_text().strip() == '{"layout": 1}'
    summary = (out / "SUMMARY.md").read_text()
    assert "| tune |" in summary and "ok (exit 3 allowed)" in summary
    assert "0 step(s) failed" in summary
