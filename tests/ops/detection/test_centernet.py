import numpy as np
import pytest
import torch

from ops.detection.centernet import (
    centernet_loss,
    decode_detections,
    draw_gaussian,
    encode_targets,
    focal_loss,
    gaussian_radius,
    weighted_giou_loss,
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
    targets = encode_targets(boxes, classes, num_classes=3, output_size=(out, out), stride=stride)
    assert (targets["regression_weight"] == 1).sum() == 2
    assert (targets["regression_weight"] > 0).sum() == 2  # radius 0: centres only
    decoded, scores, labels = decode_detections(
        *(torch.from_numpy(targets[name][None]) for name in ("heatmap", "wh", "offset")),
        top_k=2,
        stride=stride,
    )
    assert scores.tolist() == [[1.0, 1.0]]
    order = np.argsort(labels[0].numpy())  # class 0 first
    np.testing.assert_allclose(decoded[0].numpy()[order], boxes[[1, 0]], atol=1e-4)
    assert sorted(labels[0].tolist()) == [0, 2]


def test_neighbouring_cells_regress_the_same_box():
    """With a regression radius, a peak one cell off the centre still decodes the true box."""
    box = np.array([[13.0, 21.0, 25.0, 30.0]], dtype=np.float32)  # centre (19, 25.5) px
    stride, out = 4, 16
    targets = encode_targets(box, np.array([0]), 1, (out, out), stride, regression_radius=1)
    weight = targets["regression_weight"]
    assert (weight > 0).sum() == 9 and weight[6, 4] == 1.0  # centre cell (x 4, y 6)
    assert weight[6, 5] == weight[5, 4] > weight[5, 5] > 0  # edge cells above corners
    for y, x in ((5, 3), (6, 5), (7, 4)):
        heatmap = np.zeros((1, 1, out, out), dtype=np.float32)
        heatmap[0, 0, y, x] = 1.0
        decoded, _, _ = decode_detections(
            torch.from_numpy(heatmap),
            torch.from_numpy(targets["wh"][None]),
            torch.from_numpy(targets["offset"][None]),
            top_k=1,
            stride=stride,
        )
        np.testing.assert_allclose(decoded[0, 0].numpy(), box[0], atol=1e-4)


def test_a_shared_cell_regresses_the_nearer_centre_then_the_smaller_box():
    big = [0.0, 0.0, 40.0, 40.0]  # centre cell (5, 5) at stride 4
    small = [16.0, 16.0, 24.0, 28.0]  # centre (20, 22) px: cell (5, 5) as well
    right = [22.0, 16.0, 30.0, 24.0]  # centre cell (6, 5): the big box's neighbour
    boxes = np.array([big, small, right], dtype=np.float32)
    targets = encode_targets(boxes, np.array([0, 1, 1]), 2, (16, 16), 4, regression_radius=1)
    assert targets["wh"][:, 5, 5].tolist() == [2.0, 3.0]  # the small box took the shared centre
    assert targets["wh"][:, 5, 6].tolist() == [2.0, 2.0]  # a centre beats a neighbour
    assert targets["heatmap"][0, 5, 5] == targets["heatmap"][1, 5, 5] == 1.0


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
    t = encode_targets(boxes, np.array([0]), 1, (16, 16), 4, regression_radius=1)
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
    assert total.item() == pytest.approx(expected, rel=1e-6)
    # Gradients reach exactly the supervised cells.
    supervised = targets["regression_weight"][0] > 0
    assert torch.equal(outputs["offset"].grad[0, 0] != 0, supervised)


def _one_box_targets() -> dict[str, torch.Tensor]:
    boxes = np.array([[8.0, 8.0, 24.0, 20.0]], dtype=np.float32)  # 4 x 3 cells at stride 4
    t = encode_targets(boxes, np.array([0]), 1, (16, 16), 4, regression_radius=1)
    return {k: torch.from_numpy(v)[None] for k, v in t.items()}


def test_giou_loss_is_one_minus_the_iou_of_the_decoded_boxes():
    targets = _one_box_targets()
    exact = {"wh": targets["wh"].clone(), "offset": targets["offset"].clone()}
    assert weighted_giou_loss(exact, targets).item() == pytest.approx(0.0, abs=1e-6)
    # Every supervised cell predicts a box 1.5x wider, same centre: IoU 1 / 1.5, hull = union.
    wider = {"wh": targets["wh"] * torch.tensor([1.5, 1.0]).view(1, 2, 1, 1), "offset": exact["offset"]}
    assert weighted_giou_loss(wider, targets).item() == pytest.approx(1 - 1 / 1.5, rel=1e-5)
    # Disjoint boxes: GIoU goes below 0, so the loss exceeds 1 and still has a gradient.
    shifted = {"wh": exact["wh"], "offset": (exact["offset"] + 10.0).requires_grad_()}
    far = weighted_giou_loss(shifted, targets)
    far.backward()
    assert far.item() > 1.0
    assert shifted["offset"].grad.abs().sum() > 0


def test_centernet_loss_adds_giou_only_when_weighted():
    torch.manual_seed(0)
    targets = _one_box_targets()
    outputs = {
        "heatmap": torch.rand(1, 1, 16, 16),
        "wh": torch.rand(1, 2, 16, 16) * 4,
        "offset": torch.rand(1, 2, 16, 16),
    }
    plain, parts = centernet_loss(outputs, targets, size_weight=0.2, offset_weight=1.0)
    assert "giou" not in parts
    total, parts = centernet_loss(outputs, targets, size_weight=0.2, offset_weight=1.0, giou_weight=2.0)
    assert parts["giou"] > 0
    assert total.item() == pytest.approx(plain.item() + 2.0 * parts["giou"], rel=1e-6)
