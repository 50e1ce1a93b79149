"""flashseq's on-disk caches (first-use builds, tuning results): the rules every cache follows.

- **Where:** ``cache_root()`` is ``$FLASHSEQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/flashseq``, else
  ``~/.cache/flashseq``. File names are digests of a key (``key_digest``), never user strings.
- **Versioned:** a key digests its parts together with the caller's layout version; every JSON
  record carries ``"layout"``, and a record of another layout is ignored (``read_json``).
- **Atomic:** ``write_json`` and ``publish_file`` write a temporary file in the target folder and
  rename it over the target, so a reader sees the old content or the new, never a part; a file
  another process may have mapped (a loaded library) is replaced, never written in place.
- **Checked:** ``publish_file`` records the size and SHA-256 of a published file in the folder's
  ``manifest.json``; ``lookup_file`` returns the file only when it still has both, so a cache cut
  short (partial copy, full disk) is rebuilt instead of crashing the process that maps it.
- **Read-only friendly:** lookups open files for reading only; a complete cache on a read-only
  file system (or owned by someone else) is used as it is.
- **Locked:** ``CacheLock`` serialises the writers of one entry. It is an ``flock`` lock, which
  the kernel drops when its owner dies (SIGKILL, OOM killer), and it records the owner's pid,
  host and task in the lock file, so a process that waits says for what and for whom, and gives
  up after a timeout with ``LockTimeout``. Build folders of owners that died are found by
  ``remove_orphans`` (their pid and host are in their names).

Only the standard library is imported (setup.py loads flashseq/_jit.py, which uses this module,
without flashseq's dependencies).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pathlib
import socket
import tempfile
import time

try:
    import fcntl
except ImportError:  # Windows: locking degrades to none (see CacheLock)
    fcntl = None

log = logging.getLogger("flashseq")

MANIFEST = "manifest.json"
# Seconds a CacheLock waits by default; $FLASHSEQ_LOCK_TIMEOUT overrides it.
DEFAULT_LOCK_TIMEOUT_S = 600.0


def cache_root() -> pathlib.Path:
    """Root folder of flashseq's caches (see the module docstring)."""
    root = os.environ.get("FLASHSEQ_CACHE_DIR")
    if root:
        return pathlib.Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache") / "flashseq"


def key_digest(layout: int, parts, length: int = 20) -> str:
    """Hex digest (``length`` characters) naming a cache entry.

    layout: the caller's layout version (bump it when what an entry holds changes).
    parts: anything JSON can encode (dicts are encoded with sorted keys), e.g. the device name,
        versions, kernel name, shape bucket and dtype of a tuning entry.
    """
    text = json.dumps([layout, parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_record(path) -> dict:
    """{"size": bytes, "sha256": hex digest} of a file's content."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def matches_record(path, record) -> bool:
    """Whether the file has the recorded size and SHA-256 (size first: cheap, and a truncated
    file fails it without being read)."""
    try:
        if os.stat(path).st_size != record.get("size"):
            return False
        return file_record(path)["sha256"] == record.get("sha256")
    except OSError:
        return False


def read_json(path, layout: int | None = None) -> dict | None:
    """The JSON object stored at ``path``; None when it is missing, unreadable, not a JSON
    object, or (with ``layout``) written for another layout. Opens for reading only."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if layout is not None and data.get("layout") != layout:
        return None
    return data


def write_json(path, data: dict, layout: int | None = None) -> None:
    """Write ``data`` (with ``"layout": layout`` added when given) to ``path`` atomically: a
    temporary file in the same folder, flushed to disk, then renamed over ``path``."""
    path = pathlib.Path(path)
    if layout is not None:
        data = {**data, "layout": layout}
    text = json.dumps(data, indent=1, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide a shared cache from others
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def publish_file(src, entry_dir, *, stem: str, suffix: str, layout: int, meta: dict | None = None
                 ) -> pathlib.Path:
    """Move the finished file ``src`` into ``entry_dir`` and record it there.

    The file becomes ``<stem>-<first 16 hex of its sha256><suffix>`` (a new content never
    overwrites a file another process has mapped), then ``manifest.json`` is replaced atomically
    with {"file", "size", "sha256", "layout"} plus ``meta``. ``src`` must be on the same file
    system as ``entry_dir`` (a sibling build folder, say). Returns the published path.
    """
    entry_dir = pathlib.Path(entry_dir)
    entry_dir.mkdir(parents=True, exist_ok=True)
    record = file_record(src)
    with open(src, "rb") as f:
        os.fsync(f.fileno())
    target = entry_dir / f"{stem}-{record['sha256'][:16]}{suffix}"
    os.replace(src, target)
    write_json(entry_dir / MANIFEST, {**(meta or {}), "file": target.name, **record}, layout)
    return target


def lookup_file(entry_dir, layout: int) -> tuple[pathlib.Path, dict] | None:
    """(path, manifest) of the file published in ``entry_dir`` when its manifest is of this
    layout and the file still has the recorded size and SHA-256; None otherwise (missing,
    truncated, replaced, foreign). Writes nothing."""
    entry_dir = pathlib.Path(entry_dir)
    manifest = read_json(entry_dir / MANIFEST, layout)
    if manifest is None:
        return None
    name = manifest.get("file")
    if not isinstance(name, str) or not name or name != os.path.basename(name) or name[0] == ".":
        return None  # the manifest names a file in this folder, nothing else
    path = entry_dir / name
    return (path, manifest) if matches_record(path, manifest) else None


# ---- processes ------------------------------------------------------------------------------
def _host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts as dead)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def private_dir(parent, prefix: str) -> pathlib.Path:
    """A new folder ``<prefix>-<host>-<pid>-<random>`` under ``parent`` for one process's work
    (a build), so nothing it leaves behind is shared; see remove_orphans."""
    parent = pathlib.Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    host = _host().replace("-", "_")
    return pathlib.Path(tempfile.mkdtemp(dir=parent, prefix=f"{prefix}-{host}-{os.getpid()}-"))


def remove_orphans(parent, prefix: str) -> list[pathlib.Path]:
    """Delete the private_dir folders under ``parent`` whose owner (same host) has died;
    returns them. Folders of other hosts or of live processes are left alone."""
    import shutil

    host = _host().replace("-", "_")
    removed = []
    try:
        entries = list(pathlib.Path(parent).glob(f"{prefix}-{host}-*-*"))
    except OSError:
        return removed
    for path in entries:
        pid_text = path.name[len(f"{prefix}-{host}-"):].split("-", 1)[0]
        if pid_text.isdigit() and not pid_alive(int(pid_text)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # already gone, or never created: nothing to clean


# ---- locking --------------------------------------------------------------------------------
class LockTimeout(TimeoutError):
    """CacheLock waited ``timeout`` seconds; the message names the lock, the task and the owner."""


def lock_timeout_s() -> float:
    """$FLASHSEQ_LOCK_TIMEOUT (seconds) or DEFAULT_LOCK_TIMEOUT_S."""
    text = os.environ.get("FLASHSEQ_LOCK_TIMEOUT")
    if not text:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"FLASHSEQ_LOCK_TIMEOUT must be a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise ValueError(f"FLASHSEQ_LOCK_TIMEOUT must be >= 0 seconds, got {text!r}")
    return value


class CacheLock:
    """An exclusive lock on one cache entry, across processes: ``with CacheLock(path, what=...)``.

    path: the lock file (created if missing, kept afterwards: deleting a lock file others may be
        waiting on would let two owners in).
    what: what the owner does, for messages ("building flashseq_cpu_<key>").
    timeout: seconds to wait (None: lock_timeout_s()); past it, LockTimeout.
    poll: seconds between attempts.

    The lock is ``flock`` on the open file, so it ends with its owner's process however that
    dies. The owner writes {"pid", "host", "what", "since"} into the file; a waiter logs one
    warning naming them (and whether that pid is still alive) after ``quiet`` seconds. Without
    fcntl (Windows) the lock does nothing: writers stay safe because every write is an atomic
    rename, only duplicate work is no longer avoided.
    """

    def __init__(self, path, *, what: str, timeout: float | None = None, poll: float = 0.05,
                 quiet: float = 1.0):
        self.path = pathlib.Path(path)
        self.what = what
        self.timeout = lock_timeout_s() if timeout is None else timeout
        self.poll = poll
        self.quiet = quiet
        self._fd = None

    def owner(self) -> dict | None:
        """The record of the process holding (or that last held) the lock, or None."""
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read(4096) or b"null")
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def describe_owner(self) -> str:
        """'pid 123 on host h (alive), building ..., for 12 s' or why it cannot say."""
        rec = self.owner()
        if not rec:
            return "an owner that has not written its record yet"
        pid, host = rec.get("pid"), rec.get("host")
        if host == _host():
            state = "alive" if pid_alive(pid) else "dead: the lock is held by a process it left"
        else:
            state = "on another host"
        since = rec.get("since")
        age = f", for {time.time() - since:.0f} s" if isinstance(since, (int, float)) else ""
        return f"pid {pid} on {host} ({state}), {rec.get('what', '?')}{age}"

    def acquire(self) -> None:
        if fcntl is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        start = time.monotonic()
        told = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as err:
                    if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                waited = time.monotonic() - start
                if waited >= self.timeout:
                    raise LockTimeout(
                        f"gave up after {waited:.0f} s waiting for the lock {self.path} "
                        f"({self.what}); it is held by {self.describe_owner()}")
                if not told and waited >= self.quiet:
                    log.warning("flashseq: waiting for the lock %s (%s), held by %s; giving up "
                                "after %.0f s ($FLASHSEQ_LOCK_TIMEOUT)", self.path, self.what,
                                self.describe_owner(), self.timeout)
                    told = True
                time.sleep(self.poll)
            record = json.dumps({"pid": os.getpid(), "host": _host(), "what": self.what,
                                 "since": time.time()}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no owner record outlives the owner's hold
        finally:
            os.close(fd)  # drops the flock

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False
