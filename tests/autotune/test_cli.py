"""flashseq-tune: dry runs (GPU candidates with registers/shared memory, CPU candidates), a real
CPU tuning run into a private cache, and every exit code."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autotune import cli, runner
from autotune.targets import CpuTarget
from flashseq import _jit, tuning

ROOT = Path(__file__).resolve().parents[2]
needs_cpu_loop = pytest.mark.skipif(_jit.extension_error() is not None,
                                    reason="the compiled CPU loop is not available here")
TINY = ["--device", "cpu", "--ops", "lstm", "--shapes", "2x4x8", "-k", "2"]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def quick(monkeypatch):
    """Short timing windows: these tests check the loop, not the numbers."""
    settings = runner.Settings
    monkeypatch.setattr(runner, "Settings", lambda k=6: settings(k=k, min_time=0.01,
                                                                 max_time=0.05, pair_time=0.01))


def test_dry_run_gpu_h100_lists_candidates_with_registers_and_shared_memory(no_cuda, capsys):
    assert cli.main(["--dry-run", "--gpu", "h100", "--ops", "lstm", "--shapes",
                     "16x1024x12x64,16x1024x1x768", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "H100" in out
    lines = [l for l in out.splitlines() if "registers=" in l]
    assert len(lines) == 6  # 3 candidates for each of the two shapes
    for line in lines:
        regs = int(re.search(r"registers=(\d+)", line).group(1))
        smem = int(re.search(r"smem=(\d+)", line).group(1))
        assert 0 < regs <= 255 and 0 < smem <= 227 * 1024
    assert "stepwise" in out  # DH=768 does not fit on chip: the stepwise model's candidates


def test_dry_run_cpu_lists_the_knob_candidates(capsys):
    assert cli.main(["--dry-run", "--device", "cpu", "--ops", "gru", "--shapes", "4x8x32",
                     "-k", "4"]) == 0
    out = capsys.readouterr().out
    assert "gru B=4 T=8 H=32" in out and out.count("us/step") == 4 and "threads=" in out


def test_auto_without_gpu_prints_one_line_and_exits_2(no_cuda, capsys):
    assert cli.main(["--gpu", "auto"]) == cli.EXIT_USAGE == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no CUDA GPU" in out and "--dry-run --gpu h100" in out


def test_auto_is_the_default_and_device_cuda_means_auto(no_cuda, capsys):
    assert cli.main([]) == 2
    assert cli.main(["--device", "cuda"]) == 2
    assert capsys.readouterr().out.count("no CUDA GPU") == 2


def test_gpu_that_is_not_here_exits_2(no_cuda, capsys):
    assert cli.main(["--gpu", "h200"]) == 2
    assert "--dry-run" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["--gpu", "x100", "--dry-run"], ["x100", "h100"]),
    (["--dry-run", "--gpu", "h100", "--ops", "attention"], ["attention", "lstm"]),
    (["--dry-run", "--device", "cpu", "--shapes", "16x64"], ["16x64", "BxTxH"]),
    (["--device", "cpu", "--dtype", "bfloat16"], ["float32"]),
    (["--device", "cpu", "--gpu", "h100"], ["not allowed"]),
    (["--device", "cpu", "--budget", "0"], ["--budget"]),
    (["--device", "cpu", "--threads", "0"], ["--threads"]),
])
def test_bad_usage_exits_2_naming_the_problem(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for code in ("0  done", "1  tuning ran", "2  bad usage", "3  --budget"):
        assert code in out
    assert "FLASHSEQ_TUNING=off" in out
    assert all(code in cli.__doc__ for code in ("0  done", "1  tuning ran", "2  bad usage"))


@needs_cpu_loop
def test_cpu_tuning_records_a_cache_dispatch_reads(tune_cache, quick, tmp_path, capsys):
    out_json = tmp_path / "results.json"
    assert cli.main(TINY + ["--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "| lstm B=2 T=4 H=8 float32 |" in out and "speed-up vs torch.nn" in out
    files = list(tune_cache.glob("cpu-*.json"))
    assert len(files) == 1  # the default folder: the one dispatch reads
    entries, problem = tuning.parse_file(files[0], tuning.device_identity("cpu"))
    assert problem is None and len(entries) == 1 and entries[0]["kernel"] == "fused_rnn.cpu"
    results = json.loads(out_json.read_text())["results"]
    assert results[0]["time_ms"] > 0 and results[0]["ratio_vs_peer"] > 0
    from flashseq.kernels.fused_rnn import cpu_config
    config, source = cpu_config.tuned_config("lstm", 2, 1, 8, torch.float32, "cpu")
    assert source == "cache" and config.to_json() == entries[0]["config"]


@needs_cpu_loop
def test_md_writes_the_table_with_the_device_and_command(tune_cache, quick, tmp_path, capsys):
    out_md = tmp_path / "tune.md"
    assert cli.main(TINY + ["--no-progress", "--md", str(out_md)]) == 0
    text = out_md.read_text()
    assert text.startswith("# flashseq-tune on ") and "--ops lstm" in text
    assert "| lstm B=2 T=4 H=8 float32 |" in text and "speed-up vs torch.nn |" in text
    assert "1 of 1 workloads tuned" in text
    assert "candidates]" not in capsys.readouterr().err  # --no-progress: no bar


@needs_cpu_loop
def test_budget_exhausted_exits_3(tune_cache, quick, capsys):
    assert cli.main(TINY + ["--budget", "1e-9"]) == cli.EXIT_BUDGET == 3
    assert "budget reached" in capsys.readouterr().out


@needs_cpu_loop
def test_candidate_with_a_different_result_exits_1(tune_cache, quick, monkeypatch, capsys):
    monkeypatch.setattr(CpuTarget, "check", lambda self, w, config: "output differs (planted)")
    assert cli.main(TINY) == cli.EXIT_FAILED == 1
    assert "rejected" in capsys.readouterr().out


def test_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["flashseq-tune"] == "flashseq.autotune.cli:main"


def test_auto_without_gpu_in_a_fresh_process():
    # the real entry point, as a user runs it on a CPU-only box (CUDA_VISIBLE_DEVICES hides any GPU)
    done = subprocess.run([sys.executable, "-m", "autotune.cli", "--gpu", "auto"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2, done.stderr
    assert done.stdout.count("\n") == 1 and "no CUDA GPU" in done.stdout


@needs_cpu_loop
def test_verify_reports_dispatch_with_and_without_the_cache(tune_cache, capsys):
    from autotune import cache, verify
    from flashseq.kernels.fused_rnn import cpu_config
    bucket = cpu_config.bucket("lstm", 2, 1, 8)
    cache.record(tuning.device_identity("cpu"), [{"kernel": cpu_config.KERNEL, "bucket": bucket,
                                                  "dtype": "float32", "config": {"threads": 1}}])
    assert verify.main(["--ops", "lstm", "--shapes", "2x4x8", "--time", "0.01"]) == 0
    assert "| lstm B=2 T=4 H=8 float32 | threads=1 |" in capsys.readouterr().out
    assert verify.main(["--ops", "gru", "--shapes", "2x4x8", "--time", "0.01"]) == 1
    assert "no cache entry" in capsys.readouterr().out
