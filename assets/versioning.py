"""The dataset's data version: DVC's hash of the dataset directory, so a data change marks
everything downstream stale, the sensor notices it, and the same value tags the MLflow runs and
model versions (data lineage is one value everywhere).

The hash is :func:`ops.versioning.dataset_version` (DVC 3's ``<md5>.dir``, what ``dvc.lock``
records); this name stays for the assets and the sensor.
"""

from __future__ import annotations

from pathlib import Path

from ops.versioning import dataset_version


def dataset_content_hash(root: Path | str) -> str:
    """DVC's hash of ``root``: relative paths and bytes, in path order; modification times do not
    count, so a regenerated dataset (the generator is deterministic) is the same data."""
    return dataset_version(root)
