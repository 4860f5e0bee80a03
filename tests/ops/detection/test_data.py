"""The traffic scene generator and the COCO loader: layout, labels, validation, report."""

from __future__ import annotations

import json
import shutil
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ops.config import TrafficGeneratorConfig
from ops.detection import scenes as traffic_scenes
from ops.detection.coco import load_coco_split, read_image_rgb, write_dataset_report
from ops.detection.scenes import (
    TRAFFIC_CLASSES,
    generate_traffic_dataset,
    render_traffic_scene,
)
from ops.errors import DatasetError

SPLITS = ("train", "val")

CFG = TrafficGeneratorConfig(
    seed=7, num_train=12, num_val=6, image_width=128, image_height=128,
    min_objects=2, max_objects=8, jpeg_quality=90,
)  # fmt: skip
# A moderate sample at the demo's resolution for statistics over the label distribution.
SAMPLE_CFG = CFG.model_copy(
    update={"image_width": 256, "image_height": 256, "min_objects": 1, "max_objects": 15}
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gen") / "traffic"
    assert generate_traffic_dataset(root, CFG, progress=False, workers=1) == root
    return root


@pytest.fixture(scope="module")
def sample() -> list[traffic_scenes.RenderedScene]:
    return [render_traffic_scene(SAMPLE_CFG, "train", i) for i in range(40)]


def _doc(root: Path, split: str = "train") -> dict[str, Any]:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _write_doc(root: Path, doc: dict[str, Any], split: str = "train") -> None:
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))


@pytest.fixture
def copy(dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the generated dataset that a test may break."""
    return Path(shutil.copytree(dataset, tmp_path / "copy"))


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --------------------------------------------------------------------------- generator


def test_layout_and_pycocotools_loads_it(dataset: Path):
    from pycocotools.coco import COCO

    for split, count in (("train", CFG.num_train), ("val", CFG.num_val)):
        images = sorted((dataset / "images" / split).glob("*.jpg"))
        assert [p.name for p in images] == [f"{i:06d}.jpg" for i in range(1, count + 1)]
        coco = COCO(str(dataset / "annotations" / f"instances_{split}.json"))
        assert sorted(coco.getImgIds()) == list(range(1, count + 1))
        cats = coco.loadCats(coco.getCatIds())
        assert [c["name"] for c in cats] == list(TRAFFIC_CLASSES)
        assert [c["supercategory"] for c in cats] == ["vehicle", "vehicle", "vehicle", "person"]
        anns = coco.loadAnns(coco.getAnnIds())
        assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert ann["iscrowd"] == 0 and ann["area"] == pytest.approx(w * h)
            assert x >= 0 and y >= 0 and x + w <= CFG.image_width and y + h <= CFG.image_height
            assert min(w, h) >= traffic_scenes.MIN_BOX_SIDE
        image = coco.loadImgs([1])[0]
        assert (image["width"], image["height"], image["file_name"]) == (128, 128, "000001.jpg")
        with Image.open(images[0]) as im:
            assert im.format == "JPEG" and im.size == (128, 128)
    info = _doc(dataset)["info"]
    assert info["description"] and info["generator"]["config"] == CFG.model_dump(mode="json")
    assert not list(dataset.parent.glob(".traffic.*")), "temporary directories left behind"


def test_generation_is_deterministic_in_any_number_of_processes(dataset: Path, tmp_path: Path):
    again = generate_traffic_dataset(tmp_path / "again", CFG, progress=False, workers=2)
    assert _files(again) == _files(dataset)


def test_single_image_can_be_regenerated_alone(dataset: Path):
    doc = _doc(dataset, "val")
    scene = render_traffic_scene(CFG, "val", 2)  # third image: id 3, 000003.jpg
    anns = [a for a in doc["annotations"] if a["image_id"] == 3]
    assert [a["bbox"] for a in anns] == scene.boxes.tolist()
    assert [a["category_id"] for a in anns] == scene.category_ids.tolist()
    train = render_traffic_scene(CFG, "train", 2)
    assert not np.array_equal(train.image, scene.image), "train and val must be independent"


def test_objects_per_image_within_configured_range(dataset: Path):
    for split in SPLITS:
        doc = _doc(dataset, split)
        counts = {img["id"]: 0 for img in doc["images"]}
        for ann in doc["annotations"]:
            counts[ann["image_id"]] += 1
        assert all(CFG.min_objects <= c <= CFG.max_objects for c in counts.values()), counts


def test_sample_covers_classes_sizes_truncation_and_occlusion(sample):
    size = SAMPLE_CFG.image_width
    boxes = np.concatenate([s.boxes for s in sample])
    classes = np.concatenate([s.category_ids for s in sample])
    assert set(classes.tolist()) == {1, 2, 3, 4}
    sqrt_area = np.sqrt(boxes[:, 2] * boxes[:, 3])
    assert sqrt_area.min() <= 16
    assert boxes[:, 2:].max() >= 0.25 * size
    assert boxes[:, 2:].max() <= traffic_scenes.MAX_BOX_FRACTION * size
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= size).all() and (y1 <= size).all()
    touching = (x0 == 0) | (y0 == 0) | (x1 == size) | (y1 == size)
    assert touching.sum() >= 5, "objects must be truncated at the border"
    overlaps = 0
    for scene in sample:
        for a, b in combinations(scene.boxes, 2):
            ix = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
            iy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
            overlaps += ix > 0 and iy > 0
    assert overlaps >= 5, "objects must partly occlude each other"
    visible = np.concatenate([s.visible_fractions for s in sample])
    assert visible.min() >= traffic_scenes.MIN_VISIBLE_FRACTION
    assert (visible < 0.95).any(), "some objects should be partly hidden"


def test_pedestrians_are_tall_and_thin(sample):
    size = SAMPLE_CFG.image_width
    ratios = []
    for scene in sample:
        for (x, y, w, h), cat, vis in zip(
            scene.boxes, scene.category_ids, scene.visible_fractions, strict=True
        ):
            if cat == 4 and vis == 1.0 and x > 0 and y > 0 and x + w < size and y + h < size:
                ratios.append(w / h)
    assert ratios and 0.3 <= float(np.median(ratios)) <= 0.45


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch):
    root = tmp_path / "broken"
    real = traffic_scenes._write_jpeg
    calls = []

    def flaky(path: Path, rgb: np.ndarray, quality: int) -> None:
        if len(calls) == 3:
            raise RuntimeError("disk full")
        calls.append(path)
        real(path, rgb, quality)

    monkeypatch.setattr(traffic_scenes, "_write_jpeg", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_traffic_dataset(root, CFG, progress=False, workers=1)
    assert len(calls) == 3
    assert list(tmp_path.iterdir()) == [], "no dataset and no temporary directory may remain"


def test_regeneration_replaces_an_existing_dataset(tmp_path: Path):
    root = tmp_path / "traffic"
    (root / "images").mkdir(parents=True)
    (root / "stale.txt").write_text("old")
    small = CFG.model_copy(update={"num_train": 2, "num_val": 1})
    generate_traffic_dataset(root, small, progress=False)
    assert not (root / "stale.txt").exists()
    assert len(load_coco_split(root, "train")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["traffic"]


def test_a_file_in_place_of_the_root_is_an_error(tmp_path: Path):
    root = tmp_path / "traffic"
    root.write_text("not a directory")
    with pytest.raises(DatasetError, match="not a directory"):
        generate_traffic_dataset(root, CFG, progress=False)


# --------------------------------------------------------------------------- loader


def test_load_round_trip(dataset: Path):
    split = load_coco_split(dataset, "train")
    doc = _doc(dataset)
    assert len(split) == CFG.num_train and split.split == "train"
    assert split.class_names == list(TRAFFIC_CLASSES)
    assert [split.category_index(i) for i in (1, 2, 3, 4)] == [0, 1, 2, 3]
    assert split.annotation_path == dataset / "annotations" / "instances_train.json"
    assert split.num_annotations == len(doc["annotations"])
    first = split.images[0]
    assert first.path == dataset / "images" / "train" / "000001.jpg"
    expected = [a for a in doc["annotations"] if a["image_id"] == first.id]
    assert first.boxes.dtype == np.float32 and first.boxes.shape == (len(expected), 4)
    np.testing.assert_allclose(first.boxes, [a["bbox"] for a in expected])
    assert first.category_ids.dtype == np.int64
    assert first.category_ids.tolist() == [a["category_id"] for a in expected]
    fast = load_coco_split(dataset, "train", check_images=False)
    assert [i.id for i in fast.images] == [i.id for i in split.images]
    with pytest.raises(KeyError):
        split.category_index(99)


def test_crowd_annotations_are_not_training_boxes(copy: Path):
    doc = _doc(copy)
    doc["annotations"][0]["iscrowd"] = 1
    image_id = doc["annotations"][0]["image_id"]
    _write_doc(copy, doc)
    split = load_coco_split(copy, "train")
    n = sum(a["image_id"] == image_id for a in doc["annotations"])
    assert len(next(i for i in split.images if i.id == image_id).boxes) == n - 1


def test_read_image_rgb(dataset: Path, tmp_path: Path):
    path = dataset / "images" / "train" / "000001.jpg"
    rgb = read_image_rgb(path)
    assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8
    with Image.open(path) as im:
        reference = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(rgb.astype(int) - reference).mean() < 2  # RGB order, not BGR
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\x00not an image" * 10)
    with pytest.raises(DatasetError, match="garbage.jpg"):
        read_image_rgb(garbage)
    with pytest.raises(DatasetError, match="missing.jpg.*not found"):
        read_image_rgb(tmp_path / "missing.jpg")


def _error(root: Path, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        load_coco_split(root, "train", **kwargs)
    return str(info.value)


def _first_annotation(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    ann = doc["annotations"][0]
    image = next(i for i in doc["images"] if i["id"] == ann["image_id"])
    return ann, image


def test_missing_image_file(copy: Path):
    (copy / "images" / "train" / "000003.jpg").unlink()
    message = _error(copy)
    assert "image 3 '000003.jpg': image file not found" in message
    assert "image 3 '000003.jpg': image file not found" in _error(copy, check_images=False)


def test_truncated_jpeg(copy: Path):
    path = copy / "images" / "train" / "000004.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = _error(copy)
    assert "image 4 '000004.jpg': unreadable or truncated" in message
    load_coco_split(copy, "train", check_images=False)  # only existence is checked


def test_garbage_image_bytes(copy: Path):
    (copy / "images" / "train" / "000005.jpg").write_bytes(b"this is not a jpeg" * 50)
    assert "image 5 '000005.jpg': unreadable" in _error(copy)


def test_image_size_differs_from_annotation(copy: Path):
    Image.new("RGB", (64, 48)).save(copy / "images" / "train" / "000002.jpg")
    assert "image 2 '000002.jpg': image on disk is 64x48 but the annotation says 128x128" in (
        _error(copy)
    )


def test_box_outside_image(copy: Path):
    doc = _doc(copy)
    ann, image = _first_annotation(doc)
    ann["bbox"] = [120.0, 3.0, 20.0, 9.0]
    _write_doc(copy, doc)
    expected = (
        f"annotation {ann['id']} (image {image['id']} '{image['file_name']}'): "
        "box [120.0, 3.0, 20.0, 9.0] extends outside the 128x128 image"
    )
    assert expected in _error(copy)


def test_box_within_rounding_tolerance_is_accepted(copy: Path):
    doc = _doc(copy)
    ann, _ = _first_annotation(doc)
    ann["bbox"] = [-0.5, 0.0, 128.6, 20.0]
    _write_doc(copy, doc)
    load_coco_split(copy, "train", check_images=False)


@pytest.mark.parametrize(
    ("bbox", "reason"),
    [
        ([10.0, 10.0, 0.0, 5.0], "non-positive width or height"),
        ([10.0, 10.0, 5.0, -1.0], "non-positive width or height"),
        ([10.0, 10.0, 5.0], "bbox must be a list of 4 numbers"),
        (["a", 1, 2, 3], "bbox must be a list of 4 numbers"),
    ],
)
def test_degenerate_boxes(copy: Path, bbox: list, reason: str):
    doc = _doc(copy)
    ann, image = _first_annotation(doc)
    ann["bbox"] = bbox
    _write_doc(copy, doc)
    message = _error(copy, check_images=False)
    assert f"annotation {ann['id']} (image {image['id']} '{image['file_name']}'): " in message
    assert reason in message


def test_non_finite_box(copy: Path):
    path = copy / "annotations" / "instances_train.json"
    doc = _doc(copy)
    ann, _ = _first_annotation(doc)
    ann["bbox"] = [1.0, 2.0, 3.0, 4.0]
    text = json.dumps(doc).replace("[1.0, 2.0, 3.0, 4.0]", "[1.0, NaN, 3.0, 4.0]", 1)
    path.write_text(text)
    assert f"annotation {ann['id']}" in (m := _error(copy, check_images=False))
    assert "non-finite" in m


def test_unknown_category_id(copy: Path):
    doc = _doc(copy)
    ann, _ = _first_annotation(doc)
    ann["category_id"] = 99
    _write_doc(copy, doc)
    assert f"annotation {ann['id']} " in (message := _error(copy))
    assert "unknown category id 99" in message


def test_annotation_of_unknown_image(copy: Path):
    doc = _doc(copy)
    doc["annotations"][0]["image_id"] = 4242
    _write_doc(copy, doc)
    assert f"annotation {doc['annotations'][0]['id']} (image 4242): refers to unknown image id" in (
        _error(copy)
    )


def test_duplicate_image_id(copy: Path):
    doc = _doc(copy)
    doc["images"][1]["id"] = doc["images"][0]["id"]
    _write_doc(copy, doc)
    assert "image 1 '000002.jpg': duplicate image id (also '000001.jpg')" in _error(copy)


def test_duplicate_annotation_id(copy: Path):
    doc = _doc(copy)
    doc["annotations"][1]["id"] = doc["annotations"][0]["id"]
    _write_doc(copy, doc)
    assert f"annotation {doc['annotations'][0]['id']} " in (message := _error(copy))
    assert "duplicate annotation id" in message


def test_duplicate_category_id(copy: Path):
    doc = _doc(copy)
    doc["categories"].append({"id": 2, "name": "lorry", "supercategory": "vehicle"})
    _write_doc(copy, doc)
    assert "category 2 ('lorry'): duplicate category id" in _error(copy)


def test_malformed_json(copy: Path):
    path = copy / "annotations" / "instances_train.json"
    path.write_text(path.read_text()[:-40])
    message = _error(copy)
    assert str(path) in message and "is not valid JSON" in message


def test_missing_annotations_key(copy: Path):
    doc = _doc(copy)
    del doc["annotations"]
    _write_doc(copy, doc)
    assert "missing required key 'annotations'" in _error(copy)


def test_wrong_type_of_section(copy: Path):
    doc = _doc(copy)
    doc["images"] = {"not": "a list"}
    _write_doc(copy, doc)
    assert "'images' must be a list, got dict" in _error(copy)


def test_missing_annotation_file(tmp_path: Path):
    message = _error(tmp_path)
    assert "annotation file not found" in message and "instances_train.json" in message


def test_every_problem_is_reported_at_once(copy: Path):
    doc = _doc(copy)
    ann, image = _first_annotation(doc)
    ann["bbox"] = [120.0, 3.0, 20.0, 9.0]
    _write_doc(copy, doc)
    (copy / "images" / "train" / "000006.jpg").unlink()
    message = _error(copy)
    lines = message.splitlines()
    assert lines[0].startswith("2 problems in ") and len(lines) == 3
    assert any(f"annotation {ann['id']} " in line and "outside" in line for line in lines)
    assert any("'000006.jpg': image file not found" in line for line in lines)


# --------------------------------------------------------------------------- report


def test_dataset_report(dataset: Path, tmp_path: Path):
    split = load_coco_split(dataset, "val")
    doc = _doc(dataset, "val")
    report = write_dataset_report(split, tmp_path / "reports")
    json_path = tmp_path / "reports" / "report_val.json"
    png_path = tmp_path / "reports" / "box_sizes_val.png"
    assert report["files"] == {"json": str(json_path), "png": str(png_path)}
    on_disk = json.loads(json_path.read_text())
    assert on_disk == report
    assert on_disk["num_images"] == len(doc["images"]) == CFG.num_val
    assert on_disk["num_annotations"] == len(doc["annotations"])
    names = {c["id"]: c["name"] for c in doc["categories"]}
    expected = {name: 0 for name in TRAFFIC_CLASSES}
    for ann in doc["annotations"]:
        expected[names[ann["category_id"]]] += 1
    assert on_disk["class_counts"] == expected
    per_image = [sum(a["image_id"] == i["id"] for a in doc["annotations"]) for i in doc["images"]]
    assert on_disk["objects_per_image"] == {
        "min": min(per_image), "mean": pytest.approx(np.mean(per_image)), "max": max(per_image)
    }  # fmt: skip
    sizes = [np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in doc["annotations"]]
    assert on_disk["box_size_sqrt_area"]["min"] == pytest.approx(min(sizes))
    assert on_disk["box_size_sqrt_area"]["max"] == pytest.approx(max(sizes))
    assert 0 <= on_disk["truncated_boxes"] <= on_disk["num_annotations"]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png_path) as im:
        im.verify()
    assert not [p for p in (tmp_path / "reports").iterdir() if p.name.startswith(".")]


def test_a_scene_that_cannot_be_placed_fails_in_a_worker_and_leaves_nothing(tmp_path: Path):
    crowded = CFG.model_copy(
        update={"image_width": 64, "image_height": 64, "min_objects": 40, "max_objects": 40}
    )
    with pytest.raises(DatasetError, match="could not place 40 objects"):
        generate_traffic_dataset(tmp_path / "traffic", crowded, progress=False, workers=2)
    assert list(tmp_path.iterdir()) == [], "no dataset and no temporary directory may remain"
