"""Checks on the output paths of ``python -m bench`` (``--json``, ``--md``, ``--png``), made
before a suite runs so that an unwritable path fails in a second, not after the whole suite.

The writers create missing parent folders (``bench.report.write_json``), so a path is fine when
it is not a folder itself and its nearest existing ancestor is a folder we can create files in.
"""
from __future__ import annotations

import tempfile
from pathlib import Path


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def output_path_error(path) -> str | None:
    """Why a result cannot be written to ``path``, else None. Probes by creating (and removing)
    a temporary file, since permission bits say nothing for root or read-only mounts; an
    existing file is opened for appending, which leaves it unchanged."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder, not a file"
    try:
        if path.exists():
            with open(path, "a", encoding="utf-8"):
                pass
            return None
        folder = _nearest_existing(path.parent)
        if not folder.is_dir():
            return f"{folder} is not a folder, so {path} cannot be created"
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return f"cannot write {path}: {err.strerror or err}"
    return None


def check_outputs(options: dict) -> str | None:
    """The first problem among ``{"--json": path or None, ...}`` as one line, else None."""
    for option, path in options.items():
        if path is None:
            continue
        if not str(path).strip():
            return f"{option}: empty path"
        problem = output_path_error(path)
        if problem:
            return f"{option} {path}: {problem}"
    return None


__all__ = ["output_path_error", "check_outputs"]
