"""The restoration tasks: each one is the shared steps (:class:`RestorationSteps`) with its data
source. Adding a task (GOPRO) is a data source and a ``params.yaml`` section."""

from __future__ import annotations

from pathlib import Path

from ops.config import SiddDatasetConfig
from ops.data.download import fetch_archive
from ops.errors import DatasetError
from ops.restoration.pairs import PairSplit
from ops.restoration.sidd import generate_sidd_dataset, load_sidd
from ops.restoration.steps import RestorationSteps


class SiddData:
    """SIDD sRGB pairs: generated in the official layout, fetched from an archive, or a local copy."""

    group_keys = ("phone", "iso")

    def prepare(self, cfg: SiddDatasetConfig) -> None:
        if cfg.source == "generate":
            generate_sidd_dataset(cfg.root, cfg.generator, progress=True)
        elif cfg.source == "download":
            if not cfg.download.url:
                raise DatasetError(
                    "sidd.dataset.source is 'download' but sidd.dataset.download.url is not set"
                )
            fetch_archive(
                cfg.download.url,
                cfg.download.sha256,
                cfg.root.parent / ".downloads",
                cfg.root,
                max_bytes=cfg.download.max_bytes,
            )
        elif not cfg.root.is_dir():
            raise DatasetError(f"sidd.dataset.source is 'local' but {cfg.root} does not exist")

    def load(self, root: Path, split: str, check_images: bool = True) -> PairSplit:
        return load_sidd(root, split, check_images=check_images)  # type: ignore[arg-type]


SIDD = RestorationSteps("sidd", SiddData())
