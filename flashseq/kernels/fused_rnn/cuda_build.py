"""Compiled files of the CUDA back end (cubins, host programs), built once and cached on disk.

``cached_build`` keeps one file per key under ``$FLASHSEQ_CACHE_DIR/cuda/<name>-<digest>/`` with
the rules of flashseq/_cache.py (the same ones the JIT extension uses): the digest covers
``CACHE_VERSION``, the caller's key parts and the content of every source, the file is built in
a private folder and renamed into the entry with a manifest (size, SHA-256), a reader checks the
file against its manifest before using it (a truncated or replaced file is rebuilt), and
concurrent processes take the entry's lock, so a file is built once however many ask for it.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import typing

from flashseq import _cache

# Bump when what an entry holds changes meaning (flags, file layout): every old entry is then
# ignored, since the version is part of each entry's digest.
CACHE_VERSION = 1
_LAYOUT = 1  # of the manifest


class BuildError(RuntimeError):
    """A compiler failed; the message holds the command and the compiler's own output."""


def cache_dir() -> pathlib.Path:
    return _cache.cache_root() / "cuda"


def entry_key(name: str, sources: typing.Iterable, parts) -> str:
    """Digest naming an entry: CACHE_VERSION, ``parts`` (JSON-encodable) and every source's
    content (files, in the given order)."""
    contents = [_cache.file_record(path)["sha256"] for path in sources]
    return f"{name}-{_cache.key_digest(CACHE_VERSION, [name, parts, contents])}"


def run_tool(cmd: list[str], *, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a compiler; BuildError with its command line and output when it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed (exit {done.returncode}):\n"
                         f"{(done.stderr or done.stdout)[-6000:]}")
    return done


def cached_build(name: str, sources: typing.Sequence, parts, build: typing.Callable,
                 suffix: str, *, lock_timeout: float | None = None) -> tuple[pathlib.Path, dict]:
    """(path, manifest) of the cached file for (name, sources, parts), built on first use.

    build(dst: pathlib.Path) -> dict writes the file ``dst`` (in a private folder) and returns
    metadata kept in the manifest (e.g. the compiler's report); it raises BuildError on failure.
    """
    key = entry_key(name, sources, parts)
    root = cache_dir()
    entry = root / key
    found = _cache.lookup_file(entry, _LAYOUT)
    if found is not None:
        return found
    with _cache.CacheLock(root / f"{key}.lock", what=f"building {key}", timeout=lock_timeout):
        found = _cache.lookup_file(entry, _LAYOUT)  # built while this process waited?
        if found is not None:
            return found
        _cache.remove_orphans(root, ".build")
        work = _cache.private_dir(root, ".build")
        try:
            dst = work / f"{name}{suffix}"
            meta = build(dst) or {}
            if not dst.is_file():
                raise BuildError(f"the build of {key} wrote no file {dst.name}")
            path = _cache.publish_file(dst, entry, stem=name, suffix=suffix, layout=_LAYOUT,
                                       meta={"key": key, **meta})
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return path, _cache.read_json(entry / _cache.MANIFEST, _LAYOUT)


def find_tool(name: str) -> str | None:
    """``nvcc``, ``cuobjdump``, ``g++``... on PATH or beside nvcc; cuobjdump also from Triton's
    bundled CUDA tools. None when absent."""
    found = shutil.which(name)
    if found:
        return found
    nvcc = shutil.which("nvcc")
    if nvcc and os.path.isfile(os.path.join(os.path.dirname(nvcc), name)):
        return os.path.join(os.path.dirname(nvcc), name)
    if name in ("cuobjdump", "nvdisasm"):
        try:
            import triton
        except ImportError:
            return None
        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        return path if os.path.isfile(path) else None
    return None
