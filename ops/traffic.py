"""The traffic detection task's steps, each a plain function of :class:`~ops.config.Params`.

The CLI, DVC stages and Dagster assets all call these, so a step means the same thing
wherever it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ops.config import Params
from ops.data.coco import load_coco_split, write_dataset_report
from ops.data.traffic_scenes import generate_traffic_dataset
from ops.errors import DatasetError
from ops.evaluate import evaluate_forward, torch_forward
from ops.layout import TaskLayout
from ops.train import TrainDetectorResult, load_detector, train_detector

log = logging.getLogger(__name__)
TASK = "traffic"
SPLITS = ("train", "val")


def ingest(params: Params) -> dict[str, Any]:
    """Generate (or find) the dataset, validate both splits and write their reports."""
    cfg = params.traffic.dataset
    layout = TaskLayout.for_task(params, TASK)
    if cfg.source == "generate":
        generate_traffic_dataset(cfg.root, cfg.generator)
    elif not cfg.root.is_dir():
        raise DatasetError(f"dataset.source is 'local' but {cfg.root} does not exist")
    reports = {}
    for split in SPLITS:
        reports[split] = write_dataset_report(load_coco_split(cfg.root, split), layout.dataset_report)
    return reports


def train(
    params: Params, resume: bool = False, after_epoch: Callable[[int], None] | None = None
) -> TrainDetectorResult:
    layout = TaskLayout.for_task(params, TASK)
    return train_detector(
        params.traffic.dataset.root,
        params.traffic.model,
        params.traffic.train,
        layout.model_dir,
        resume=resume,
        after_epoch=after_epoch,
    )


def evaluate(params: Params, split: str = "val") -> dict[str, Any]:
    """Score the trained PyTorch weights on ``split``; metrics in ``metrics/pytorch.json``."""
    layout = TaskLayout.for_task(params, TASK)
    bundle = load_detector(layout.weights, params.traffic.model)
    coco_split = load_coco_split(params.traffic.dataset.root, split)
    if coco_split.class_names != bundle.class_names:
        raise DatasetError(
            f"{coco_split.annotation_path} has classes {coco_split.class_names} but the model "
            f"{layout.weights} was trained on {bundle.class_names}"
        )
    backend = "pytorch"
    return evaluate_forward(
        torch_forward(bundle.model),
        coco_split,
        params.traffic.model,
        params.traffic.evaluate,
        layout.evaluation(backend),
        layout.metrics(backend),
        backend,
    )
