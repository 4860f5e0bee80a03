"""Geometry and normalisation shared by training and evaluation."""

from __future__ import annotations

import numpy as np
import torch

from ops.config import AugmentConfig
from ops.detection.coco import load_coco_split
from ops.detection.data import (
    DetectionDataset,
    InputNormalizer,
    letterbox_matrix,
    random_affine_matrix,
    transform_boxes,
    warp_image,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_normaliser_follows_the_onnx_contract():
    """0..1 scaling then per-channel (x - mean) / std, RGB order, NCHW."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 32, 48, 3), dtype=np.uint8)
    batched = InputNormalizer(MEAN, STD)(torch.from_numpy(images))
    assert batched.shape == (2, 3, 32, 48) and batched.dtype == torch.float32
    expected = (images / 255.0 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(batched.numpy(), expected.transpose(0, 3, 1, 2), atol=1e-5)


def test_boxes_follow_the_pixels_through_zoom_shift_and_flip():
    """Paint a box white on black, warp both: the warped box must bound the warped blob."""
    augment = AugmentConfig(hflip=1.0, scale_range=(1.3, 1.3), translate=0.1, color_jitter=0.0)
    image = np.zeros((100, 200, 3), np.uint8)
    box = np.array([[120.0, 30.0, 40.0, 20.0]], np.float32)  # x, y, w, h
    image[30:50, 120:160] = 255
    matrix = random_affine_matrix(200, 100, 128, augment, np.random.default_rng(3))
    warped = warp_image(image, matrix, 128)
    (x1, y1, x2, y2), keep = *transform_boxes(box, matrix, 128)[0], True
    ys, xs = np.nonzero(warped[..., 0] > 127)
    assert keep
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [x1, y1, x2, y2], atol=1.5)
    assert matrix[0, 0] < 0  # flipped


def test_a_flipped_box_lands_exactly_on_its_flipped_pixels():
    """Pixel i spans [i, i + 1): under a flip (and any zoom) the warped blob's centroid is the
    warped box's centre to a small fraction of a pixel, not a half-pixel-per-flip off."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[24:34, 22:30] = 255  # box x 22..30, y 24..34: stays inside under every zoom below
    box = np.array([[22.0, 24.0, 8.0, 10.0]], np.float32)
    for zoom, flip in ((1.0, True), (1.0, False), (1.37, True), (1.6, False)):  # >= 1: no grey border
        augment = AugmentConfig(hflip=float(flip), scale_range=(zoom, zoom), translate=0.0, color_jitter=0.0)
        matrix = random_affine_matrix(64, 64, 64, augment, np.random.default_rng(0))
        warped = warp_image(image, matrix, 64)[..., 0].astype(np.float64)
        ys, xs = np.mgrid[0:64, 0:64] + 0.5  # continuous centres of the pixels
        centroid = [(warped * xs).sum() / warped.sum(), (warped * ys).sum() / warped.sum()]
        x1, y1, x2, y2 = transform_boxes(box, matrix, 64)[0][0]
        np.testing.assert_allclose(centroid, [(x1 + x2) / 2, (y1 + y2) / 2], atol=0.1)
    flipped = warp_image(
        image, letterbox_matrix(64, 64, 64) * [[-1, 1, 1], [1, 1, 1]] + [[0, 0, 64], [0, 0, 0]], 64
    )
    assert np.array_equal(flipped, image[:, ::-1])  # an exact mirror, not shifted by a pixel


def test_boxes_pushed_out_of_the_input_are_dropped():
    matrix = letterbox_matrix(100, 100, 100)
    matrix[0, 2] += 95  # shift everything right by 95 px
    boxes = np.array([[10.0, 10.0, 20.0, 20.0], [0, 0, 4, 4], [3, 0, 4, 4]], np.float32)
    mapped, keep = transform_boxes(boxes, matrix, 100)
    # x 105..125 is gone; x 95..99 stays whole; x 98..102 is clipped to 98..100 (2 px) and kept.
    assert keep.tolist() == [False, True, True]
    np.testing.assert_allclose(mapped[1:], [[95, 0, 99, 4], [98, 0, 100, 4]])


def test_dataset_items_are_deterministic_per_epoch(tiny_dataset):
    split = load_coco_split(tiny_dataset, "train")
    augment = AugmentConfig(hflip=0.5, scale_range=(0.8, 1.2), translate=0.1, color_jitter=0.2)
    dataset = DetectionDataset(split, input_size=128, output_stride=4, augment=augment, seed=7)
    first, targets = dataset[3]
    again, _ = dataset[3]
    dataset.set_epoch(1)
    other, _ = dataset[3]
    assert first.dtype == torch.uint8 and first.shape == (128, 128, 3)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert targets["heatmap"].shape == (4, 32, 32)
    assert int((targets["regression_weight"] == 1).sum()) == int((targets["heatmap"] == 1).sum())
