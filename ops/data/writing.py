"""Writing a generated dataset so that a crash never leaves one that looks complete: it is built
in a hidden directory beside its final place and renamed there at the end, with a stamp of the
settings that made it; and a dataset's problems reported all at once. Shared by every task's
generator and loader."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from ops.errors import DatasetError

STAMP_NAME = ".generator.json"


def problem_error(what: str, root: Path, problems: list[str]) -> DatasetError:
    listing = "\n".join(f"  - {p}" for p in problems)
    return DatasetError(f"{what} under {root} has {len(problems)} problem(s):\n{listing}")


def default_workers() -> int:
    """Processes for rendering: the CPUs this process may run on (at most 8)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, available or 1))


def sibling_dir(root: Path, tag: str) -> Path:
    """A fresh hidden directory beside ``root`` (same filesystem: the final rename is atomic)."""
    while True:
        path = root.parent / f".{root.name}.{tag}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def swap_into_place(tmp: Path, root: Path) -> None:
    """Rename the finished dataset onto ``root``; an old one goes only once the new is there."""
    old: Path | None = None
    if root.exists():
        old = sibling_dir(root, "old")
        os.rmdir(old)
        os.rename(root, old)
    try:
        os.rename(tmp, root)
    except BaseException:
        if old is not None:
            os.rename(old, root)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_stamp(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None
