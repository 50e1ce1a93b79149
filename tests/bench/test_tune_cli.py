"""flashseq-tune (autotune.cli): the stub's promised behaviour."""
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autotune import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def one_workload(monkeypatch):
    monkeypatch.setattr(cli, "TUNED_WORKLOADS", cli.TUNED_WORKLOADS[:1])


def test_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["flashseq-tune"] == "flashseq.autotune.cli:main"


def test_auto_without_gpu_prints_one_line_and_exits_2(no_cuda, capsys):
    assert cli.main(["--gpu", "auto"]) == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "no CUDA GPU" in out and "--dry-run --gpu h100" in out


def test_auto_is_the_default(no_cuda, capsys):
    assert cli.main([]) == 2
    assert "no CUDA GPU" in capsys.readouterr().out


def test_auto_without_gpu_in_a_fresh_process():
    # the real entry point, as a user runs it on a CPU-only box (CUDA_VISIBLE_DEVICES hides any GPU)
    done = subprocess.run([sys.executable, "-m", "autotune.cli", "--gpu", "auto"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2, done.stderr
    assert "no CUDA GPU" in done.stdout


def test_dry_run_prints_what_it_will_do_and_plans(no_cuda, one_workload, capsys, tmp_path):
    assert cli.main(["--dry-run", "--gpu", "h100", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "H100" in out and str(tmp_path / "fused_rnn.json") in out
    if importlib.util.find_spec("flashseq.kernels.fused_rnn.plan") is None:
        assert "plans not available yet" in out
    else:
        assert "backend 'triton'" in out and "path=" in out and "BB=" in out


def test_dry_run_without_plan_module(no_cuda, one_workload, monkeypatch, capsys):
    real_import = importlib.import_module

    def import_module(name, *args):
        if name == "flashseq.kernels.fused_rnn.plan":
            raise ImportError("not written yet")
        return real_import(name, *args)

    monkeypatch.setattr(cli.importlib, "import_module", import_module)
    assert cli.main(["--dry-run", "--gpu", "a100"]) == 0
    assert "plans not available yet" in capsys.readouterr().out


def test_unknown_gpu_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--gpu", "x100", "--dry-run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "x100" in err and "h100" in err and "h200" in err


def test_unknown_op_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--dry-run", "--gpu", "h100", "--ops", "attention"])
    assert exc.value.code == 2
    assert "fused_rnn" in capsys.readouterr().err


def test_tuning_a_gpu_that_is_not_here_exits_2(no_cuda, capsys):
    assert cli.main(["--gpu", "h200"]) == 2
    assert "--dry-run" in capsys.readouterr().out


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FLASHSEQ_CACHE_DIR", str(tmp_path))
    assert cli.default_cache_dir() == tmp_path / "tune"
    monkeypatch.delenv("FLASHSEQ_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cli.default_cache_dir() == tmp_path / "xdg" / "flashseq" / "tune"
