"""The compiled CPU extension: ``flashseq._C`` if it was built at install, else built on first use.

``pip install --no-build-isolation -e .`` builds ``flashseq._C`` from csrc/cpu/ (setup.py). When
that module is missing, does not load (installed without torch at build time) or is stale (its
``source_key`` is not this build key: sources edited or torch changed since), the same sources are compiled with ``torch.utils.cpp_extension.load`` into
``$FLASHSEQ_CACHE_DIR`` (default ``~/.cache/flashseq``), under ``cpu_ext/<key>`` where the key
hashes the torch version, the compiler flags and every source file, so a changed source or torch
never reuses a stale build. A file lock serialises concurrent builds; a cached build that fails
to load is deleted and rebuilt once. Nothing here runs at import time.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import platform
import shutil



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


def compile_flags() -> tuple[str, ...]:
    """C++ flags of the extension (also used by setup.py). The C++ standard is left to torch
    (C++17 or later). AVX2 only when the building machine has it: the extension is built where
    it runs (JIT cache here, ``pip install --no-build-isolation`` for flashseq._C)."""
    return ("-O3",) + (AVX2_FLAGS if _host_has_avx2() else ())


def cache_dir() -> pathlib.Path:
    """Root of flashseq's on-disk caches: ``$FLASHSEQ_CACHE_DIR`` or ``~/.cache/flashseq``."""
    root = os.environ.get("FLASHSEQ_CACHE_DIR")
    return pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "flashseq"


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


def _jit_build():
    from filelock import FileLock
    from torch.utils import cpp_extension

    cpp, _ = _sources()
    if not cpp:
        raise RuntimeError(f"no C++ sources found under {CSRC_DIR / 'cpu'} (flashseq installed "
                           "without its csrc/ folder?)")
    key = build_key()
    build_dir = cache_dir() / "cpu_ext" / key
    build_dir.mkdir(parents=True, exist_ok=True)

    def load():
        return cpp_extension.load(
            name=f"flashseq_cpu_{key}", sources=[str(p) for p in cpp],
            extra_include_paths=[str(CSRC_DIR)], extra_cflags=list(compile_flags()),
            build_directory=str(build_dir), verbose=False)

    with FileLock(str(build_dir.parent / f"{key}.lock")):
        try:
            return load()
        except (ImportError, OSError):  # a corrupt or partial library left by a killed build
            shutil.rmtree(build_dir, ignore_errors=True)
            build_dir.mkdir(parents=True, exist_ok=True)
            return load()


@functools.lru_cache(maxsize=None)
def _load():
    """(module, None) on success, (None, error message) otherwise; tried once per process."""
    try:
        from flashseq import _C  # built by setup.py
    except ImportError as err:
        install_error = err
    else:
        # Trust it when it was built from these sources with this torch, or when the sources are
        # not shipped (nothing to compare with, nothing to rebuild from).
        if not _sources()[0] or getattr(_C, "source_key", "") == build_key():
            return _C, None
        install_error = "it was built from other sources or another torch (stale)"
    try:
        return _jit_build(), None
    except Exception as err:  # any build failure makes the backend unavailable, never a crash
        lines = str(err).strip().splitlines() or [type(err).__name__]
        first = next((ln for ln in lines if "error:" in ln), lines[0]).strip()
        return None, (f"flashseq._C is not importable ({install_error}) and building it failed: "
                      f"{first}")


def extension_error() -> str | None:
    """Why the CPU extension cannot be loaded (one line), or None when it can."""
    return _load()[1]


def extension():
    """The loaded CPU extension module; RuntimeError saying why if it cannot be loaded."""
    module, error = _load()
    if module is None:
        raise RuntimeError(error)
    return module
