"""Training a restorer through the shared loop (:func:`ops.train.fit`): random crops of the
training pairs with flips and rotations, NAFNet's PSNR loss or Charbonnier, and the released
weights' file with the signature a checkpoint must match."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ops.config import RestorationTrainConfig, RestorerConfig
from ops.errors import DatasetError
from ops.io import atomic_path
from ops.restoration.models import architecture_name, build_restorer
from ops.restoration.pairs import PairSplit, read_rgb8
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


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) RGB -> float32 (..., 3, H, W) in 0..1: the restorer's input."""
    array = np.ascontiguousarray(np.moveaxis(images, -1, -3))
    return torch.from_numpy(array).float().div_(255.0)


def to_uint8(restored: np.ndarray) -> np.ndarray:
    """float (N, 3, H, W), nominally 0..1 -> uint8 (N, H, W, 3): clipped and rounded as an
    8-bit output file would be, so scores are those of the image a user gets."""
    return np.moveaxis(np.clip(np.rint(restored * 255.0), 0, 255).astype(np.uint8), -3, -1)


class CropDataset(Dataset):
    """Random aligned crops of (degraded, clean) pairs, optionally flipped and rotated.

    Every crop is a function of (seed, epoch, index), so an interrupted run resumes exactly.
    Pairs are held in memory as uint8: the demo's 48 pairs of 256x256 are 19 MB.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[np.ndarray, np.ndarray]],
        crop_size: int,
        crops_per_epoch: int,
        flips_rotations: bool,
        seed: int,
    ) -> None:
        too_small = [i for i, (d, _) in enumerate(pairs) if min(d.shape[:2]) < crop_size]
        if too_small:
            raise DatasetError(
                f"{len(too_small)} training pairs are smaller than train.crop_size {crop_size} "
                f"(first: pair {too_small[0]}, {pairs[too_small[0]][0].shape[1]}x"
                f"{pairs[too_small[0]][0].shape[0]})"
            )
        self.pairs = list(pairs)
        self.crop_size = crop_size
        self.crops_per_epoch = crops_per_epoch
        self.flips_rotations = flips_rotations
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.crops_per_epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        degraded, clean = self.pairs[int(rng.integers(len(self.pairs)))]
        height, width = degraded.shape[:2]
        y = int(rng.integers(height - self.crop_size + 1))
        x = int(rng.integers(width - self.crop_size + 1))
        window = (slice(y, y + self.crop_size), slice(x, x + self.crop_size))
        degraded, clean = degraded[window], clean[window]
        if self.flips_rotations:  # the 8 symmetries of the square
            turns, flip = int(rng.integers(4)), bool(rng.integers(2))
            degraded, clean = np.rot90(degraded, turns), np.rot90(clean, turns)
            if flip:
                degraded, clean = degraded[:, ::-1], clean[:, ::-1]
        return to_tensor(degraded), {"clean": to_tensor(clean)}


def psnr_loss(restored: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """NAFNet's PSNR loss: 10/ln(10) * mean over images of log(MSE), i.e. minus the mean PSNR
    (data range 1) up to a constant."""
    mse = (restored.float() - clean).pow(2).mean(dim=(1, 2, 3))
    return (10.0 / math.log(10.0)) * torch.log(mse + 1e-8).mean()


def charbonnier_loss(restored: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.sqrt((restored.float() - clean).pow(2) + eps * eps).mean()


def restoration_loss(cfg: RestorationTrainConfig) -> LossFn:
    def loss_fn(restored: torch.Tensor, targets: dict[str, torch.Tensor]):
        clean = targets["clean"]
        if cfg.loss == "psnr":
            loss = psnr_loss(restored, clean)
        else:
            loss = charbonnier_loss(restored, clean, cfg.charbonnier_eps)
        return loss, {cfg.loss: loss.item()}

    return loss_fn


def restorer_signature(model_cfg: RestorerConfig) -> dict[str, Any]:
    """What a checkpoint must match to be loaded into the model built from this config.

    Fields left at their defaults are not written, so checkpoints written before a field was
    added (``heads``, ``ffn_expand``) still match the configs they were trained with."""
    return {
        "architecture": architecture_name(model_cfg),
        "model": model_cfg.model_dump(mode="json", exclude_defaults=True),
    }


@dataclass
class RestorerBundle:
    model: torch.nn.Module
    model_cfg: RestorerConfig


def save_restorer(path: Path, model: torch.nn.Module, model_cfg: RestorerConfig) -> Path:
    """The released weights: model state and signature, no optimiser."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "signature": restorer_signature(model_cfg),
        "model_state": model.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_restorer(path: Path, model_cfg: RestorerConfig | None = None) -> RestorerBundle:
    """Load weights saved by :func:`save_restorer`; with ``model_cfg`` the file must have been
    written for that config (a checkpoint of another width is refused, naming the difference)."""
    state = load_checkpoint(path)
    saved = state["signature"]
    if model_cfg is not None:
        check_signature(path, saved, restorer_signature(model_cfg))
    file_cfg = RestorerConfig.model_validate(saved["model"])
    model = build_restorer(file_cfg)
    model.load_state_dict(state["model_state"])
    return RestorerBundle(model=model.eval(), model_cfg=file_cfg)


def load_pairs(split: PairSplit) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every (degraded, clean) file pair of ``split`` decoded to uint8 RGB."""
    return [(read_rgb8(pair.degraded), read_rgb8(pair.clean)) for pair in split.pairs]


def train_restorer(
    split: PairSplit,
    model_cfg: RestorerConfig,
    train_cfg: RestorationTrainConfig,
    out_dir: Path,
    resume: bool = False,
    after_epoch: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train the restorer on ``split``'s pairs; ``model.pt``, ``checkpoints/last.pt``,
    ``history.json`` and ``training_curves.png`` land in ``out_dir``."""
    if not split.pairs:
        raise DatasetError(f"{split.root}: no training pairs in the {split.name} split")
    seed_everything(train_cfg.seed)
    model = build_restorer(model_cfg)
    dataset = CropDataset(
        load_pairs(split),
        train_cfg.crop_size,
        train_cfg.crops_per_epoch,
        train_cfg.flips_rotations,
        train_cfg.seed,
    )
    log.info(
        "training %s (width %d, enc %s, middle %d) on %d pairs, %d crops of %d px per epoch",
        architecture_name(model_cfg),
        model_cfg.width,
        model_cfg.enc_blocks,
        model_cfg.middle_blocks,
        len(split.pairs),
        train_cfg.crops_per_epoch,
        train_cfg.crop_size,
    )
    checkpoint_path = out_dir / "checkpoints" / "last.pt"
    result = fit(
        model,
        dataset,
        restoration_loss(train_cfg),
        train_cfg,
        checkpoint_path,
        restorer_signature(model_cfg),
        resume=resume,
        after_epoch=after_epoch,
    )
    return write_training_outputs(
        result,
        out_dir,
        lambda path, trained: save_restorer(path, trained, model_cfg),
        len(split.pairs),
    )
