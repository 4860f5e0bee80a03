import numpy as np
import torch

from ops.centernet import (
    centernet_loss,
    decode_detections,
    draw_gaussian,
    encode_targets,
    focal_loss,
    gaussian_radius,
)


def test_gaussian_peak_is_one_at_the_centre_and_merges_by_max():
    heatmap = np.zeros((16, 16), dtype=np.float32)
    draw_gaussian(heatmap, 5, 7, 3)
    assert heatmap[7, 5] == 1.0
    assert heatmap.max() == 1.0
    assert 0 < heatmap[7, 8] < 1  # within radius
    assert heatmap[7, 9] == 0  # outside radius
    draw_gaussian(heatmap, 0, 0, 4)  # clipped at the border, no error
    assert heatmap[0, 0] == 1.0 and heatmap[7, 5] == 1.0


def test_gaussian_radius_grows_with_box_size():
    assert gaussian_radius(4, 4) < gaussian_radius(20, 20) < gaussian_radius(60, 60)


def test_encode_then_decode_recovers_boxes_exactly():
    boxes = np.array([[10.0, 20.0, 42.0, 36.0], [60.0, 5.0, 70.0, 40.0]], dtype=np.float32)
    classes = np.array([2, 0])
    stride, out = 4, 32
    targets = encode_targets(
        boxes, classes, num_classes=3, output_size=(out, out), stride=stride, max_objects=8
    )
    assert targets["mask"].sum() == 2
    # Build a perfect prediction from the targets and decode it.
    wh = np.zeros((1, 2, out, out), dtype=np.float32)
    offset = np.zeros((1, 2, out, out), dtype=np.float32)
    for slot in range(2):
        y, x = divmod(int(targets["index"][slot]), out)
        wh[0, :, y, x] = targets["wh"][slot]
        offset[0, :, y, x] = targets["offset"][slot]
    decoded, scores, labels = decode_detections(
        torch.from_numpy(targets["heatmap"][None]),
        torch.from_numpy(wh),
        torch.from_numpy(offset),
        top_k=2,
        stride=stride,
    )
    assert scores.tolist() == [[1.0, 1.0]]
    order = np.argsort(labels[0].numpy())  # class 0 first
    np.testing.assert_allclose(decoded[0].numpy()[order], boxes[[1, 0]], atol=1e-4)
    assert sorted(labels[0].tolist()) == [0, 2]


def test_decode_keeps_only_local_maxima_sorted_by_score():
    heatmap = torch.zeros(1, 1, 8, 8)
    heatmap[0, 0, 2, 2], heatmap[0, 0, 2, 3] = 0.9, 0.8  # 0.8 is next to a higher peak
    heatmap[0, 0, 6, 6] = 0.5
    _, scores, _ = decode_detections(
        heatmap, torch.ones(1, 2, 8, 8), torch.zeros(1, 2, 8, 8), top_k=3, stride=4
    )
    assert scores[0, :2].tolist() == [0.8999999761581421, 0.5]
    assert scores[0, 2] == 0


def test_focal_loss_prefers_the_right_heatmap():
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 4, 4] = 1
    good = target.clamp(0.01, 0.99)
    bad = 1 - good
    assert focal_loss(good, target) < 0.05 < focal_loss(bad, target)


def test_centernet_loss_is_differentiable_and_weighted():
    torch.manual_seed(0)
    boxes = np.array([[8.0, 8.0, 24.0, 20.0]], dtype=np.float32)
    t = encode_targets(boxes, np.array([0]), 1, (16, 16), 4, 4)
    targets = {k: torch.from_numpy(v)[None] for k, v in t.items()}
    outputs = {
        "heatmap": torch.rand(1, 1, 16, 16, requires_grad=True),
        "wh": torch.rand(1, 2, 16, 16, requires_grad=True),
        "offset": torch.rand(1, 2, 16, 16, requires_grad=True),
    }
    total, parts = centernet_loss(outputs, targets, size_weight=0.1, offset_weight=1.0)
    total.backward()
    assert outputs["wh"].grad.abs().sum() > 0
    expected = parts["heatmap"] + 0.1 * parts["size"] + 1.0 * parts["offset"]
    assert abs(total.item() - expected) < 1e-5
