"""The on-disk cache of the CUDA back end's compiled files (flashseq/kernels/fused_rnn/cuda_build.py).

Builds here are a small Python function standing in for nvcc (it counts its runs), so the tests
need no compiler: two processes racing for one entry build it once, a truncated file is
detected and rebuilt, and a CACHE_VERSION bump leaves old entries unused.
"""
import os
import pathlib
import subprocess
import sys
import textwrap

from flashseq.kernels.fused_rnn import cuda_build

ROOT = pathlib.Path(__file__).resolve().parents[2]

_WORKER = textwrap.dedent("""
    import pathlib, sys, time
    from flashseq.kernels.fused_rnn import cuda_build
    source, runs, version = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3])
    cuda_build.CACHE_VERSION = version

    def build(dst):
        with open(runs, "a") as f:
            f.write("build\\n")
        time.sleep(1.0)  # long enough for the other process to arrive and wait
        dst.write_bytes(b"cubin " * 1000)
        return {"registers": 42}

    path, meta = cuda_build.cached_build("probe", [source], ["flags"], build, ".bin")
    print(path, meta["registers"])
""")


def _run(tmp_path, *, count=1, version=1):
    """Run the worker in ``count`` processes at once; their outputs (path, registers)."""
    source = tmp_path / "kernel.cu"
    if not source.exists():
        source.write_text("// a kernel\n")
    env = dict(os.environ, FLASHSEQ_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(source), str(tmp_path / "runs"),
                               str(version)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(count)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return outs


def _builds(tmp_path):
    runs = tmp_path / "runs"
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def test_two_processes_racing_build_once(tmp_path):
    outs = _run(tmp_path, count=2)
    assert _builds(tmp_path) == 1
    assert outs[0] == outs[1] and outs[0][1] == "42"
    assert pathlib.Path(outs[0][0]).read_bytes() == b"cubin " * 1000


class _InProcess:
    """The worker's build, run in this process (only the race needs two processes)."""

    def __init__(self, tmp_path, monkeypatch):
        monkeypatch.setenv("FLASHSEQ_CACHE_DIR", str(tmp_path / "cache"))
        self.monkeypatch = monkeypatch
        self.source = tmp_path / "kernel.cu"
        self.source.write_text("// a kernel\n")
        self.builds = 0

    def __call__(self, version=1):
        self.monkeypatch.setattr(cuda_build, "CACHE_VERSION", version)

        def build(dst):
            self.builds += 1
            dst.write_bytes(b"cubin " * 1000)
            return {"registers": 42}

        return cuda_build.cached_build("probe", [self.source], ["flags"], build, ".bin")[0]


def test_truncated_entry_is_rebuilt(tmp_path, monkeypatch):
    run = _InProcess(tmp_path, monkeypatch)
    path = run()
    with open(path, "r+b") as f:
        f.truncate(100)
    again = run()
    assert run.builds == 2
    assert again.read_bytes() == b"cubin " * 1000


def test_cached_entry_is_reused_and_a_version_bump_invalidates(tmp_path, monkeypatch):
    run = _InProcess(tmp_path, monkeypatch)
    first = run()
    assert run() == first and run.builds == 1
    bumped = run(version=2)
    assert run.builds == 2 and bumped != first
    assert run(version=1) == first and run.builds == 2  # the old entry is still valid


def test_a_source_change_makes_a_new_entry(tmp_path, monkeypatch):
    run = _InProcess(tmp_path, monkeypatch)
    run()
    run.source.write_text("// another kernel\n")
    run()
    assert run.builds == 2


def test_failed_build_reports_the_compiler_and_publishes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHSEQ_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "kernel.cu"
    source.write_text("// broken\n")

    def build(dst):
        cuda_build.run_tool([sys.executable, "-c", "import sys; sys.exit('error: expected a ;')"])

    try:
        cuda_build.cached_build("probe", [source], [], build, ".bin")
    except cuda_build.BuildError as err:
        assert "error: expected a ;" in str(err)
    else:
        raise AssertionError("a failing build must raise BuildError")
    assert not list((tmp_path / "cache" / "cuda").glob("probe-*/manifest.json"))
