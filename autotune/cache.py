"""The writing side of the tuning cache (the reading side, which dispatch uses, is
``flashseq.tuning``; the file format is described there).

``record(identity, entries, folder)`` merges new entries into the device's file under a
``CacheLock`` (flock, so concurrent tuners of one device take turns) and replaces the file
atomically (``write_json``: temporary file + rename), so a reader sees the old file or the new
one, never a mix. A file that cannot be used (truncated, corrupt, another layout, another device
or version) is replaced by one holding only the new entries, with one warning saying why.
"""
from __future__ import annotations

import pathlib
import time
import warnings

from flashseq import tuning
from flashseq._cache import CacheLock, write_json


def record(identity: dict, entries: list, folder=None) -> pathlib.Path:
    """Add ``entries`` (dicts with kernel, bucket, dtype, config and any measurements) to the
    tuning file of ``identity`` in ``folder`` (default ``flashseq.tuning.tune_dir()``); an
    entry replaces the one of the same (kernel, bucket, dtype). Returns the file's path."""
    path = tuning.cache_file(identity, folder)
    with CacheLock(path.with_suffix(".lock"), what=f"writing the tuning cache {path.name}"):
        kept, problem = tuning.parse_file(path, identity)
        if problem:
            warnings.warn(f"flashseq-tune: rebuilding the tuning cache {path}: {problem}",
                          RuntimeWarning, stacklevel=2)
        merged = {tuning.entry_key(e["kernel"], e["bucket"], e["dtype"]): e for e in kept}
        for entry in entries:
            entry = {**entry, "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            merged[tuning.entry_key(entry["kernel"], entry["bucket"], entry["dtype"])] = entry
        ordered = sorted(merged.values(), key=lambda e: (e["kernel"], e["dtype"],
                                                         sorted(e["bucket"].items())))
        write_json(path, {"device": identity, "entries": ordered}, tuning.LAYOUT)
    tuning.reload()
    return path


__all__ = ["record"]
