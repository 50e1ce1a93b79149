"""The tuning cache as dispatch reads it: the winners ``flashseq-tune`` recorded for this device.

One JSON file per device under ``<cache_root()>/tune/`` (``$FLASHSEQ_CACHE_DIR/tune``, else
``~/.cache/flashseq/tune``), named by a digest of the device's identity (``device_identity``:
CPU model and ISA, or GPU name, compute capability and CUDA version; torch, triton and flashseq
versions). It holds::

    {"layout": 1, "device": {...identity...},
     "entries": [{"kernel": "fused_rnn.cpu", "bucket": {...}, "dtype": "float32",
                  "config": {...}, "time_ms": ..., "untuned_ms": ...}, ...]}

``lookup(kernel, device, bucket, dtype)`` returns the recorded ``config`` dict or None. The file
is read once per process and device (then plain dict lookups: no disk access per call). A file
that cannot be parsed, is of another layout, or was written for another device or version is
ignored with one warning, and the next ``flashseq-tune`` run replaces it. ``FLASHSEQ_TUNING=off``
(also ``0``, ``false``, ``no``) makes every lookup return None. The writing side (merging under
a lock, atomic replace) is ``flashseq.autotune.cache``.

Only the standard library and torch are imported here; dispatch calls this on every kernel call.
"""
from __future__ import annotations

import json
import os
import pathlib
import platform
import warnings

import torch

from flashseq._cache import cache_root, key_digest, read_json

LAYOUT = 1
ENV = "FLASHSEQ_TUNING"
_OFF = ("off", "0", "false", "no")

_identities: dict = {}       # device string -> identity dict
_tables: dict = {}           # (folder, device string) -> {(kernel, dtype, bucket items): config}
_warned: set = set()


def enabled() -> bool:
    """False when ``$FLASHSEQ_TUNING`` is off/0/false/no (dispatch then ignores the cache)."""
    return os.environ.get(ENV, "on").strip().lower() not in _OFF


def tune_dir() -> pathlib.Path:
    """The folder of the per-device tuning files: ``cache_root() / "tune"``."""
    return cache_root() / "tune"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform's answer below
    return platform.processor() or platform.machine()


def _cpu_isa() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    return "avx512" if "avx512f" in flags else ("avx2" if "avx2" in flags else "baseline")


def _versions() -> dict:
    from importlib.util import find_spec

    import flashseq

    triton = None
    if find_spec("triton") is not None:
        from importlib.metadata import PackageNotFoundError, version
        try:
            triton = version("triton")
        except PackageNotFoundError:
            triton = "unknown"
    return {"torch": torch.__version__, "triton": triton, "flashseq": flashseq.__version__}


def device_identity(device) -> dict:
    """What a tuning result is valid for: the device (CPU model and ISA, or the GPU's name,
    compute capability and CUDA version) and the torch/triton/flashseq versions."""
    device = torch.device(device)
    key = str(device)
    found = _identities.get(key)
    if found is None:
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            props = torch.cuda.get_device_properties(index)
            dev = {"kind": "cuda", "name": props.name, "capability": [props.major, props.minor],
                   "cuda": torch.version.cuda}
        else:
            dev = {"kind": device.type, "model": _cpu_model(), "isa": _cpu_isa(),
                   "machine": platform.machine()}
        found = _identities[key] = {**dev, **_versions()}
    return found


def cache_file(identity: dict, folder=None) -> pathlib.Path:
    """The JSON file of one device identity inside ``folder`` (default ``tune_dir()``)."""
    folder = pathlib.Path(folder) if folder is not None else tune_dir()
    kind = identity.get("kind", "device")
    return folder / f"{kind}-{key_digest(LAYOUT, identity, 16)}.json"


def entry_key(kernel: str, bucket: dict, dtype: str) -> tuple:
    """The in-memory key of one entry (bucket values must be JSON scalars)."""
    return (kernel, dtype, tuple(sorted(bucket.items())))


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def parse_file(path, identity: dict) -> tuple[list, str | None]:
    """(entries, problem): the valid entries of a tuning file, and why the file (or some of its
    entries) was not usable, or None. A missing file is no problem and has no entries."""
    path = pathlib.Path(path)
    if not path.exists():
        return [], None
    data = read_json(path)
    if data is None:
        return [], "it is not a readable JSON object (truncated or corrupt)"
    if data.get("layout") != LAYOUT:
        return [], f"it has layout {data.get('layout')!r}, this flashseq reads layout {LAYOUT}"
    if data.get("device") != identity:
        return [], ("it was written for another device or other versions "
                    f"({json.dumps(data.get('device'), sort_keys=True)[:200]})")
    entries, bad = [], 0
    for entry in data.get("entries") or []:
        if (isinstance(entry, dict) and isinstance(entry.get("kernel"), str)
                and isinstance(entry.get("bucket"), dict) and isinstance(entry.get("dtype"), str)
                and isinstance(entry.get("config"), dict)):
            entries.append(entry)
        else:
            bad += 1
    return entries, (f"{bad} malformed entries were skipped" if bad else None)


def _table(device) -> dict:
    if not isinstance(device, torch.device):
        device = torch.device(device)
    # keyed by the variables cache_root() reads, not by its Path (tens of microseconds a call)
    env = os.environ
    key = (env.get("FLASHSEQ_CACHE_DIR"), env.get("XDG_CACHE_HOME"), device.type, device.index)
    table = _tables.get(key)
    if table is None:
        identity = device_identity(device)
        path = cache_file(identity, tune_dir())
        entries, problem = parse_file(path, identity)
        if problem:
            warn_once(f"flashseq: ignoring the tuning cache {path}: {problem}; the default "
                      "plans run until `flashseq-tune` rebuilds it")
        table = {}
        for entry in entries:
            try:
                table[entry_key(entry["kernel"], entry["bucket"], entry["dtype"])] = entry["config"]
            except TypeError:  # an unhashable bucket value: a malformed entry
                warn_once(f"flashseq: skipping a malformed entry of the tuning cache {path}")
        _tables[key] = table
    return table


def table(device) -> dict:
    """{entry_key(...): config} of this device's cache ({} when tuning is off or nothing is
    recorded), read once per process; callers test it for emptiness before computing a key."""
    return _table(device) if enabled() else {}


def lookup(kernel: str, device, bucket: dict, dtype: str) -> dict | None:
    """The tuned configuration recorded for (kernel, this device, bucket, dtype), or None
    (nothing recorded, tuning off, or the cache unusable: see the module docstring)."""
    if not enabled():
        return None
    return _table(device).get(entry_key(kernel, bucket, dtype))


def reload() -> None:
    """Forget what was read (the next lookup reads the files again), e.g. after a tuning run."""
    _tables.clear()
    _warned.clear()


def pow2_bucket(n: int) -> int:
    """The shape bucket of a size: the next power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


__all__ = ["LAYOUT", "ENV", "enabled", "tune_dir", "device_identity", "cache_file", "entry_key",
           "parse_file", "table", "lookup", "reload", "pow2_bucket"]
