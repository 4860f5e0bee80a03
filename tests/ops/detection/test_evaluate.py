"""COCO evaluation through pycocotools, checked against answers known without a model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ops.detection.centernet import encode_targets
from ops.detection.coco import load_coco_split
from ops.detection.data import letterbox_matrix, transform_boxes
from ops.detection.evaluate import (
    ImageDetections,
    coco_metrics,
    decode_to_image,
    evaluate_predictor,
    to_coco_results,
)


def _ground_truth_as_detections(split) -> list[ImageDetections]:
    detections = []
    for record in split.images:
        boxes = record.boxes.astype(np.float64).copy()
        boxes[:, 2:] += boxes[:, :2]
        classes = np.array([split.category_index(int(c)) for c in record.category_ids])
        detections.append(ImageDetections(record.id, boxes, np.ones(len(boxes)), classes))
    return detections


def test_perfect_detections_score_one_and_none_score_zero(tiny_dataset):
    split = load_coco_split(tiny_dataset, "val")
    perfect = coco_metrics(split, to_coco_results(_ground_truth_as_detections(split), split))
    assert perfect.summary["map50"] == pytest.approx(1.0)
    assert perfect.summary["map50_95"] == pytest.approx(1.0)
    assert coco_metrics(split, []).summary["map50"] == 0.0


def test_wrong_classes_and_shifted_boxes_lower_the_score(tiny_dataset):
    split = load_coco_split(tiny_dataset, "val")
    detections = _ground_truth_as_detections(split)
    num_classes = len(split.class_names)
    wrong = [
        ImageDetections(d.image_id, d.boxes, d.scores, (d.class_indices + 1) % num_classes)
        for d in detections
    ]
    assert coco_metrics(split, to_coco_results(wrong, split)).summary["map50"] == 0.0
    # Shift every box by 30 % of its width: IoU ~0.54, counts at 0.5 but not at 0.75.
    shifted = []
    for d in detections:
        boxes = d.boxes.copy()
        shift = 0.3 * (boxes[:, 2] - boxes[:, 0])
        boxes[:, [0, 2]] += shift[:, None]
        shifted.append(ImageDetections(d.image_id, boxes, d.scores, d.class_indices))
    summary = coco_metrics(split, to_coco_results(shifted, split)).summary
    assert summary["map75"] < 0.2 < summary["map50"]


def test_evaluate_predictor_with_an_oracle_network(tiny_dataset, tiny_params, tmp_path):
    """A 'network' that outputs the encoded ground truth must reach mAP ~1 end to end:
    letterbox, decode, mapping back to image pixels and pycocotools all agree."""
    split = load_coco_split(tiny_dataset, "val")
    model_cfg, eval_cfg = tiny_params.traffic.model, tiny_params.traffic.evaluate
    size, stride = model_cfg.input_size, 4
    queue = list(split.images)

    def oracle(batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = {"heatmap": [], "wh": [], "offset": []}
        for _ in range(len(batch)):
            record = queue.pop(0)
            matrix = letterbox_matrix(record.width, record.height, size)
            boxes, keep = transform_boxes(record.boxes, matrix, size)
            classes = np.array([split.category_index(int(c)) for c in record.category_ids])
            t = encode_targets(
                boxes[keep],
                classes[keep],
                len(split.class_names),
                (size // stride, size // stride),
                stride,
            )
            for name in outputs:
                outputs[name].append(t[name])
        return {k: np.stack(v) for k, v in outputs.items()}

    oracle.backend = "oracle"
    metrics_path = tmp_path / "metrics" / "oracle.json"
    summary = evaluate_predictor(oracle, split, model_cfg, eval_cfg, tmp_path / "eval", metrics_path)
    # Two objects of one class can share an output cell; allow that rare loss.
    assert summary["map50"] > 0.95
    written = json.loads(metrics_path.read_text())
    assert 0 <= written["map50_95"] <= written["map50"] <= 1
    assert set(written["per_class"]) == set(split.class_names)
    for name in ("pr_curve.png", "samples.png", "detections.json"):
        assert (tmp_path / "eval" / name).stat().st_size > 0


def test_decoded_boxes_map_back_through_the_letterbox():
    matrix = letterbox_matrix(200, 100, 64)  # scale 0.32, padded vertically by 16 px
    heatmap = np.zeros((1, 1, 16, 16), np.float32)
    heatmap[0, 0, 8, 8] = 0.9
    wh = np.zeros((1, 2, 16, 16), np.float32)
    wh[0, :, 8, 8] = (4.0, 2.0)  # 16 x 8 input pixels
    raw = {"heatmap": heatmap, "wh": wh, "offset": np.zeros_like(wh)}
    [(boxes, scores, classes)] = decode_to_image(
        raw, [matrix], [(200, 100)], 64, top_k=5, score_threshold=0.5
    )
    np.testing.assert_allclose(boxes, [[75.0, 37.5, 125.0, 62.5]], atol=1e-6)
    assert scores.tolist() == pytest.approx([0.9]) and classes.tolist() == [0]
