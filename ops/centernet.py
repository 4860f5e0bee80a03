"""CenterNet specifics: Gaussian heatmap targets, the training loss and peak decoding.

Follows xingyizhou/CenterNet ("Objects as Points"): an object is the peak of a Gaussian on
its class's heatmap at the box centre, regressing its size (``wh``) and the sub-pixel
``offset`` lost to the output stride. Decoding is framework-neutral on purpose (plain
tensors in, plain tensors out) so every backend and the C++ program decode the same way.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# CenterNet's radius formula keeps a box whose corners move within the radius above this
# IoU with the ground truth (CornerNet, section 3.2).
GAUSSIAN_MIN_OVERLAP = 0.7
HEATMAP_EPS = 1e-4  # sigmoid outputs are clamped so log() stays finite in the focal loss


def gaussian_radius(height: float, width: float, min_overlap: float = GAUSSIAN_MIN_OVERLAP) -> float:
    """Smallest radius of the three CornerNet cases (box corners inside/outside/mixed).

    This is CenterNet's ``gaussian_radius`` in ``utils/image.py``, kept identical so the
    targets match the published training recipe.
    """
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2

    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2

    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_gaussian(heatmap: np.ndarray, cx: int, cy: int, radius: int) -> None:
    """Max-merge a 2D Gaussian of the given radius into ``heatmap`` at (cx, cy), in place."""
    diameter = 2 * radius + 1
    sigma = diameter / 6
    ys, xs = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    gaussian = np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma)).astype(np.float32)

    height, width = heatmap.shape
    left, right = min(cx, radius), min(width - cx, radius + 1)
    top, bottom = min(cy, radius), min(height - cy, radius + 1)
    region = heatmap[cy - top : cy + bottom, cx - left : cx + right]
    patch = gaussian[radius - top : radius + bottom, radius - left : radius + right]
    if region.size and patch.size:
        np.maximum(region, patch, out=region)


def encode_targets(
    boxes_xyxy: np.ndarray,
    class_indices: np.ndarray,
    num_classes: int,
    output_size: tuple[int, int],
    stride: int,
    max_objects: int,
) -> dict[str, np.ndarray]:
    """Training targets for one image; boxes are in network-input pixels.

    Returns ``heatmap`` (C, H, W), and per object slot ``wh`` (K, 2, output-map units),
    ``offset`` (K, 2), ``index`` (K,) flat position of the centre, ``mask`` (K,) 1 for
    real objects. Objects beyond ``max_objects`` are dropped (they still would not fit in
    the top-K decode).
    """
    out_h, out_w = output_size
    heatmap = np.zeros((num_classes, out_h, out_w), dtype=np.float32)
    wh = np.zeros((max_objects, 2), dtype=np.float32)
    offset = np.zeros((max_objects, 2), dtype=np.float32)
    index = np.zeros((max_objects,), dtype=np.int64)
    mask = np.zeros((max_objects,), dtype=np.float32)

    slot = 0
    for box, cls in zip(boxes_xyxy[:max_objects], class_indices[:max_objects], strict=True):
        x1, y1, x2, y2 = box / stride
        w, h = x2 - x1, y2 - y1
        if w <= 0 or h <= 0:
            continue
        centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2], dtype=np.float32)
        cx = int(np.clip(centre[0], 0, out_w - 1))
        cy = int(np.clip(centre[1], 0, out_h - 1))
        radius = max(0, int(gaussian_radius(math.ceil(h), math.ceil(w))))
        draw_gaussian(heatmap[int(cls)], cx, cy, radius)
        wh[slot] = (w, h)
        offset[slot] = centre - (cx, cy)
        index[slot] = cy * out_w + cx
        mask[slot] = 1.0
        slot += 1
    return {"heatmap": heatmap, "wh": wh, "offset": offset, "index": index, "mask": mask}


def focal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CornerNet's penalty-reduced focal loss on sigmoid heatmaps (alpha 2, beta 4).

    Positives (target == 1) weigh ``(1-p)^2 log p``; negatives ``p^2 (1-gt)^4 log(1-p)``,
    so pixels near a centre are punished less. Normalised by the number of objects.
    """
    pred = pred.float().clamp(HEATMAP_EPS, 1 - HEATMAP_EPS)
    positive = target.eq(1).float()
    negative_weight = torch.pow(1 - target, 4)
    pos_loss = torch.log(pred) * torch.pow(1 - pred, 2) * positive
    neg_loss = torch.log(1 - pred) * torch.pow(pred, 2) * negative_weight * (1 - positive)
    num_pos = positive.sum()
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos.clamp(min=1.0)


def _gather(feature: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) gathered at flat positions (B, K) -> (B, K, C)."""
    batch, channels = feature.shape[:2]
    flat = feature.reshape(batch, channels, -1).permute(0, 2, 1)
    return flat.gather(1, index.unsqueeze(-1).expand(-1, -1, channels))


def masked_l1(
    pred: torch.Tensor, target: torch.Tensor, index: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """L1 between ``pred`` at object centres and ``target``, averaged over real objects."""
    gathered = _gather(pred.float(), index)
    weight = mask.unsqueeze(-1)
    return (torch.abs(gathered - target) * weight).sum() / (weight.sum() * 2).clamp(min=1.0)


def centernet_loss(
    outputs: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    size_weight: float,
    offset_weight: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (for logging)."""
    heatmap = focal_loss(outputs["heatmap"], targets["heatmap"])
    size = masked_l1(outputs["wh"], targets["wh"], targets["index"], targets["mask"])
    offset = masked_l1(outputs["offset"], targets["offset"], targets["index"], targets["mask"])
    total = heatmap + size_weight * size + offset_weight * offset
    parts = {"heatmap": heatmap.item(), "size": size.item(), "offset": offset.item()}
    return total, parts


def decode_detections(
    heatmap: torch.Tensor, wh: torch.Tensor, offset: torch.Tensor, top_k: int, stride: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Peaks -> boxes, the CenterNet way (no NMS).

    A 3x3 max-pool keeps only local maxima, the ``top_k`` best over all classes become
    detections, and each box is the peak position plus its offset, sized by ``wh``.
    Returns ``boxes`` (B, K, 4) x1, y1, x2, y2 in network-input pixels, ``scores`` (B, K)
    and ``classes`` (B, K), sorted by descending score.
    """
    batch, num_classes, height, width = heatmap.shape
    peaks = F.max_pool2d(heatmap, kernel_size=3, stride=1, padding=1)
    heatmap = heatmap * (peaks == heatmap).to(heatmap.dtype)

    k = min(top_k, num_classes * height * width)
    scores, flat = heatmap.reshape(batch, -1).topk(k)
    classes = flat // (height * width)
    position = flat % (height * width)
    ys = (position // width).to(torch.float32)
    xs = (position % width).to(torch.float32)

    size = _gather(wh, position)
    shift = _gather(offset, position)
    cx = xs + shift[..., 0]
    cy = ys + shift[..., 1]
    half_w, half_h = size[..., 0] / 2, size[..., 1] / 2
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1) * stride
    return boxes, scores, classes
