"""One loader for COCO-format detection datasets, generated or real, with strict validation.

Training and evaluation read every dataset through :func:`load_coco_split`, so a corrupt
image or a malformed annotation is caught once, up front, with a message that names every
offending item (not only the first), instead of failing as an IndexError in a DataLoader
worker an hour into training.

Crowd regions (``iscrowd: 1``) are validated like any annotation but left out of
:attr:`CocoImage.boxes`: they mark groups that are not individual objects, so they are no
training targets. pycocotools still sees them in the annotation file and treats them as
"ignore" regions when scoring.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageFile

from ops.errors import DatasetError
from ops.io import is_int, save_figure, write_json

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("images", "annotations", "categories")
# Boxes may overshoot the image by this much: float rounding in real annotation tools.
BOX_TOLERANCE_PX = 1.0
# A box edge this close to the image border counts as truncated in the report.
BORDER_TOLERANCE_PX = 0.5


@dataclass(frozen=True)
class CocoImage:
    """One image and its training boxes (crowd annotations excluded)."""

    id: int
    file_name: str
    width: int
    height: int
    path: Path
    boxes: np.ndarray  # (N, 4) float32 [x, y, w, h] in pixels
    category_ids: np.ndarray  # (N,) int64 COCO category ids


@dataclass(frozen=True)
class CocoSplit:
    """A validated split: its images in file order and its categories sorted by id."""

    root: Path
    split: str
    annotation_path: Path
    images: list[CocoImage]
    categories: list[dict[str, Any]]
    _index: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {int(cat["id"]): i for i, cat in enumerate(self.categories)}
        object.__setattr__(self, "_index", index)

    @property
    def class_names(self) -> list[str]:
        return [str(cat["name"]) for cat in self.categories]

    @property
    def num_annotations(self) -> int:
        return sum(len(image.boxes) for image in self.images)

    def category_index(self, cat_id: int) -> int:
        """Contiguous class index 0..C-1 (by sorted category id) of a COCO category id."""
        try:
            return self._index[int(cat_id)]
        except KeyError:
            raise KeyError(f"category id {cat_id} is not one of {sorted(self._index)}") from None

    def __len__(self) -> int:
        return len(self.images)


def read_image_rgb(path: Path) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB; raise :class:`DatasetError` naming the file."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:  # imread says neither "missing" nor "corrupt": tell the user which
        reason = "not a readable image file" if Path(path).is_file() else "file not found"
        raise DatasetError(f"cannot read image {path}: {reason}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------- loading


def _fail(path: Path, problems: list[str]) -> DatasetError:
    noun = "problem" if len(problems) == 1 else "problems"
    return DatasetError(
        f"{len(problems)} {noun} in {path}:\n" + "\n".join(f"  - {p}" for p in problems)
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_document(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"annotation file not found: {path}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"annotation file {path} is not valid JSON: {exc.msg} "
            f"at line {exc.lineno} column {exc.colno}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read annotation file {path}: {exc}") from None
    if not isinstance(document, dict):
        raise DatasetError(
            f"annotation file {path} must hold a JSON object, got {type(document).__name__}"
        )
    problems = []
    for key in REQUIRED_KEYS:
        if key not in document:
            problems.append(f"missing required key '{key}'")
        elif not isinstance(document[key], list):
            problems.append(f"'{key}' must be a list, got {type(document[key]).__name__}")
    if problems:
        raise _fail(path, problems)
    return document


def _check_categories(raw: list[Any], problems: list[str]) -> dict[int, dict[str, Any]]:
    categories: dict[int, dict[str, Any]] = {}
    for pos, cat in enumerate(raw):
        if (
            not isinstance(cat, dict)
            or not is_int(cat.get("id"))
            or not isinstance(cat.get("name"), str)
        ):
            problems.append(
                f"category #{pos} ({cat!r:.80}): needs an integer 'id' and a string 'name'"
            )
            continue
        if cat["id"] in categories:
            problems.append(f"category {cat['id']} ('{cat['name']}'): duplicate category id")
            continue
        categories[cat["id"]] = cat
    return categories


def _check_images(
    raw: list[Any], image_dir: Path, problems: list[str]
) -> dict[int, dict[str, Any]]:
    images: dict[int, dict[str, Any]] = {}
    names: dict[str, int] = {}
    for pos, img in enumerate(raw):
        if not isinstance(img, dict):
            problems.append(f"image #{pos}: must be an object, got {type(img).__name__}")
            continue
        image_id, name = img.get("id"), img.get("file_name")
        label = f"image {image_id} '{name}'" if isinstance(name, str) else f"image #{pos}"
        bad = [key for key in ("id", "width", "height") if not is_int(img.get(key))]
        if not isinstance(name, str) or not name:
            bad.append("file_name")
        if bad:
            problems.append(f"{label}: missing or ill-typed {', '.join(bad)}")
            continue
        if img["width"] <= 0 or img["height"] <= 0:
            problems.append(f"{label}: size {img['width']}x{img['height']} is not positive")
            continue
        if image_id in images:
            problems.append(f"{label}: duplicate image id (also '{images[image_id]['file_name']}')")
            continue
        if name in names:
            problems.append(f"{label}: duplicate file_name (also image {names[name]})")
            continue
        # A file_name escaping the split's folder is a malformed (or hostile) annotation.
        if Path(name).is_absolute() or ".." in Path(name).parts:
            problems.append(f"{label}: file_name must be relative to {image_dir}")
            continue
        names[name] = image_id
        images[image_id] = img
    return images


def _check_annotations(
    raw: list[Any],
    images: dict[int, dict[str, Any]],
    categories: dict[int, dict[str, Any]],
    problems: list[str],
) -> dict[int, list[tuple[list[float], int, bool]]]:
    per_image: dict[int, list[tuple[list[float], int, bool]]] = {i: [] for i in images}
    seen: set[int] = set()
    for pos, ann in enumerate(raw):
        if not isinstance(ann, dict):
            problems.append(f"annotation #{pos}: must be an object, got {type(ann).__name__}")
            continue
        ann_id, image_id, cat_id = ann.get("id"), ann.get("image_id"), ann.get("category_id")
        image = images.get(image_id) if is_int(image_id) else None
        where = f" (image {image_id} '{image['file_name']}')" if image else f" (image {image_id})"
        label = f"annotation {ann_id}{where}" if is_int(ann_id) else f"annotation #{pos}{where}"
        bad = [key for key in ("id", "image_id", "category_id") if not is_int(ann.get(key))]
        if bad:
            problems.append(f"{label}: missing or ill-typed {', '.join(bad)}")
            continue
        if ann_id in seen:
            problems.append(f"{label}: duplicate annotation id")
            continue
        seen.add(ann_id)
        bbox = ann.get("bbox")
        errors = []
        if image is None:
            errors.append(f"refers to unknown image id {image_id}")
        if cat_id not in categories:
            errors.append(f"unknown category id {cat_id}")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            errors.append(f"bbox must be a list of 4 numbers [x, y, w, h], got {bbox!r:.80}")
        elif not all(math.isfinite(v) for v in bbox):
            errors.append(f"box {bbox} has non-finite values")
        else:
            x, y, w, h = (float(v) for v in bbox)
            if w <= 0 or h <= 0:
                errors.append(f"box {[x, y, w, h]} has non-positive width or height")
            elif image is not None:
                tol = BOX_TOLERANCE_PX
                if (
                    x < -tol
                    or y < -tol
                    or x + w > image["width"] + tol
                    or y + h > image["height"] + tol
                ):
                    errors.append(
                        f"box {[x, y, w, h]} extends outside the "
                        f"{image['width']}x{image['height']} image"
                    )
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1):
            errors.append(f"iscrowd must be 0 or 1, got {crowd!r}")
        if errors:
            problems.extend(f"{label}: {e}" for e in errors)
            continue
        per_image[image_id].append(([float(v) for v in bbox], cat_id, crowd == 1))
    return per_image


@contextlib.contextmanager
def _strict_pil() -> Iterator[None]:
    # Someone may have switched this on process-wide; a truncated file must fail here.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _check_image_file(path: Path, width: int, height: int) -> str | None:
    """Decode the whole file; return what is wrong with it, or None."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.load()
    except FileNotFoundError:
        return "image file not found"
    except Exception as exc:  # PIL raises many types for corrupt data (OSError, SyntaxError, ...)
        return f"unreadable or truncated image file ({type(exc).__name__}: {exc})"
    if size != (width, height):
        return f"image on disk is {size[0]}x{size[1]} but the annotation says {width}x{height}"
    return None


def load_coco_split(root: Path, split: str, check_images: bool = True) -> CocoSplit:
    """Load and validate ``root/annotations/instances_{split}.json`` and its images.

    Raises one :class:`DatasetError` listing every problem found, one per line. With
    ``check_images=False`` image files are only checked to exist, not decoded (fast path
    for a dataset that was validated before).
    """
    root = Path(root)
    ann_path = root / "annotations" / f"instances_{split}.json"
    image_dir = root / "images" / split
    document = _read_document(ann_path)
    problems: list[str] = []
    categories = _check_categories(document["categories"], problems)
    images = _check_images(document["images"], image_dir, problems)
    per_image = _check_annotations(document["annotations"], images, categories, problems)

    records = list(images.values())
    paths = [image_dir / img["file_name"] for img in records]
    if check_images:
        workers = min(8, os.cpu_count() or 1)
        with _strict_pil(), ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(
                pool.map(
                    lambda a: _check_image_file(*a),
                    [(p, r["width"], r["height"]) for p, r in zip(paths, records, strict=True)],
                )
            )
    else:
        results = [None if p.is_file() else "image file not found" for p in paths]
    for img, path, error in zip(records, paths, results, strict=True):
        if error is not None:
            problems.append(f"image {img['id']} '{img['file_name']}': {error} ({path})")
    if problems:
        raise _fail(ann_path, problems)

    loaded = []
    for img, path in zip(records, paths, strict=True):
        kept = [(box, cat) for box, cat, crowd in per_image[img["id"]] if not crowd]
        loaded.append(
            CocoImage(
                id=img["id"],
                file_name=img["file_name"],
                width=img["width"],
                height=img["height"],
                path=path,
                boxes=np.array([b for b, _ in kept], np.float32).reshape(-1, 4),
                category_ids=np.array([c for _, c in kept], np.int64),
            )
        )
    result = CocoSplit(
        root=root,
        split=split,
        annotation_path=ann_path,
        images=loaded,
        categories=[dict(categories[k]) for k in sorted(categories)],
    )
    log.info(
        "loaded %s: %d images, %d boxes, classes %s",
        ann_path,
        len(result),
        result.num_annotations,
        result.class_names,
    )
    return result


# --------------------------------------------------------------------------- report


def _stats(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {
        "min": float(values.min()),
        "median": float(np.median(values)),
        "max": float(values.max()),
    }


def write_dataset_report(split: CocoSplit, out_dir: Path) -> dict[str, Any]:
    """Write ``report_<split>.json`` and ``box_sizes_<split>.png`` to ``out_dir``; return it.

    The numbers are the ones that decide whether a detector can learn the data: objects per
    image, class balance, the spread of box sizes, and how many objects are cut by the
    border.
    """
    out_dir = Path(out_dir)
    names = split.class_names
    counts_per_image = np.array([len(img.boxes) for img in split.images], np.int64)
    boxes = [img.boxes for img in split.images if len(img.boxes)]
    all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    class_idx = np.array(
        [split.category_index(c) for img in split.images for c in img.category_ids], np.int64
    )
    sizes = np.sqrt(all_boxes[:, 2] * all_boxes[:, 3])
    truncated = 0
    for img in split.images:
        b = img.boxes
        if len(b):
            tol = BORDER_TOLERANCE_PX
            touch = (
                (b[:, 0] <= tol)
                | (b[:, 1] <= tol)
                | (b[:, 0] + b[:, 2] >= img.width - tol)
                | (b[:, 1] + b[:, 3] >= img.height - tol)
            )
            truncated += int(touch.sum())
    per_class = Counter(class_idx.tolist())
    report: dict[str, Any] = {
        "split": split.split,
        "annotation_file": str(split.annotation_path),
        "num_images": len(split.images),
        "num_annotations": int(len(all_boxes)),
        "objects_per_image": {
            "min": int(counts_per_image.min()) if counts_per_image.size else 0,
            "mean": float(counts_per_image.mean()) if counts_per_image.size else 0.0,
            "max": int(counts_per_image.max()) if counts_per_image.size else 0,
        },
        "class_counts": {name: int(per_class.get(i, 0)) for i, name in enumerate(names)},
        "box_size_sqrt_area": _stats(sizes),
        "box_size_sqrt_area_per_class": {
            name: _stats(sizes[class_idx == i]) for i, name in enumerate(names)
        },
        "truncated_boxes": truncated,
    }
    png = out_dir / f"box_sizes_{split.split}.png"
    json_path = out_dir / f"report_{split.split}.json"
    report["files"] = {"json": str(json_path), "png": str(png)}
    _plot_report(split.split, names, sizes, class_idx, report["class_counts"], png)
    write_json(json_path, report)
    log.info(
        "dataset report for %s: %d images, %d boxes -> %s",
        split.split,
        report["num_images"],
        report["num_annotations"],
        json_path,
    )
    return report


def _plot_report(
    split: str,
    names: list[str],
    sizes: np.ndarray,
    class_idx: np.ndarray,
    counts: dict[str, int],
    path: Path,
) -> None:
    from matplotlib.figure import Figure  # no pyplot state: safe in threads and without a display

    fig = Figure(figsize=(10, 4))
    ax_hist, ax_bar = fig.subplots(1, 2)
    if sizes.size:
        lo, hi = max(1.0, float(sizes.min())), max(2.0, float(sizes.max()))
        bins = np.geomspace(lo, hi * 1.001, 25)
        for i, name in enumerate(names):
            values = sizes[class_idx == i]
            if values.size:
                ax_hist.hist(
                    values,
                    bins=bins,
                    histtype="step",
                    linewidth=1.5,
                    label=f"{name} ({values.size})",
                )
        ax_hist.set_xscale("log")
        ax_hist.legend(fontsize=8)
    else:
        ax_hist.text(0.5, 0.5, "no boxes", ha="center", va="center", transform=ax_hist.transAxes)
    ax_hist.set_xlabel("box size, sqrt(w*h) [px]")
    ax_hist.set_ylabel("boxes")
    ax_hist.set_title(f"{split}: box sizes per class")
    ax_bar.bar(range(len(names)), [counts[n] for n in names], color="tab:blue")
    ax_bar.set_xticks(range(len(names)), names, rotation=30 if len(names) > 6 else 0)
    ax_bar.set_ylabel("boxes")
    ax_bar.set_title(f"{split}: objects per class")
    fig.tight_layout()
    save_figure(fig, path)
