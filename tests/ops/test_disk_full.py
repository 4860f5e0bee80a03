"""A full disk, for real: a small tmpfs mounted as the output directory. Each write that runs out
of space is one DiskFullError naming the file and the space it needed; the previous version of
the file is kept and nothing half-written is left. (``make faults`` runs every pipeline step on
a disk that fills part-way.)"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ops.config import load_params
from ops.errors import DiskFullError
from ops.io import atomic_path, write_json
from ops.locking import task_lock
from tests.conftest import tiny_params_dict, write_params
from tests.services import Tmpfs, tmpfs_unavailable

SIZE = 256 * 1024


@pytest.fixture(scope="module")
def why_not() -> str | None:
    return tmpfs_unavailable()


@pytest.fixture
def disk(tmp_path: Path, why_not: str | None) -> Iterator[Path]:
    if why_not is not None:
        pytest.skip(f"no tmpfs to fill: {why_not}")
    tmpfs = Tmpfs(tmp_path / "disk", SIZE)
    tmpfs.mount()
    try:
        yield tmpfs.mountpoint
    finally:
        tmpfs.unmount()


def _only(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_a_checkpoint_that_does_not_fit_keeps_the_previous_one(disk):
    small = {"model_state": torch.nn.Linear(8, 8).state_dict()}
    path = disk / "last.pt"
    with atomic_path(path) as tmp:
        torch.save(small, tmp)
    before = path.read_bytes()
    big = {"model_state": torch.nn.Linear(400, 400).state_dict()}  # 640 KiB of weights
    with pytest.raises(DiskFullError) as caught:
        with atomic_path(path) as tmp:
            torch.save(big, tmp)  # raises a bare RuntimeError, not ENOSPC
    message = str(caught.value)
    assert message.startswith(f"no space left on the device writing {path}: it needs more than the ")
    assert "free space and run the step again" in message
    assert path.read_bytes() == before
    assert _only(disk) == ["last.pt"]


def test_a_json_report_that_does_not_fit_is_not_written(disk):
    path = disk / "metrics.json"
    with pytest.raises(DiskFullError, match=r"writing .*metrics\.json: it needs more than the .* KiB"):
        write_json(path, {"values": "x" * (2 * SIZE)})
    assert _only(disk) == []


def test_a_lock_on_a_full_disk_is_the_same_error(disk, tmp_path):
    raw = tiny_params_dict(tmp_path)
    raw["project"]["artifacts_dir"] = str(disk)
    params = load_params(write_params(tmp_path, raw))
    (disk / ".locks").mkdir()
    (disk / "filler").write_bytes(b"\0" * SIZE)  # stops short of the end with ENOSPC
    with pytest.raises(DiskFullError, match=r"writing .*\.locks/sidd\.lock"):
        with task_lock(params, "sidd", "a writer on a full disk"):
            pass
