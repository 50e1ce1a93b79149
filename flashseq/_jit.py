"""The compiled CPU extension: ``flashseq._C`` if it was built at install, else built on first use.

``pip install --no-build-isolation -e .`` can build ``flashseq._C`` from csrc/cpu/ (setup.py).
When that module is missing, does not load or is stale (its ``source_key`` is not this
``build_key()``: sources edited or torch changed since), the same sources are compiled on first
use by ``load_extension``, a generic first-use build for any ``ExtensionSpec`` (the CUDA kernels
use it too), cached under ``$FLASHSEQ_CACHE_DIR/jit/<module>/`` with the rules of
flashseq/_cache.py: the module name carries a digest of torch, the flags and every source, the
library is built in a private folder and loaded once in a child process before it is renamed
into the cache, its size and SHA-256 are checked before every load (a truncated or emptied
library is rebuilt, never mapped), a lock left by a killed build is free at once, and a complete
read-only cache is used without writing to it. Nothing here runs at import time, and only the
standard library is imported at the top (setup.py loads this file by path).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import typing

log = logging.getLogger("flashseq")


def _find_csrc() -> pathlib.Path:
    """The C++ sources: csrc/ beside the package in a checkout or editable install, else the
    copy a wheel carries as flashseq/_csrc (setup.py's build_py puts it there)."""
    package = pathlib.Path(__file__).resolve().parent
    checkout = package.parent / "csrc"
    return checkout if (checkout / "cpu").is_dir() else package / "_csrc"


CSRC_DIR = _find_csrc()
CACHE_VERSION = 1  # bump when the layout of the cache folder changes
# SIMD build of the pointwise loops (csrc/cpu/vec_lanes.h): AVX2 + FMA vectors through ATen's
# Vectorized, whose CPU_CAPABILITY macros select the AVX2 implementation.
AVX2_FLAGS = ("-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2")


def _host_has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = pathlib.Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx2" in flags and "fma" in flags


def openmp_flags() -> tuple[str, ...]:
    """``-fopenmp`` (compiler and linker) where torch's ``at::parallel_for`` is OpenMP's: Linux
    and a torch built with OpenMP. Why: ``at::parallel_for`` is a header template whose body is
    ``#pragma omp parallel``; compiled without -fopenmp the pragma is dropped and every loop of
    the extension ran on one thread whatever ``torch.set_num_threads`` said (measured: the
    folded LSTM forward at I=H=512 B=16 T=128 took 40 ms at 1 and at 2 threads, process CPU time
    equal to wall time). The library it links (libgomp.so.1) is the one torch already loaded."""
    import torch

    if platform.system() != "Linux" or not torch.backends.openmp.is_available():
        return ()
    return ("-fopenmp",)


def compile_flags() -> tuple[str, ...]:
    """C++ flags of the extension (also used by setup.py). The C++ standard is left to torch
    (C++17 or later). AVX2 only when the building machine has it: the extension is built where
    it runs (JIT cache here, ``pip install --no-build-isolation`` for flashseq._C). OpenMP as
    torch's own parallel_for needs it (openmp_flags)."""
    return ("-O3",) + (AVX2_FLAGS if _host_has_avx2() else ()) + openmp_flags()


def cache_dir() -> pathlib.Path:
    """Root of flashseq's on-disk caches (flashseq._cache.cache_root)."""
    from flashseq import _cache

    return _cache.cache_root()


def _sources() -> tuple[list[pathlib.Path], list[pathlib.Path]]:
    """(.cpp files to compile, every file whose contents the build depends on)."""
    cpp = sorted((CSRC_DIR / "cpu").glob("*.cpp"))
    headers = sorted((CSRC_DIR / "cpu").glob("*.h")) + sorted((CSRC_DIR / "cells").glob("*.h"))
    return cpp, cpp + headers


def build_key() -> str:
    """Hex digest of (cache version, torch version, flags, sources) naming the build folder."""
    import torch

    digest = hashlib.sha256(f"{CACHE_VERSION}|{torch.__version__}|{compile_flags()}".encode())
    for path in _sources()[1]:
        digest.update(path.relative_to(CSRC_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


# Layout of the JIT cache (folder names, manifest fields); part of every key.
JIT_LAYOUT = 1


class ExtensionSpec(typing.NamedTuple):
    """One Python extension module to compile with ``torch.utils.cpp_extension`` on first use.

    name: stem of the module name; the module is ``f"{name}_{key}"`` (a valid identifier).
    sources: files to compile (absolute paths, .cpp).
    depends: other files whose contents the build reads (headers); they are part of the key.
    include_dirs, cflags, ldflags: passed to the compiler and linker.
    cuda_cflags: passed to nvcc for .cu sources (torch's CUDA extension build).
    """
    name: str
    sources: tuple
    depends: tuple = ()
    include_dirs: tuple = ()
    cflags: tuple = ()
    ldflags: tuple = ()
    cuda_cflags: tuple = ()

    def key(self) -> str:
        """Digest of everything the built library depends on: the cache layout, torch (version,
        CUDA), the Python ABI, the compiler ($CXX), the flags and each file's name and content
        (not its folder, so a checkout and a wheel share entries)."""
        import sys

        import torch
        from flashseq import _cache

        files = [(pathlib.Path(f).name, hashlib.sha256(pathlib.Path(f).read_bytes()).hexdigest())
                 for f in tuple(self.sources) + tuple(self.depends)]
        return _cache.key_digest(JIT_LAYOUT, {
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": sys.implementation.cache_tag, "machine": platform.machine(),
            "cxx": os.environ.get("CXX", ""), "cflags": list(self.cflags),
            "ldflags": list(self.ldflags), "files": files,
            **({"cuda_cflags": list(self.cuda_cflags)} if self.cuda_cflags else {})})


# Runs in a child process: builds the module in the given private folder with torch's
# cpp_extension and imports it there, so a library that cannot be loaded (or crashes the loader)
# is found before it is published. It dies with its parent (Linux), leaving no builder behind a
# build killed by a timeout or the OOM killer.
_BUILDER = r"""
import json, os, signal, sys
args = json.loads(sys.argv[1])
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass  # not Linux: the builder may outlive a killed parent, and only wastes its work
if os.getppid() != args["parent"]:
    sys.exit("flashseq: the process that asked for this build is gone")
from torch.utils import cpp_extension
module = cpp_extension.load(
    name=args["module"], sources=args["sources"], extra_include_paths=args["include_dirs"],
    extra_cflags=args["cflags"], extra_ldflags=args["ldflags"],
    extra_cuda_cflags=args["cuda_cflags"] or None,
    build_directory=args["build_dir"], verbose=False)
print(json.dumps({"file": module.__file__}))
"""


def _jit_dir() -> pathlib.Path:
    from flashseq import _cache

    return _cache.cache_root() / "jit"


def _run_builder(spec: ExtensionSpec, module: str, build_dir: pathlib.Path) -> pathlib.Path:
    """Compile and test-load `module` in a child process; the path of the built library."""
    import json
    import subprocess
    import sys

    build_dir.mkdir(parents=True, exist_ok=True)
    args = {"parent": os.getpid(), "module": module, "build_dir": str(build_dir),
            "sources": [str(f) for f in spec.sources],
            "include_dirs": [str(d) for d in spec.include_dirs],
            "cflags": list(spec.cflags), "ldflags": list(spec.ldflags),
            "cuda_cflags": list(spec.cuda_cflags)}
    done = subprocess.run([sys.executable, "-c", _BUILDER, json.dumps(args)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip()).splitlines() or [
            f"the builder exited with status {done.returncode}"]
        first = next((ln for ln in lines if "error:" in ln), lines[-1]).strip()
        raise RuntimeError(f"building {module} failed: {first}")
    return pathlib.Path(json.loads(done.stdout.strip().splitlines()[-1])["file"])


def _import_path(module: str, path: pathlib.Path):
    """Import the extension module `module` from the library at `path` (not via sys.path and
    not through cpp_extension.load, which would take a lock file in the library's folder)."""
    import importlib.util

    import torch  # noqa: F401  (the library links against torch's shared libraries)

    spec = importlib.util.spec_from_file_location(module, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _build_and_publish(spec, module, jit_dir) -> pathlib.Path:
    """Build in a private folder, then publish the library into the cache entry; the caller
    holds the entry's lock."""
    from flashseq import _cache

    for orphan in _cache.remove_orphans(jit_dir, ".build"):
        log.info("flashseq: removed %s, left by a build whose process died", orphan)
    build_dir = _cache.private_dir(jit_dir, ".build")
    try:
        built = _run_builder(spec, module, build_dir)
        return _cache.publish_file(built, jit_dir / module, stem=module, suffix=built.suffix,
                                   layout=JIT_LAYOUT, meta={"module": module})
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)


def _build_private(spec, module):
    """Build into a temporary folder outside the cache and import from there (cache folder
    not writable); the folder is deleted once the library is loaded."""
    import tempfile

    build_dir = pathlib.Path(tempfile.mkdtemp(prefix=f"flashseq-{module}-"))
    try:
        return _import_path(module, _run_builder(spec, module, build_dir))
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)


def load_extension(spec: ExtensionSpec, *, lock_timeout: float | None = None):
    """The extension module of `spec`, from the cache or built on first use.

    A published library is loaded only after its size and SHA-256 match its manifest (no lock,
    nothing written: a complete read-only cache works). Otherwise, under the entry's lock
    (``lock_timeout`` seconds, default $FLASHSEQ_LOCK_TIMEOUT or 600; a lock left by a killed
    process is free at once), the library is built in a private folder, loaded once in a child
    process, then renamed into the entry with a new manifest; a bad entry is thus rebuilt. Past
    the lock's timeout the build goes ahead anyway (publication is atomic, so at worst work is
    repeated). When the cache cannot be written, the build goes to a temporary folder.
    Raises RuntimeError when the build fails.
    """
    from flashseq import _cache

    module = f"{spec.name}_{spec.key()}"
    jit_dir = _jit_dir()
    entry = jit_dir / module
    found = _cache.lookup_file(entry, JIT_LAYOUT)
    unloadable = None
    if found is not None:
        try:
            return _import_path(module, found[0])
        except ImportError as err:  # checked content that does not load: built for another system
            log.warning("flashseq: %s does not load (%s); rebuilding it", found[0], err)
            unloadable = found[1]["sha256"]
    lock = _cache.CacheLock(jit_dir / f"{module}.lock", what=f"building {module}",
                            timeout=lock_timeout)
    try:
        lock.acquire()
    except _cache.LockTimeout as err:
        log.warning("flashseq: %s; building without it", err)
    except OSError as err:  # read-only or foreign cache folder: nothing can be published
        log.warning("flashseq: the cache %s cannot be written (%s); building %s in a temporary "
                    "folder, not kept", jit_dir, err.strerror or err, module)
        return _build_private(spec, module)
    try:
        found = _cache.lookup_file(entry, JIT_LAYOUT)  # published while this process waited?
        if found is not None and found[1]["sha256"] != unloadable:
            path = found[0]
        else:
            path = _build_and_publish(spec, module, jit_dir)
    finally:
        lock.release()
    return _import_path(module, path)


def cpu_extension_spec() -> ExtensionSpec:
    """The CPU extension (csrc/cpu/) as an ExtensionSpec."""
    cpp, every = _sources()
    if not cpp:
        raise RuntimeError(f"no C++ sources found under {CSRC_DIR / 'cpu'} (flashseq installed "
                           "without its csrc/ folder?)")
    return ExtensionSpec(name="flashseq_cpu", sources=tuple(str(p) for p in cpp),
                         depends=tuple(str(p) for p in every if p not in cpp),
                         include_dirs=(str(CSRC_DIR),), cflags=compile_flags(),
                         ldflags=openmp_flags())


def _jit_build():
    return load_extension(cpu_extension_spec())


BUFFER_CACHE_ENV = "FLASHSEQ_CPU_BUFFER_CACHE_MB"
DEFAULT_BUFFER_CACHE_MB = 256


def buffer_cache_limit_bytes() -> int:
    """The most bytes of freed buffers the CPU loop keeps for its next call (csrc/cpu/big_alloc.h):
    $FLASHSEQ_CPU_BUFFER_CACHE_MB megabytes (a whole number >= 0; 0 keeps none), default 256.
    Any other value warns (RuntimeWarning) and gives the default."""
    import warnings

    raw = os.environ.get(BUFFER_CACHE_ENV, "").strip()
    if not raw:
        return DEFAULT_BUFFER_CACHE_MB << 20
    try:
        mb = int(raw, 10)
    except ValueError:
        mb = -1
    if mb < 0:
        warnings.warn(f"flashseq: {BUFFER_CACHE_ENV}={raw!r} is not a whole number of megabytes "
                      f">= 0 (0 keeps no buffers); using the default, "
                      f"{DEFAULT_BUFFER_CACHE_MB} MB", RuntimeWarning, stacklevel=2)
        mb = DEFAULT_BUFFER_CACHE_MB
    return min(mb, (2**63 - 1) >> 20) << 20


def _configured(module, buffer_cache_limit: int):
    """The loaded extension with this process's settings applied, before its first call."""
    module._set_buffer_cache_limit(buffer_cache_limit)
    return module


@functools.lru_cache(maxsize=None)
def _load():
    """(module, None) on success, (None, error message) otherwise; tried once per process."""
    buffer_cache_limit = buffer_cache_limit_bytes()  # read (and warned about) once, here
    try:
        from flashseq import _C  # built by setup.py
    except ImportError as err:
        install_error = err
    else:
        # Trust it when it was built from these sources with this torch, or when the sources are
        # not shipped (nothing to compare with, nothing to rebuild from).
        if not _sources()[0] or getattr(_C, "source_key", "") == build_key():
            return _configured(_C, buffer_cache_limit), None
        install_error = "it was built from other sources or another torch (stale)"
    try:
        return _configured(_jit_build(), buffer_cache_limit), None
    except Exception as err:  # any build failure makes the backend unavailable, never a crash
        lines = str(err).strip().splitlines() or [type(err).__name__]
        first = next((ln for ln in lines if "error:" in ln), lines[0]).strip()
        return None, (f"flashseq._C is not importable ({install_error}) and building it failed: "
                      f"{first}")


def extension_error() -> str | None:
    """Why the CPU extension cannot be loaded (one line), or None when it can."""
    return _load()[1]


def loaded_extension():
    """The CPU extension if this process has loaded it already, else None (never builds it)."""
    if _load.cache_info().currsize == 0:
        return None
    return _load()[0]


def extension():
    """The loaded CPU extension module; RuntimeError saying why if it cannot be loaded."""
    module, error = _load()
    if module is None:
        raise RuntimeError(error)
    return module
