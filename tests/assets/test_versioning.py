"""The dataset's data version (DVC's hash): equal data, equal hash; a change in bytes or names, a new one."""

from __future__ import annotations

import os
from pathlib import Path

from assets.versioning import dataset_content_hash


def _dataset(root: Path) -> Path:
    (root / "images" / "train").mkdir(parents=True)
    (root / "annotations").mkdir()
    (root / "images" / "train" / "0001.jpg").write_bytes(b"\xff\xd8image-one")
    (root / "images" / "train" / "0002.jpg").write_bytes(b"\xff\xd8image-two")
    (root / "annotations" / "instances_train.json").write_text('{"images": []}')
    return root


def test_same_content_in_another_place_has_the_same_hash(tmp_path):
    assert dataset_content_hash(_dataset(tmp_path / "a")) == dataset_content_hash(_dataset(tmp_path / "b"))


def test_rewriting_identical_bytes_keeps_the_hash(tmp_path):
    root = _dataset(tmp_path / "d")
    before = dataset_content_hash(root)
    image = root / "images" / "train" / "0001.jpg"
    image.write_bytes(image.read_bytes())
    os.utime(image, (1, 1))  # a regenerated file: new mtime, same bytes
    assert dataset_content_hash(root) == before


def test_changed_bytes_renamed_or_added_files_change_the_hash(tmp_path):
    root = _dataset(tmp_path / "d")
    seen = {dataset_content_hash(root)}
    (root / "images" / "train" / "0002.jpg").write_bytes(b"\xff\xd8image-2")
    seen.add(dataset_content_hash(root))
    (root / "images" / "train" / "0002.jpg").rename(root / "images" / "train" / "0003.jpg")
    seen.add(dataset_content_hash(root))
    (root / "images" / "train" / "0004.jpg").write_bytes(b"")
    seen.add(dataset_content_hash(root))
    assert len(seen) == 4


def test_hidden_files_count_as_dvc_counts_them(tmp_path):
    root = _dataset(tmp_path / "d")
    before = dataset_content_hash(root)
    (root / ".DS_Store").write_bytes(b"finder")  # DVC hashes it too: the version is DVC's
    assert dataset_content_hash(root) != before
