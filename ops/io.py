"""Atomic file writes (a crash never leaves a file that looks complete), file digests, and the
integer check shared by every reader of parsed JSON and YAML."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic
    on POSIX filesystems. On any exception the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
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
