"""Decoding raw detector outputs into detections, and COCO evaluation with pycocotools.

Evaluation is backend-neutral: it takes a :class:`~ops.deploy.runtime.Predictor` (a batch of
normalised NCHW float32 images in, ``heatmap``/``wh``/``offset`` arrays out), so PyTorch,
ONNX Runtime and TensorRT are all scored by the same code and the same pycocotools call.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ops.config import EvaluateConfig, ModelConfig
from ops.deploy.runtime import Predictor
from ops.detection.centernet import decode_detections
from ops.detection.coco import CocoSplit, read_image_rgb
from ops.detection.data import InputNormalizer, prepare_images
from ops.io import save_figure, write_json

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 8


@dataclass(frozen=True)
class ImageDetections:
    """Detections of one image, boxes x1, y1, x2, y2 in that image's own pixels."""

    image_id: int
    boxes: np.ndarray
    scores: np.ndarray
    class_indices: np.ndarray


def decode_to_image(
    raw: dict[str, np.ndarray],
    matrices: list[np.ndarray],
    sizes: list[tuple[int, int]],
    input_size: int,
    top_k: int,
    score_threshold: float,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Decode a batch and map boxes back through each image's letterbox into its pixels."""
    heatmap = torch.from_numpy(raw["heatmap"])
    stride = input_size // heatmap.shape[-1]
    boxes, scores, classes = decode_detections(
        heatmap, torch.from_numpy(raw["wh"]), torch.from_numpy(raw["offset"]), top_k, stride
    )
    decoded = []
    for i, (matrix, (width, height)) in enumerate(zip(matrices, sizes, strict=True)):
        keep = scores[i] >= score_threshold
        image_boxes = boxes[i][keep].numpy().astype(np.float64)
        scale, tx, ty = matrix[0, 0], matrix[0, 2], matrix[1, 2]
        image_boxes[:, [0, 2]] = np.clip((image_boxes[:, [0, 2]] - tx) / scale, 0, width)
        image_boxes[:, [1, 3]] = np.clip((image_boxes[:, [1, 3]] - ty) / scale, 0, height)
        decoded.append((image_boxes, scores[i][keep].numpy(), classes[i][keep].numpy()))
    return decoded


def detect_split(
    predictor: Predictor,
    split: CocoSplit,
    model_cfg: ModelConfig,
    eval_cfg: EvaluateConfig,
    batch_size: int = EVAL_BATCH_SIZE,
) -> list[ImageDetections]:
    """Run ``predictor`` over every image of ``split`` (letterboxed, as at training time)."""
    results: list[ImageDetections] = []
    images = split.images
    normalizer = InputNormalizer(model_cfg.mean, model_cfg.std)  # the same code as training
    for start in tqdm(
        range(0, len(images), batch_size),
        desc=f"detect ({predictor.backend})",
        unit="batch",
        leave=False,
        disable=None,
    ):
        records = images[start : start + batch_size]
        batch = prepare_images([read_image_rgb(r.path) for r in records], model_cfg.input_size, normalizer)
        decoded = decode_to_image(
            predictor(batch.inputs),
            batch.matrices,
            batch.sizes,
            model_cfg.input_size,
            eval_cfg.top_k,
            eval_cfg.score_threshold,
        )
        for record, (boxes, scores, classes) in zip(records, decoded, strict=True):
            results.append(ImageDetections(record.id, boxes, scores, classes))
    return results


def to_coco_results(detections: list[ImageDetections], split: CocoSplit) -> list[dict[str, Any]]:
    """COCO results format: one dict per box with xywh bbox and the original category id."""
    category_ids = [cat["id"] for cat in split.categories]
    rows = []
    for det in detections:
        for (x1, y1, x2, y2), score, cls in zip(det.boxes, det.scores, det.class_indices, strict=True):
            rows.append(
                {
                    "image_id": int(det.image_id),
                    "category_id": int(category_ids[int(cls)]),
                    "bbox": [
                        round(float(x1), 2),
                        round(float(y1), 2),
                        round(float(x2 - x1), 2),
                        round(float(y2 - y1), 2),
                    ],
                    "score": round(float(score), 5),
                }
            )
    return rows


@dataclass
class CocoMetrics:
    summary: dict[str, Any]
    precision: np.ndarray | None  # COCOeval's (T, R, K, A, M) precision array
    recall_thresholds: np.ndarray | None


def coco_metrics(split: CocoSplit, results: list[dict[str, Any]]) -> CocoMetrics:
    """mAP@0.5, mAP@[.5:.95] and per-class AP, computed by pycocotools' COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = split.class_names
    empty = {
        "map50": 0.0,
        "map50_95": 0.0,
        "map75": 0.0,
        "per_class": {name: {"ap50": 0.0, "ap50_95": 0.0} for name in names},
    }
    if not results:  # COCO.loadRes refuses an empty list; no detections means AP 0
        return CocoMetrics(empty, None, None)
    chatter = io.StringIO()  # pycocotools prints progress to stdout; keep it in the debug log
    with contextlib.redirect_stdout(chatter):
        ground_truth = COCO(str(split.annotation_path))
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), iouType="bbox")
        evaluator.params.imgIds = [record.id for record in split.images]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    log.debug("pycocotools:\n%s", chatter.getvalue())

    precision = evaluator.eval["precision"]  # (IoU thresholds, recall points, classes, areas, maxDets)
    per_class = {}
    for k, name in enumerate(names):
        all_iou = precision[:, :, k, 0, -1]
        at50 = precision[0, :, k, 0, -1]
        per_class[name] = {
            "ap50": float(at50[at50 > -1].mean()) if (at50 > -1).any() else 0.0,
            "ap50_95": float(all_iou[all_iou > -1].mean()) if (all_iou > -1).any() else 0.0,
        }
    stats = evaluator.stats
    summary = {
        "map50_95": float(max(stats[0], 0.0)),
        "map50": float(max(stats[1], 0.0)),
        "map75": float(max(stats[2], 0.0)),
        "map_small": float(stats[3]),
        "map_medium": float(stats[4]),
        "map_large": float(stats[5]),
        "per_class": per_class,
    }
    return CocoMetrics(summary, precision, evaluator.params.recThrs)


def plot_pr_curves(metrics: CocoMetrics, class_names: list[str], path: Path) -> Path:
    """Precision-recall per class at IoU 0.5 (all areas, 100 detections)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    if metrics.precision is not None:
        for k, name in enumerate(class_names):
            curve = metrics.precision[0, :, k, 0, -1]
            if (curve > -1).any():
                ap = metrics.summary["per_class"][name]["ap50"]
                ax.plot(metrics.recall_thresholds, np.clip(curve, 0, 1), label=f"{name} (AP50 {ap:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"PR @ IoU 0.5  -  mAP50 {metrics.summary['map50']:.3f}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path)


def plot_sample_detections(
    split: CocoSplit, detections: list[ImageDetections], path: Path, count: int, min_score: float = 0.3
) -> Path:
    """A grid of validation images: ground truth dashed white, detections coloured by class."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    count = max(1, min(count, len(detections)))
    cols = min(4, count)
    rows = (count + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    colours = colormaps["tab10"]
    names = split.class_names
    for ax, record, det in zip(axes.flat, split.images, detections, strict=False):
        ax.imshow(read_image_rgb(record.path))
        for x, y, w, h in record.boxes:
            ax.add_patch(Rectangle((x, y), w, h, fill=False, ec="white", ls="--", lw=0.8))
        for (x1, y1, x2, y2), score, cls in zip(det.boxes, det.scores, det.class_indices, strict=True):
            if score < min_score:
                continue
            colour = colours(int(cls) % 10)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=1.2))
            ax.text(
                x1,
                y1,
                f"{names[int(cls)]} {score:.2f}",
                color="white",
                fontsize=6,
                bbox={"facecolor": colour, "pad": 0.5, "lw": 0},
            )
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"sample detections (score >= {min_score}); dashed = ground truth", fontsize=9)
    return save_figure(fig, path)


def evaluate_predictor(
    predictor: Predictor,
    split: CocoSplit,
    model_cfg: ModelConfig,
    eval_cfg: EvaluateConfig,
    out_dir: Path,
    metrics_path: Path,
) -> dict[str, Any]:
    """Detect, score with pycocotools, and write results JSON, plots and the metrics file.

    ``metrics_path`` (``artifacts/<task>/metrics/<backend>.json``) holds ``map50`` and
    ``map50_95`` as fractions in 0..1: the one format every later tool reads.
    """
    backend = predictor.backend
    detections = detect_split(predictor, split, model_cfg, eval_cfg)
    results = to_coco_results(detections, split)
    write_json(out_dir / "detections.json", results)
    metrics = coco_metrics(split, results)
    pr_path = plot_pr_curves(metrics, split.class_names, out_dir / "pr_curve.png")
    samples_path = plot_sample_detections(
        split, detections, out_dir / "samples.png", eval_cfg.num_sample_images
    )
    summary = {
        "backend": backend,
        "split": split.split,
        "num_images": len(split.images),
        "num_detections": len(results),
        **metrics.summary,
        "plots": {"pr_curve": str(pr_path), "samples": str(samples_path)},
    }
    write_json(metrics_path, summary)
    log.info(
        "%s: mAP@0.5 %.4f  mAP@[.5:.95] %.4f on %d images",
        backend,
        summary["map50"],
        summary["map50_95"],
        len(split.images),
    )
    return summary
