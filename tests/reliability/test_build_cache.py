"""The first-use build cache heals itself: a build killed mid-way, a truncated or emptied library,
a lock held by a live or a dead process, a complete cache that cannot be written.

The cache mechanics are the same for every ExtensionSpec, so these tests build a tiny extension
(one C++ file using only Python's C API, ~0.5 s to compile) instead of flashseq's CPU extension
(~1 min). The library is first built through the internal _build_and_publish, which never loads
it in this process: a test that truncates a library this process has mapped would crash it.
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from flashseq import _cache, _jit

TINY_SOURCE = r"""
#include <Python.h>
#define TINY_CAT2(a, b) a##b
#define TINY_CAT(a, b) TINY_CAT2(a, b)
#define TINY_STR2(a) #a
#define TINY_STR(a) TINY_STR2(a)
static PyObject* answer(PyObject*, PyObject*) { return PyLong_FromLong(42); }
static PyMethodDef kMethods[] = {{"answer", answer, METH_NOARGS, nullptr},
                                 {nullptr, nullptr, 0, nullptr}};
static PyModuleDef kModule = {PyModuleDef_HEAD_INIT, TINY_STR(TORCH_EXTENSION_NAME), nullptr, -1,
                              kMethods};
PyMODINIT_FUNC TINY_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&kModule); }
"""

REPO = pathlib.Path(__file__).resolve().parents[2]
CACHE_MODULE = REPO / "flashseq" / "_cache.py"


@pytest.fixture(scope="module")
def tiny_library(tmp_path_factory):
    """(spec, module name, library) of the tiny extension, compiled once by the real builder
    (which also loads it in a child process)."""
    root = tmp_path_factory.mktemp("tiny")
    src = root / "tiny.cpp"
    src.write_text(TINY_SOURCE)
    spec = _jit.ExtensionSpec(name="flashseq_test_tiny", sources=(str(src),))
    module = f"{spec.name}_{spec.key()}"
    return spec, module, _jit._run_builder(spec, module, root / "build")


class Tiny:
    """The tiny extension in a fresh cache: spec, module, entry (its cache folder), builds (the
    modules built so far; each build copies the compiled library instead of compiling again)."""

    def __init__(self, spec, module, entry):
        self.spec, self.module, self.entry = spec, module, entry
        self.builds = []


@pytest.fixture
def tiny(tiny_library, tmp_path, monkeypatch):
    spec, module, library = tiny_library
    monkeypatch.setenv("FLASHSEQ_CACHE_DIR", str(tmp_path / "cache"))
    out = Tiny(spec, module, _jit._jit_dir() / module)

    def copy_builder(spec_arg, module_arg, build_dir):
        assert (spec_arg, module_arg) == (spec, module)
        out.builds.append(module_arg)
        build_dir.mkdir(parents=True, exist_ok=True)
        return pathlib.Path(shutil.copy(library, build_dir / library.name))
    monkeypatch.setattr(_jit, "_run_builder", copy_builder)
    return out


def _child_env():
    """This process's environment, with this checkout first on the child's import path."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path)


def _publish(tiny):
    """Build and publish without loading in this process; the published library's path."""
    jit_dir = tiny.entry.parent
    with _cache.CacheLock(jit_dir / f"{tiny.module}.lock", what="test build", timeout=60):
        path = _jit._build_and_publish(tiny.spec, tiny.module, jit_dir)
    tiny.builds.clear()
    return path


def _forbid_builds(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a build was started although the cache holds a good library")
    monkeypatch.setattr(_jit, "_run_builder", refuse)


def test_published_library_is_loaded_from_the_cache(tiny, monkeypatch):
    path = _publish(tiny)
    entry = tiny.entry
    manifest = json.loads((entry / _cache.MANIFEST).read_text())
    assert manifest["file"] == path.name and manifest["size"] == path.stat().st_size > 0
    assert manifest["sha256"] == _cache.file_record(path)["sha256"]
    assert not list(entry.parent.glob(".build-*")), "the private build folder was left behind"
    _forbid_builds(monkeypatch)
    assert _jit.load_extension(tiny.spec).answer() == 42


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_library_is_rebuilt_and_loads(tiny, damage):
    # today: a truncated library crashed every later process with SIGBUS inside dlopen, and an
    # empty one was deleted but not rebuilt in the process that found it
    path = _publish(tiny)
    good = _cache.file_record(path)
    with open(path, "r+b") as f:
        f.truncate(good["size"] // 2 if damage == "truncated" else 0)
    assert _cache.lookup_file(tiny.entry, _jit.JIT_LAYOUT) is None
    assert _jit.load_extension(tiny.spec).answer() == 42
    assert tiny.builds == [tiny.module]
    found = _cache.lookup_file(tiny.entry, _jit.JIT_LAYOUT)
    assert found is not None and found[1]["size"] == good["size"]


def test_library_that_passes_the_check_but_does_not_load_is_rebuilt(tiny, caplog):
    # content and manifest agree, but the bytes are no library (a build that wrote garbage)
    path = _publish(tiny)
    path.write_bytes(b"not an ELF file")
    _cache.write_json(tiny.entry / _cache.MANIFEST, {**json.loads(
        (tiny.entry / _cache.MANIFEST).read_text()), **_cache.file_record(path)})
    with caplog.at_level("WARNING", logger="flashseq"):
        assert _jit.load_extension(tiny.spec).answer() == 42
    assert tiny.builds == [tiny.module] and "does not load" in caplog.text


def test_failed_build_says_why_and_publishes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHSEQ_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "broken.cpp"
    src.write_text("int broken( {\n")
    spec = _jit.ExtensionSpec(name="flashseq_test_broken", sources=(str(src),))
    with pytest.raises(RuntimeError, match="building flashseq_test_broken_.* failed: .*error"):
        _jit.load_extension(spec)
    jit_dir = _jit._jit_dir()
    assert not list(jit_dir.glob(".build-*")) and not (jit_dir / f"{spec.name}_{spec.key()}").exists()
    with _cache.CacheLock(jit_dir / f"{spec.name}_{spec.key()}.lock", what="x", timeout=0):
        pass  # released


@pytest.mark.parametrize("damage", ["foreign layout", "no manifest", "path in manifest"])
def test_bad_manifest_is_rebuilt(tiny, damage):
    _publish(tiny)
    manifest_path = tiny.entry / _cache.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    if damage == "no manifest":
        manifest_path.unlink()
    else:
        change = {"layout": -1} if damage == "foreign layout" else {"file": "../" + manifest["file"]}
        manifest_path.write_text(json.dumps({**manifest, **change}))
    assert _jit.load_extension(tiny.spec).answer() == 42
    assert tiny.builds == [tiny.module]


_KILLED_BUILD = """
import sys
from flashseq import _jit
spec = _jit.ExtensionSpec(name="flashseq_test_tiny", sources=(sys.argv[1],))
_jit.load_extension(spec)
"""


def _processes_mentioning(text):
    """Command lines of the live processes whose arguments contain `text` (Linux /proc)."""
    found = []
    for proc in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue  # exited while being read
        if text in cmdline and state != "Z":
            found.append(cmdline[:200])
    return found


def test_build_killed_midway_leaves_nothing_that_blocks_the_next(tiny):
    # today: torch's `lock` file stayed in the shared build folder and every later process
    # waited on it forever, silently. The child compiles for real; this process then builds
    # with the copying builder (the test is about the lock and the leftovers, not the compiler).
    spec, module, entry = tiny.spec, tiny.module, tiny.entry
    jit_dir = entry.parent
    child = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, spec.sources[0]],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=_child_env())
    try:
        deadline = time.monotonic() + 60
        while not list(jit_dir.glob(".build-*")):  # it holds the lock and is building
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never started its build"
            time.sleep(0.01)
        build_dir = str(next(jit_dir.glob(".build-*")))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # its builder (a child process, started with the build folder in its arguments) dies with it
    deadline = time.monotonic() + 10
    while _processes_mentioning(build_dir):
        assert time.monotonic() < deadline, _processes_mentioning(build_dir)
        time.sleep(0.05)
    lock = _cache.CacheLock(jit_dir / f"{module}.lock", what="test")
    assert lock.owner()["pid"] == child.pid  # its record is still there, its flock is not
    assert "dead" in lock.describe_owner()
    assert _cache.lookup_file(entry, _jit.JIT_LAYOUT) is None
    start = time.monotonic()
    assert _jit.load_extension(spec, lock_timeout=120).answer() == 42
    assert time.monotonic() - start < 10  # a build, not a wait for the lock's timeout
    assert tiny.builds == [module]
    assert not list(jit_dir.glob(".build-*")), "the killed build's folder was not removed"


_HOLD_LOCK = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("cache_for_test", sys.argv[1])
cache = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cache)
with cache.CacheLock(sys.argv[2], what="holding it for a test"):
    print("locked", flush=True)
    time.sleep(120)
"""


def _hold_lock(path):
    """A child process that holds the CacheLock at `path` until killed."""
    child = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(CACHE_MODULE), str(path)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_lock_wait_names_its_owner_and_times_out(tmp_path, caplog):
    path = tmp_path / "entry.lock"
    child = _hold_lock(path)
    try:
        lock = _cache.CacheLock(path, what="waiting in a test", timeout=0.6, quiet=0.1)
        start = time.monotonic()
        with caplog.at_level("WARNING", logger="flashseq"), pytest.raises(_cache.LockTimeout) as err:
            lock.acquire()
        assert 0.6 <= time.monotonic() - start < 5
        for text in (str(err.value), caplog.text):
            assert f"pid {child.pid}" in text and "alive" in text, text
            assert "holding it for a test" in text and "waiting in a test" in text, text
    finally:
        child.kill()
        child.wait()
    # the owner died without releasing: the lock is free at once
    start = time.monotonic()
    with _cache.CacheLock(path, what="after the owner died", timeout=5):
        assert _cache.CacheLock(path, what="x").owner()["pid"] == os.getpid()
    assert time.monotonic() - start < 1


def test_build_goes_ahead_when_the_lock_times_out(tiny, caplog):
    child = _hold_lock(tiny.entry.parent / f"{tiny.module}.lock")
    try:
        with caplog.at_level("WARNING", logger="flashseq"):
            assert _jit.load_extension(tiny.spec, lock_timeout=0.3).answer() == 42
    finally:
        child.kill()
        child.wait()
    assert "building without it" in caplog.text and f"pid {child.pid}" in caplog.text
    assert tiny.builds == [tiny.module]
    assert _cache.lookup_file(tiny.entry, _jit.JIT_LAYOUT) is not None


# Loads the tiny extension from a complete cache while an audit hook records every attempt to
# create, open for writing, rename or delete anything under the cache.
_READ_ONLY_LOAD = """
import json, os, sys
cache = os.path.realpath(sys.argv[1])
attempts = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def under_cache(path):
    try:
        return os.path.realpath(os.fsdecode(path)).startswith(cache)
    except (TypeError, ValueError):
        return False

def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2]
        writing = (mode is not None and any(c in mode for c in "wax+")) or (flags or 0) & WRITE_FLAGS
        if writing and under_cache(args[0]):
            attempts.append([event, os.fsdecode(args[0])])
    elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate", "os.chmod",
                   "os.link", "os.symlink", "shutil.rmtree", "shutil.move", "shutil.copyfile"):
        if args and under_cache(args[0]):
            attempts.append([event, os.fsdecode(args[0])])

sys.addaudithook(hook)
from flashseq import _jit
def refuse(*args, **kwargs):
    raise AssertionError("build started")
_jit._run_builder = refuse
spec = _jit.ExtensionSpec(name="flashseq_test_tiny", sources=(sys.argv[2],))
print(json.dumps({"answer": _jit.load_extension(spec).answer(), "attempts": attempts}))
"""


def _read_only_mount_works(path):
    """Whether `unshare -m` can bind-mount `path` read-only here (root with CAP_SYS_ADMIN)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {path} {path} && mount -o "
                            f"remount,ro,bind {path} {path} && ! touch {path}/.probe"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0 and not (path / ".probe").exists()


def _tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*"))


def test_complete_read_only_cache_loads_without_writing(tiny, tmp_path):
    # today: loading insisted on creating a lock file in the cache, so a shared or baked-in
    # read-only cache could not be used
    spec, module, entry = tiny.spec, tiny.module, tiny.entry
    _publish(tiny)
    (entry.parent / f"{module}.lock").unlink()  # a baked-in cache need not ship its lock file
    cache = tmp_path / "cache"
    before = _tree(cache)
    for path in [cache, *cache.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    command = [sys.executable, "-c", _READ_ONLY_LOAD, str(cache), spec.sources[0]]
    # Tests run as root, which ignores file modes: where possible the cache is also mounted
    # read-only, and in any case the audit hook sees every write the loader attempts.
    if _read_only_mount_works(cache):
        command = ["unshare", "-m", "sh", "-c", f'mount --bind "$0" "$0" && mount -o remount,'
                   f'ro,bind "$0" "$0" && exec "$@"', str(cache), *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              env=_child_env())
    finally:
        for path in [cache, *cache.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"answer": 42, "attempts": []}
    assert _tree(cache) == before


def test_incomplete_unwritable_cache_builds_in_a_temporary_folder(tiny, monkeypatch, caplog):
    # root ignores file modes, so the refusal to create the lock file is simulated
    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self.path))
    monkeypatch.setattr(_cache.CacheLock, "acquire", refuse)
    with caplog.at_level("WARNING", logger="flashseq"):
        assert _jit.load_extension(tiny.spec).answer() == 42
    assert tiny.builds == [tiny.module] and "cannot be written" in caplog.text
    assert not tiny.entry.parent.exists() or not any(tiny.entry.parent.iterdir())


def test_cpu_extension_spec_covers_every_source():
    spec = _jit.cpu_extension_spec()
    files = {pathlib.Path(f).name for f in spec.sources + spec.depends}
    on_disk = {p.name for d in ("cpu", "cells") for p in (_jit.CSRC_DIR / d).glob("*")
               if p.suffix in (".cpp", ".h")}
    assert files == on_disk
    assert spec.name == "flashseq_cpu" and len(spec.key()) == 20


@pytest.mark.slow
def test_real_cpu_extension_is_rebuilt_after_truncation(tmp_path, monkeypatch):
    # The same path as the tiny extension's with flashseq's own CPU extension: two real builds
    # (about 1 minute each on 2 cores), hence slow.
    monkeypatch.setenv("FLASHSEQ_CACHE_DIR", str(tmp_path / "cache"))
    spec = _jit.cpu_extension_spec()
    module = f"{spec.name}_{spec.key()}"
    jit_dir = _jit._jit_dir()
    with _cache.CacheLock(jit_dir / f"{module}.lock", what="test build", timeout=60):
        path = _jit._build_and_publish(spec, module, jit_dir)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 3)
    ext = _jit.load_extension(spec)
    assert ext.cell_layout("lstm") and hasattr(ext, "fused_rnn_forward")
    assert _cache.lookup_file(jit_dir / module, _jit.JIT_LAYOUT) is not None


def test_json_records_round_trip_atomically_and_reject_other_layouts(tmp_path):
    path = tmp_path / "sub" / "record.json"
    _cache.write_json(path, {"best": [64, 4]}, layout=3)
    assert _cache.read_json(path, layout=3) == {"best": [64, 4], "layout": 3}
    assert _cache.read_json(path, layout=4) is None  # written for another layout: ignored
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]  # no temporary left
    path.write_text('{"best": [64,')  # cut short
    assert _cache.read_json(path, layout=3) is None
    assert _cache.read_json(tmp_path / "missing.json") is None


def test_key_digest_depends_on_every_part_and_the_layout():
    parts = {"device": "cpu", "dtype": "float32", "shape": [16, 128]}
    key = _cache.key_digest(1, parts)
    assert key == _cache.key_digest(1, dict(reversed(list(parts.items()))))  # order-free
    assert key != _cache.key_digest(2, parts)
    assert key != _cache.key_digest(1, {**parts, "shape": [16, 256]})
    assert len(key) == 20 and all(c in "0123456789abcdef" for c in key)
