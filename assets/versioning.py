"""The dataset's data version: a content hash, so any change to the data marks everything
downstream stale and the sensor can notice it.

Stand-in until the dataset is DVC-tracked; DVC's hash of the directory replaces it then.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def dataset_content_hash(root: Path | str) -> str:
    """SHA-256 over every file under ``root``: relative path, size and bytes, in path order.

    Bytes rather than modification times, because a regenerated dataset (the generator is
    deterministic) is the same data and must not look new. Hidden files (editor or OS
    droppings such as ``.DS_Store``) do not count.
    """
    root = Path(root)
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    for path in files:
        rel = path.relative_to(root).as_posix()
        digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
