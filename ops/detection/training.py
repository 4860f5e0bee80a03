"""Training the detector through the shared loop (:func:`ops.train.fit`): its checkpoint
signature, its augmented dataset and CenterNet loss, and the released weights' file."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ops.config import ModelConfig, TrainConfig
from ops.detection.centernet import centernet_loss
from ops.detection.coco import CocoSplit, load_coco_split
from ops.detection.data import DetectionDataset, InputNormalizer
from ops.detection.model import TrafficQuantizerNet
from ops.io import atomic_path
from ops.train import (
    CHECKPOINT_FORMAT,
    LossFn,
    TrainResult,
    check_signature,
    fit,
    load_checkpoint,
    seed_everything,
    write_training_outputs,
)

log = logging.getLogger(__name__)


def detector_signature(model_cfg: ModelConfig, class_names: list[str]) -> dict[str, Any]:
    """What a checkpoint must match to be loaded into the model built from this config."""
    model = {k: list(v) if isinstance(v, tuple) else v for k, v in model_cfg.model_dump().items()}
    if model_cfg.backbone != "hrnet":  # so checkpoints from before the field existed still match
        model.pop("hrnet_width")
    return {"architecture": "TrafficQuantizerNet", "model": model, "class_names": list(class_names)}


def build_detector(model_cfg: ModelConfig, num_classes: int) -> TrafficQuantizerNet:
    return TrafficQuantizerNet(
        num_classes=num_classes,
        input_size=model_cfg.input_size,
        width_mult=model_cfg.width_mult,
        upsample=tuple(model_cfg.upsample),
        backbone=model_cfg.backbone,
        head_width=model_cfg.head_width,
        decoder_skips=model_cfg.decoder_skips,
        hrnet_width=model_cfg.hrnet_width,
    )


@dataclass
class DetectorBundle:
    """A trained detector plus everything needed to feed it and read its outputs."""

    model: TrafficQuantizerNet
    model_cfg: ModelConfig
    class_names: list[str]


def save_detector(
    path: Path, model: TrafficQuantizerNet, model_cfg: ModelConfig, class_names: list[str]
) -> Path:
    """The released weights: model state and signature, no optimiser (small, loadable alone)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "signature": detector_signature(model_cfg, class_names),
        "model_state": model.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_detector(path: Path, model_cfg: ModelConfig | None = None) -> DetectorBundle:
    """Load weights saved by :func:`save_detector` (or a training checkpoint).

    With ``model_cfg`` the file must have been written for that config (the error names
    every difference); without it the file's own config is used.
    """
    state = load_checkpoint(path)
    saved = state["signature"]
    if model_cfg is not None:
        check_signature(path, saved, detector_signature(model_cfg, saved["class_names"]))
    file_cfg = ModelConfig.model_validate(saved["model"])
    model = build_detector(file_cfg, len(saved["class_names"]))
    model.load_state_dict(state["model_state"])
    model.eval()
    return DetectorBundle(model=model, model_cfg=file_cfg, class_names=list(saved["class_names"]))


def detector_training_data(
    split: CocoSplit, model_cfg: ModelConfig, train_cfg: TrainConfig, output_stride: int
) -> tuple[DetectionDataset, LossFn]:
    """The augmented dataset and CenterNet loss a detector trains (or fine-tunes) with."""
    dataset = DetectionDataset(
        split,
        input_size=model_cfg.input_size,
        output_stride=output_stride,
        augment=train_cfg.augment,
        seed=train_cfg.seed,
        regression_radius=train_cfg.regression_radius,
    )

    def loss_fn(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]):
        return centernet_loss(
            outputs,
            targets,
            train_cfg.size_loss_weight,
            train_cfg.offset_loss_weight,
            train_cfg.giou_loss_weight,
        )

    return dataset, loss_fn


def train_detector(
    dataset_root: Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out_dir: Path,
    resume: bool = False,
    after_epoch: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train TrafficQuantizerNet on ``dataset_root``'s train split; outputs land in ``out_dir``.

    Writes ``model.pt`` (weights), ``checkpoints/last.pt`` (full state for ``resume``),
    ``history.json`` and ``training_curves.png``.
    """
    split = load_coco_split(dataset_root, "train")
    seed_everything(train_cfg.seed)
    model = build_detector(model_cfg, len(split.class_names))
    dataset, loss_fn = detector_training_data(split, model_cfg, train_cfg, model.output_stride)
    checkpoint_path = out_dir / "checkpoints" / "last.pt"

    log.info(
        "training TrafficQuantizerNet (%s classes, input %d, width %.2f) on %d images",
        len(split.class_names),
        model_cfg.input_size,
        model_cfg.width_mult,
        len(split.images),
    )
    result = fit(
        model,
        dataset,
        loss_fn,
        train_cfg,
        checkpoint_path,
        detector_signature(model_cfg, split.class_names),
        resume=resume,
        after_epoch=after_epoch,
        prepare_inputs=InputNormalizer(model_cfg.mean, model_cfg.std),
    )
    return write_training_outputs(
        result,
        out_dir,
        lambda path, trained: save_detector(path, trained, model_cfg, split.class_names),
        len(split.images),
    )
