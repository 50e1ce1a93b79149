"""What an installed flashseq carries (the C++ sources for its first-use build, only the packages
flashseq and constrint), and the README's set-up commands, which .ci/run repeats."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def build_lib(tmp_path_factory):
    """The package tree as a wheel would hold it (setup.py build_py, no compiling)."""
    out = tmp_path_factory.mktemp("build_lib")
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(out)],
                   cwd=REPO, check=True, capture_output=True, text=True)
    return out


def test_build_py_ships_every_source(build_lib):
    shipped = {p.relative_to(build_lib / "flashseq" / "_csrc").as_posix()
               for p in (build_lib / "flashseq" / "_csrc").rglob("*") if p.is_file()}
    in_repo = {p.relative_to(REPO / "csrc").as_posix() for p in (REPO / "csrc").rglob("*")
               if p.suffix in (".h", ".cuh", ".cpp", ".cu")}
    assert in_repo and shipped == in_repo


def test_installed_tree_finds_its_sources_and_the_same_build_key(build_lib):
    # Outside the checkout there is no csrc/ beside the package: _jit must use flashseq/_csrc,
    # and hash it to the same build key (same files, same relative paths).
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from flashseq import _jit; "
            "print(_jit.CSRC_DIR); print(_jit.build_key())")
    run = lambda root: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code, str(root)], cwd=build_lib, check=True,
        capture_output=True, text=True).stdout.split()
    installed_dir, installed_key = run(build_lib)
    _, checkout_key = run(REPO)
    assert pathlib.Path(installed_dir) == build_lib / "flashseq" / "_csrc"
    assert installed_key == checkout_key


# --- what an install puts on sys.path, and how the README installs it ---------------------------

def test_only_flashseq_and_constrint_are_top_level(build_lib):
    top = {p.name for p in build_lib.iterdir() if not p.name.endswith(".egg-info")}
    assert top == {"flashseq", "constrint"}
    # the tuner's folder travels inside flashseq, for the flashseq-tune command
    assert (build_lib / "flashseq" / "autotune" / "cli.py").is_file()


def test_console_script_resolves_in_the_installed_tree(build_lib):
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["flashseq-tune"].split(":")
    code = (f"import sys; sys.path.insert(0, sys.argv[1]); import {module} as m; "
            f"print(callable(m.{func}), m.__file__)")
    done = subprocess.run([sys.executable, "-c", code, str(build_lib)], cwd=build_lib,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ok, path = done.stdout.split()
    assert ok == "True" and pathlib.Path(path).is_relative_to(build_lib)


def test_license_declared():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the flashseq authors" in text


def test_setup_stops_with_a_message_without_torch():
    # torch hidden (a None entry in sys.modules makes `import torch` raise ImportError)
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--name']; "
            "runpy.run_path('setup.py', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "torch is not importable" in done.stderr and "--no-build-isolation" in done.stderr


def test_import_from_the_parent_of_a_clone_named_flashseq(tmp_path):
    # A clone in a folder named flashseq, Python started in its parent: the folder has no
    # __init__.py, so it would be an empty namespace package unless the installed (regular)
    # package is found first, whatever the install mode (install.sh, or pip install -e).
    (tmp_path / "flashseq").symlink_to(REPO, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", "import flashseq; print(flashseq.__file__); "
                           "print(flashseq.ops.fused_rnn.__name__)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    file, name = done.stdout.split()
    assert file.endswith("__init__.py") and name == "fused_rnn"


CI_MICROBENCH = "python -m bench microbench --compare bench/results/cpu/microbench.json"


def _readme_setup_commands():
    text = (REPO / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_readme_has_the_two_setup_commands():
    assert _readme_setup_commands() == ["bash install.sh && python -m bench quick",
                                        "python -m pytest -q"]


def test_ci_runs_exactly_the_readme_commands():
    script = REPO / ".ci" / "run"
    assert os.access(script, os.X_OK)
    lines = [line.strip() for line in script.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "set -euo pipefail"
    commands = [line for line in lines if not line.startswith(("set ", "cd "))]
    # the README's two commands first; the only command allowed after them is the CI
    # microbenchmark against the committed CPU baseline
    assert commands[:2] == _readme_setup_commands()
    assert commands[2:] in ([], [CI_MICROBENCH])


def test_ci_microbench_baseline_is_committed():
    baseline = CI_MICROBENCH.split("--compare ", 1)[1]
    assert (REPO / baseline).is_file()


def test_install_script_parses_and_never_asks_for_a_cuda_torch():
    script = REPO / "install.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "--no-build-isolation" in text and "download.pytorch.org/whl/cpu" in text
    assert "+cpu" in text and "cu12" not in text and "cu13" not in text


def _install_dry_run(tmp_path, python=None, fake_torch=None):
    env = {**os.environ, "FLASHSEQ_INSTALL_DRY_RUN": "1"}
    if python:
        env["PYTHON"] = python
    if fake_torch:  # a stand-in torch package of that version, found first
        (tmp_path / "torch").mkdir()
        (tmp_path / "torch" / "__init__.py").write_text(
            f"__version__ = {fake_torch!r}\nclass version:\n    cuda = None\n")
        env["PYTHONPATH"] = str(tmp_path)
    done = subprocess.run(["bash", str(REPO / "install.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith("would run:")]


def test_install_keeps_a_recent_torch(tmp_path):
    commands = _install_dry_run(tmp_path)
    assert not [c for c in commands if " torch" in c], commands
    assert commands[-1] == 'would run: pip install --no-build-isolation .[dev]'


LINUX_ONLY = pytest.mark.skipif(sys.platform != "linux",
                                reason="install.sh's default CPU torch (+cpu build) is Linux's")


@LINUX_ONLY
def test_install_adds_a_cpu_torch_when_none_is_there(tmp_path):
    no_site = tmp_path / "python-without-site-packages"
    no_site.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    no_site.chmod(0o755)
    commands = _install_dry_run(tmp_path, python=str(no_site))
    torch_commands = [c for c in commands if " torch" in c]
    assert torch_commands == ["would run: pip install -q torch==2.13.0+cpu"], commands


@LINUX_ONLY
def test_install_replaces_a_torch_older_than_2_11(tmp_path):
    commands = _install_dry_run(tmp_path, fake_torch="2.10.0")
    assert "would run: pip install -q torch==2.13.0+cpu" in commands, commands
