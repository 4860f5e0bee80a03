"""One writer per task at a time: every step of a task (a CLI command, a DVC stage, which runs
the CLI, a Dagster asset) holds the task's lock while it writes.

A second writer of the same task waits up to ``project.lock_wait_s`` (default 0: it fails at
once) and then fails with one :class:`TaskLockedError` naming the holder: what it is, its PID,
its host and since when. Different tasks never wait on each other.

The lock is ``flock`` on ``<artifacts_dir>/.locks/<task>.lock``. The kernel releases it when
the holder's process ends, however it ends, ``kill -9`` included, so a crash cannot leave a
lock that blocks the task forever. A PID file would need a staleness check that cannot be made
reliable: PIDs are reused, and a PID from another container or machine cannot be checked at
all. The file does record its holder, for the messages. A holder that releases the lock
removes the file, so a file that is still there when the lock is free was left by a holder
that died: the next writer takes the lock over and logs the dead holder's name and PID.

A process that takes a lock it already holds (a nested call) counts up instead of waiting on
itself: a second ``flock`` on a new open of the file would refuse it. The lock works wherever
``flock`` does: local disks, and volumes shared by containers on one host. On NFS it is
emulated with byte-range locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from ops.config import Params
from ops.errors import DiskFullError, VisionForgeError
from ops.io import disk_full_message, out_of_space

log = logging.getLogger(__name__)

POLL_S = 0.5
_held: dict[Path, int] = {}  # lock path -> how many times this process holds it


class TaskLockedError(VisionForgeError):
    """Another writer holds the task's lock (named in the message)."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its file records it."""

    what: str
    pid: int
    host: str
    since: str

    @classmethod
    def me(cls, what: str) -> Holder:
        return cls(what, os.getpid(), socket.gethostname(), datetime.now(UTC).isoformat(timespec="seconds"))

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None  # empty (just created) or written by something else

    def describe(self) -> str:
        return f"{self.what} (pid {self.pid} on {self.host}, since {self.since})"


def lock_path(params: Params, task: str) -> Path:
    return params.project.artifacts_dir / ".locks" / f"{task}.lock"


def _read(fd: int) -> Holder | None:
    os.lseek(fd, 0, os.SEEK_SET)
    return Holder.parse(os.read(fd, 4096).decode(errors="replace"))


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path``: a holder that released removed it, and a
    lock on the removed file would guard nothing."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _acquire(path: Path, task: str, holder: Holder, wait_s: float) -> int:
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            current = _read(fd)
            os.close(fd)
            who = current.describe() if current else "another process"
            if time.monotonic() >= deadline:
                waited = f" after waiting {wait_s:.0f} s" if wait_s else ""
                raise TaskLockedError(
                    f"task {task} is busy{waited}: {who} holds its lock {path}. Wait for it to "
                    "finish, or set project.lock_wait_s to wait longer"
                ) from None
            if not announced:
                log.info("waiting up to %.0f s for %s: %s holds its lock", wait_s, task, who)
                announced = True
            time.sleep(POLL_S)
            continue
        if not _same_file(fd, path):
            os.close(fd)
            continue
        left = _read(fd)
        if left is not None:
            log.warning(
                "took over the lock of %s left by %s, which ended without releasing it",
                task,
                left.describe(),
            )
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(asdict(holder)).encode(), 0)
        except OSError as exc:
            os.close(fd)
            if out_of_space(exc, path.parent):
                raise DiskFullError(disk_full_message(path)) from None
            raise
        return fd


@contextlib.contextmanager
def task_lock(params: Params, task: str, what: str, wait_s: float | None = None) -> Iterator[None]:
    """Hold ``task``'s lock for the block; ``what`` names the holder in others' errors.
    ``wait_s`` (default ``project.lock_wait_s``) bounds the wait for a busy lock."""
    path = lock_path(params, task).resolve()
    if _held.get(path):
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    wait = params.project.lock_wait_s if wait_s is None else wait_s
    fd = _acquire(path, task, Holder.me(what), wait)
    _held[path] = 1
    try:
        yield
    finally:
        del _held[path]
        path.unlink(missing_ok=True)  # before the unlock: a waiter must not lock a file on its way out
        os.close(fd)
