"""What an installed (non-editable) flashseq carries: the C++ sources for its first-use build."""
import pathlib
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
