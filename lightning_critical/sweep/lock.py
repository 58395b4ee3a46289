"""One live sweep per output directory: ``<out>/.lock`` names its owner, an OS lock proves it is alive.

``lc.sweep.run`` holds :class:`SweepLock` for its whole call. The file holds the owner's pid,
host and start time; while the owner lives it also holds an advisory ``fcntl.flock`` on it,
which the operating system drops when the process ends however it ends (``kill -9``, a
crash, a lost node). So:

* a second sweep on the same ``out`` is refused at once (:class:`SweepLockedError`, naming the
  owner's pid and host and what to do); runs are never trained twice nor logs deleted by two
  writers;
* a lock file whose ``flock`` is free is *stale* (its owner died without cleaning up): it is
  taken over with a one-line notice on stderr;
* the lock is released (file removed) on every exit path: return, exception, Ctrl-C.

Reading a sweep (``lc.sweep.load``) takes no lock.

Shared file systems: ``flock`` works across machines on local disks and on NFS (Linux maps it
to NFS byte-range locks, v4 or v3 with ``lockd``); on some cluster file systems it does not: it
may be refused (Lustre mounted without ``flock``, some FUSE mounts) or be local to each machine
(NFS mounted with ``local_lock=flock``/``all``). Where ``flock`` is refused the lock falls back
to the file's contents: a lock left on this host by a process that no longer exists is stale;
one from another host is trusted as live and refused (delete ``<out>/.lock`` once you know that
sweep is gone). Where ``flock`` is local to each machine, a sweep on another machine cannot be
seen: there, do not start two sweeps on one ``out`` from different machines.

Example::

    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> with SweepLock(out):
    ...     SweepLock(out).acquire()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightning_critical.sweep.lock.SweepLockedError: out=... is in use by a live sweep ...
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
from types import TracebackType
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: only the contents of the lock file
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"


class SweepLockedError(RuntimeError):
    """Another live sweep holds the output directory."""


def _owner() -> dict[str, Any]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": now.isoformat(timespec="seconds")}


def _describe(owner: dict[str, Any]) -> str:
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, started {owner.get('started', '?')}"


def _alive(pid: Any) -> bool:
    """Whether process ``pid`` exists on this host."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class SweepLock:
    """The lock on a sweep's output directory (a context manager; see the module docstring).

    Args:
        out: the sweep's directory (created if missing; removed again on release when the
            lock was all that was put there).
    """

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = os.path.abspath(os.fspath(out))
        self.path = os.path.join(self.out, LOCK)
        self._fd: int | None = None
        self._created_out = False

    def acquire(self) -> SweepLock:
        """Take the lock, or raise :class:`SweepLockedError` naming the live owner."""
        if self._fd is not None:
            raise SweepLockedError(f"out={self.out!r}: this SweepLock is already held.")
        self._created_out = not os.path.isdir(self.out)
        os.makedirs(self.out, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                flocked = self._flock(fd)
                if flocked and not _same_file(fd, self.path):
                    os.close(fd)  # the owner removed it between our open and our lock: try the new file
                    continue
                previous = _read(fd)
                if not flocked:
                    self._check_contents(previous)
                if previous:
                    print(f"lightning-critical: took over a stale lock on out={self.out!r} ({_describe(previous)}: "
                          "that process is gone).", file=sys.stderr)
                _write(fd, _owner())
            except BaseException:
                os.close(fd)
                self._remove_created_out()
                raise
            self._fd = fd
            return self

    def _flock(self, fd: int) -> bool:
        """Lock ``fd`` (``True``), ``False`` where the file system has no flock; refuse a live owner."""
        if fcntl is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._refuse(_read(fd))
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                self._refuse(_read(fd))
            print(f"lightning-critical: the file system of out={self.out!r} does not support flock ({err}); "
                  "the sweep lock relies on its file's pid and host only.", file=sys.stderr)
            return False
        return True

    def _check_contents(self, owner: dict[str, Any]) -> None:
        """Without flock: a recorded owner is live unless it is a vanished process of this host."""
        if not owner:
            return
        if owner.get("host") != socket.gethostname() or _alive(owner.get("pid")):
            self._refuse(owner)

    def _refuse(self, owner: dict[str, Any]) -> None:
        raise SweepLockedError(
            f"out={self.out!r} is in use by a live sweep ({_describe(owner) if owner else 'owner unknown'}). "
            "Wait for it to finish, stop it, or choose another out=; lc.sweep.load(out) reads it meanwhile. "
            f"If that process is gone (e.g. its machine was lost), delete {self.path}."
        )

    def release(self) -> None:
        """Give the lock back (remove the file, then unlock); does nothing when not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                if _same_file(fd, self.path):
                    os.remove(self.path)
        finally:
            os.close(fd)  # closing drops the flock
        self._remove_created_out()

    def _remove_created_out(self) -> None:
        if self._created_out:
            with contextlib.suppress(OSError):
                os.rmdir(self.out)  # only if empty: a call refused before writing anything leaves no trace

    def __enter__(self) -> SweepLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        value = json.loads(data.decode("utf-8", "replace")) if data.strip() else {}
    except (OSError, ValueError):
        return {"pid": "?", "host": "?", "started": "? (unreadable lock file)"}
    return value if isinstance(value, dict) else {}


def _write(fd: int, owner: dict[str, Any]) -> None:
    data = json.dumps(owner, sort_keys=True).encode() + b"\n"
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, data)
    os.fsync(fd)
