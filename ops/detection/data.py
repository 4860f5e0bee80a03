"""From a COCO split to network inputs and CenterNet targets.

Geometry is one 2x3 affine matrix per image (letterbox for evaluation; random zoom, shift
and flip for training), applied to pixels with ``cv2.warpAffine`` and to box corners with
the same matrix, so boxes can never drift from the pixels they describe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ops.config import AugmentConfig, ModelConfig
from ops.deploy.export import OnnxMetadata
from ops.deploy.optimize import CALIBRATION_BATCH_SIZE
from ops.detection.centernet import encode_targets
from ops.detection.coco import CocoImage, CocoSplit, read_image_rgb
from ops.detection.model import TrafficQuantizerNet

# Boxes left thinner than this (input pixels) after augmentation carry no learnable centre.
MIN_BOX_SIDE = 2.0
# Padding colour of letterbox borders: mid-grey, close to the normalisation mean.
PAD_VALUE = (114, 114, 114)


def letterbox_matrix(width: int, height: int, input_size: int) -> np.ndarray:
    """Scale the longer side to ``input_size`` and centre the image on a square canvas."""
    scale = input_size / max(width, height)
    tx = (input_size - width * scale) / 2
    ty = (input_size - height * scale) / 2
    return np.array([[scale, 0, tx], [0, scale, ty]], dtype=np.float64)


def random_affine_matrix(
    width: int, height: int, input_size: int, augment: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """Letterbox, then a random zoom about the centre, shift and horizontal flip."""
    base = np.vstack([letterbox_matrix(width, height, input_size), [0, 0, 1]])
    zoom = rng.uniform(*augment.scale_range)
    shift = rng.uniform(-augment.translate, augment.translate, size=2) * input_size
    flip = -1.0 if rng.random() < augment.hflip else 1.0
    c = input_size / 2
    jitter = np.array(
        [[zoom * flip, 0, c - zoom * flip * c + shift[0]], [0, zoom, c - zoom * c + shift[1]], [0, 0, 1]]
    )
    return (jitter @ base)[:2]


def pixel_index_matrix(matrix: np.ndarray) -> np.ndarray:
    """The same geometric map, expressed for OpenCV's pixel indices.

    Boxes live in continuous coordinates, where pixel ``i`` spans ``[i, i + 1)``; OpenCV's
    ``warpAffine`` maps pixel indices, i.e. pixel centres sit at integers. Handing it the
    continuous matrix shifts the picture against its boxes by ``0.5 * (1 - scale)``: a whole
    pixel under a horizontal flip, which taught the detector a half-pixel bias to the left
    (measured before this correction). Shift by half a pixel in and out.
    """
    corrected = np.array(matrix, dtype=np.float64, copy=True)
    corrected[:, 2] += 0.5 * (corrected[:, 0] + corrected[:, 1]) - 0.5
    return corrected


def warp_image(image: np.ndarray, matrix: np.ndarray, input_size: int) -> np.ndarray:
    """Apply ``matrix`` (continuous coordinates, as for boxes) to ``image``."""
    return cv2.warpAffine(
        image,
        pixel_index_matrix(matrix),
        (input_size, input_size),
        flags=cv2.INTER_LINEAR,
        borderValue=PAD_VALUE,
    )


def transform_boxes(
    boxes_xywh: np.ndarray, matrix: np.ndarray, input_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Map COCO boxes through ``matrix``, clip to the input; returns (xyxy, kept mask)."""
    if len(boxes_xywh) == 0:
        return np.zeros((0, 4), dtype=np.float32), np.zeros((0,), dtype=bool)
    x, y, w, h = boxes_xywh.T.astype(np.float64)
    ones = np.ones_like(x)
    corners = np.stack(  # (4 corners, N, homogeneous xy1)
        [np.stack([cx, cy, ones], axis=1) for cx, cy in ((x, y), (x + w, y), (x, y + h), (x + w, y + h))]
    )
    mapped = corners @ matrix.T  # (4, N, 2)
    xyxy = np.concatenate([mapped.min(axis=0), mapped.max(axis=0)], axis=1)
    xyxy = np.clip(xyxy, 0, input_size)
    keep = ((xyxy[:, 2] - xyxy[:, 0]) >= MIN_BOX_SIDE) & ((xyxy[:, 3] - xyxy[:, 1]) >= MIN_BOX_SIDE)
    return xyxy.astype(np.float32), keep


def jitter_colour(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness and contrast, so lighting is not learnt as a class cue.

    Both are one affine map of intensities, applied as a 256-entry lookup table: an order
    of magnitude cheaper than float arithmetic on every pixel, which matters when the
    DataLoader shares two CPU cores with training.
    """
    if strength <= 0:
        return image
    brightness = rng.uniform(-strength, strength) * 255
    contrast = rng.uniform(1 - strength, 1 + strength)
    mean = cv2.mean(image)[:3]
    centre = sum(mean) / 3
    levels = np.arange(256, dtype=np.float32)
    table = np.clip((levels - centre) * contrast + centre + brightness, 0, 255).astype(np.uint8)
    return cv2.LUT(image, table)


class InputNormalizer:
    """uint8 NHWC RGB batches -> float NCHW, 0..1 scaled then mean/std normalised.

    This is the ONNX contract's pre-processing, used by training and by evaluation of
    every backend. The result has channels-last strides; call ``.contiguous()`` for NCHW.

    The dataset hands out uint8 pixels and normalisation runs once per batch here: a
    quarter of the bytes cross the DataLoader's process boundary, and the float maths is
    one vectorised op instead of one per image.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # A fresh float copy, normalised in place: the same arithmetic as (x - mean) / std
        # (bit for bit, which the C++ pre-processing matches) without two temporaries.
        pixels = images.permute(0, 3, 1, 2).to(torch.float32, copy=True)
        return pixels.sub_(self.mean.to(pixels.device)).div_(self.std.to(pixels.device))


@dataclass(frozen=True)
class PreparedBatch:
    """Network-ready inputs plus what maps detections back into each original image."""

    inputs: np.ndarray  # float32 NCHW, the ONNX contract's ``images``
    matrices: list[np.ndarray]  # letterbox matrix of each image (original -> input pixels)
    sizes: list[tuple[int, int]]  # (width, height) of each original image


def prepare_images(images: list[np.ndarray], input_size: int, normalizer: InputNormalizer) -> PreparedBatch:
    """Letterbox and normalise RGB uint8 images exactly as training saw them.

    Evaluation, calibration and parity checks of every backend feed the network through
    this one function, so no backend gets subtly different inputs.
    """
    warped, matrices, sizes = [], [], []
    for pixels in images:
        height, width = pixels.shape[:2]
        matrix = letterbox_matrix(width, height, input_size)
        warped.append(warp_image(pixels, matrix, input_size))
        matrices.append(matrix)
        sizes.append((width, height))
    inputs = normalizer(torch.from_numpy(np.stack(warped))).contiguous().numpy()
    return PreparedBatch(inputs, matrices, sizes)


def load_input_batches(
    records: Sequence[CocoImage], input_size: int, normalizer: InputNormalizer, batch_size: int
) -> list[np.ndarray]:
    """Read ``records`` from disk as network-ready float32 NCHW batches (see :func:`prepare_images`)."""
    return [
        prepare_images(
            [read_image_rgb(r.path) for r in records[start : start + batch_size]], input_size, normalizer
        ).inputs
        for start in range(0, len(records), batch_size)
    ]


class DetectionDataset(Dataset):
    """A COCO split as (uint8 HWC image, CenterNet targets) pairs; see :class:`InputNormalizer`.

    Augmentation randomness is keyed by (seed, epoch, index), not by a global RNG, so a run
    resumed from a checkpoint sees exactly the batches the uninterrupted run would have.
    """

    def __init__(
        self,
        split: CocoSplit,
        input_size: int,
        output_stride: int,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        regression_radius: int = 0,
    ) -> None:
        self.split = split
        self.input_size = input_size
        self.output_stride = output_stride
        self.augment = augment
        self.seed = seed
        self.regression_radius = regression_radius
        self.epoch = 0
        self.num_classes = len(split.class_names)
        self._class_lookup = {cat["id"]: split.category_index(cat["id"]) for cat in split.categories}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        record = self.split.images[index]
        image = read_image_rgb(record.path)
        height, width = image.shape[:2]
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            matrix = random_affine_matrix(width, height, self.input_size, self.augment, rng)
            image = jitter_colour(warp_image(image, matrix, self.input_size), self.augment.color_jitter, rng)
        else:
            matrix = letterbox_matrix(width, height, self.input_size)
            image = warp_image(image, matrix, self.input_size)

        boxes, keep = transform_boxes(record.boxes, matrix, self.input_size)
        classes = np.array([self._class_lookup[int(c)] for c in record.category_ids], dtype=np.int64)
        out_size = self.input_size // self.output_stride
        targets = encode_targets(
            boxes[keep],
            classes[keep],
            self.num_classes,
            (out_size, out_size),
            self.output_stride,
            self.regression_radius,
        )
        tensors = {name: torch.from_numpy(value) for name, value in targets.items()}
        return torch.from_numpy(np.ascontiguousarray(image)), tensors


def detector_metadata(model: TrafficQuantizerNet, mean, std, input_size: int, class_names) -> OnnxMetadata:
    """What an exported detector carries for its consumers: pre-processing and class names."""
    return OnnxMetadata(
        input_size=int(input_size),
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        class_names=list(class_names),
        output_stride=int(model.output_stride),
        pad_value=list(PAD_VALUE),
    )


def calibration_batches(
    split: CocoSplit,
    model_cfg: ModelConfig,
    num_images: int,
    seed: int = 0,
    batch_size: int = CALIBRATION_BATCH_SIZE,
) -> list[np.ndarray]:
    """A fixed, seeded sample of ``split``'s images, pre-processed exactly as at inference."""
    count = min(num_images, len(split.images))
    picked = np.random.default_rng(seed).choice(len(split.images), size=count, replace=False)
    records = [split.images[i] for i in sorted(picked)]
    normalizer = InputNormalizer(model_cfg.mean, model_cfg.std)
    return load_input_batches(records, model_cfg.input_size, normalizer, batch_size)
