"""Atomic file writes (a crash never leaves a file that looks complete), file digests, and the
integer check shared by every reader of parsed JSON and YAML."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ops.errors import DiskFullError, VisionForgeError
from ops.failpoints import failpoint

# Below this much free space a failed write is taken to be a full disk (see :func:`out_of_space`).
LOW_SPACE_BYTES = 1 << 20


def pid_is_alive(pid: int) -> bool:
    """Whether a process with this id exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_name(final_name: str, tag: str = "") -> str:
    """A hidden name beside ``final_name`` that records the writing process:
    ``.<final_name>.<tag><pid>-<random>.tmp``, so a later writer can tell a dead writer's
    leftover (removed by :func:`sweep_stale_temps`) from a live writer's work."""
    return f".{final_name}.{tag}{os.getpid()}-{secrets.token_hex(4)}.tmp"


_TEMP_NAME = re.compile(r"\.(?P<final>.+)\.[a-z-]*?(?P<pid>\d+)-[0-9a-f]{8}\.tmp")


def temp_writer(name: str) -> tuple[str, int] | None:
    """(the final name, the writer's PID) of a :func:`temp_name`; None for any other name."""
    match = _TEMP_NAME.fullmatch(name)
    return (match["final"], int(match["pid"])) if match else None


def sweep_stale_temps(parent: Path, final_name: str) -> list[Path]:
    """Remove what writers of ``final_name`` that died (``kill -9``, power loss) left in
    ``parent``: temp files and directories from :func:`temp_name` whose process is gone."""
    removed: list[Path] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(parent):
            writer = temp_writer(entry.name)
            if writer is None or writer[0] != final_name or pid_is_alive(writer[1]):
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def free_bytes(directory: Path | str) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``directory``."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def out_of_space(exc: BaseException, directory: Path) -> bool:
    """Whether ``exc``, raised while writing into ``directory``, means the disk is full.

    An ``OSError`` says so by its errno. torch.save's C++ writer does not: it raises a bare
    ``RuntimeError`` ("unexpected pos ..."), so a write failure on a filesystem with almost no
    space left at that moment counts as a full disk too."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cause = cause.__cause__ or cause.__context__
    try:
        return isinstance(exc, OSError | RuntimeError) and free_bytes(directory) < LOW_SPACE_BYTES
    except OSError:
        return False


def disk_full_message(path: Path, written: int | None = None) -> str:
    """One line for a write that ran out of space: the file, what it needs, the space left."""
    try:
        free = f"{human_bytes(free_bytes(path.parent))} free there now"
    except OSError:
        free = "the free space is unknown"
    needs = f": it needs more than the {human_bytes(written)} written when the disk filled" if written else ""
    return f"no space left on the device writing {path}{needs} ({free}); free space and run the step again"


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic
    on POSIX filesystems. On any exception the temporary file is removed; one left by a writer
    that was killed is removed by the next writer of the same file. A full disk is one
    :class:`DiskFullError` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path.parent, path.name)
    tmp = path.parent / temp_name(path.name)
    tmp.touch(exist_ok=False)
    try:
        yield tmp
        failpoint(f"write:{path.name}")
        os.replace(tmp, path)
    except Exception as exc:
        if isinstance(exc, VisionForgeError) or not out_of_space(exc, path.parent):
            raise
        written = tmp.stat().st_size if tmp.exists() else None
        raise DiskFullError(disk_full_message(path, written)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path | str, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return Path(path)


def save_figure(fig: Any, path: Path | str, dpi: int = 110) -> Path:
    """Save a matplotlib ``Figure`` as PNG atomically.

    Plots are built on ``matplotlib.figure.Figure`` rather than pyplot: no global backend
    switch inside a library call, no figure registry to close, safe without a display.
    """
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes: binds sidecars, caches, registry versions and downloads to
    one exact artefact."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def is_int(value: Any) -> bool:
    """An integer, ``bool`` excluded: parsed JSON and YAML give ``True`` for ``true``, which
    Python would otherwise accept as the integer 1."""
    return isinstance(value, int) and not isinstance(value, bool)
