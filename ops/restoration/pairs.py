"""Paired restoration data, whatever the dataset: degraded/clean file pairs or blocks, the
image reader every restoration loader uses, PSNR/SSIM with fixed settings, and the dataset
report (counts, degraded-input baseline, sample grid).

SIDD (noisy/clean) and GOPRO (blurred/sharp) differ only in where their files live and what
a folder name says about a pair; once a loader has turned a layout into a :class:`PairSplit`,
training, evaluation and reporting see the same thing. Images are uint8 RGB everywhere
(OpenCV decodes BGR: :func:`read_rgb8` converts).
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ops.errors import DatasetError
from ops.io import save_figure, write_json

log = logging.getLogger(__name__)

# Papers disagree on SSIM (MATLAB's 3-D kernel vs per-channel means); every figure this
# project prints says which one it is.
SSIM_SETTINGS = (
    "SSIM: skimage.metrics.structural_similarity, per RGB channel averaged (channel_axis=-1), "
    "gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255 for uint8 "
    "(fixed, never inferred from the data)"
)
PSNR_SETTINGS = "PSNR: 10 log10(data_range^2 / MSE) over all pixels and channels, data_range=255"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


@dataclass(frozen=True)
class ImagePair:
    """One degraded image and its clean reference on disk. ``group`` is the unit a split
    must not cut through (SIDD: the scene instance folder; GOPRO: the sequence)."""

    degraded: Path
    clean: Path
    group: str
    info: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class PairSplit:
    """One split of a paired dataset: file pairs, or (for block-based benchmarks such as
    SIDD's validation) arrays of blocks ``(N, H, W, 3)`` uint8 RGB with one info dict each."""

    name: str
    root: Path
    pairs: list[ImagePair] = field(default_factory=list)
    blocks_degraded: np.ndarray | None = None
    blocks_clean: np.ndarray | None = None
    block_info: list[dict[str, Any]] = field(default_factory=list)

    @property
    def num_pairs(self) -> int:
        return len(self.pairs)

    @property
    def num_blocks(self) -> int:
        return 0 if self.blocks_degraded is None else int(self.blocks_degraded.shape[0])

    def __len__(self) -> int:
        """Evaluation samples: file pairs plus blocks."""
        return self.num_pairs + self.num_blocks

    def sample_info(self, index: int) -> dict[str, Any]:
        """The info dict of sample ``index`` in :meth:`iter_samples` order (no image decoded)."""
        if index < self.num_pairs:
            pair = self.pairs[index]
            return {**pair.info, "group": pair.group}
        return dict(self.block_info[index - self.num_pairs])

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Sample ``index``: (degraded, clean, info), images uint8 (H, W, 3) RGB."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        if index < self.num_pairs:
            pair = self.pairs[index]
            return read_rgb8(pair.degraded), read_rgb8(pair.clean), self.sample_info(index)
        b = index - self.num_pairs
        assert self.blocks_degraded is not None and self.blocks_clean is not None
        return self.blocks_degraded[b], self.blocks_clean[b], self.sample_info(index)

    def iter_samples(self) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
        """Every evaluation sample once, file pairs first, then blocks: (degraded, clean, info)."""
        for index in range(len(self)):
            yield self.sample(index)


# --------------------------------------------------------------------------- reading images


def png_truncated(path: Path) -> bool:
    """A PNG that does not end with its IEND chunk was cut short (an interrupted copy or
    download); some decoders return the rows they got instead of failing, so check."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if head != _PNG_SIGNATURE:
                return False
            f.seek(0, 2)
            size = f.tell()
            if size < len(_PNG_SIGNATURE) + len(_PNG_IEND):
                return True
            f.seek(size - len(_PNG_IEND))
            return f.read() != _PNG_IEND
    except OSError:
        return False


def read_rgb8(path: Path | str) -> np.ndarray:
    """Decode ``path`` as an 8-bit RGB image (H, W, 3) uint8.

    Restoration tasks here are 8-bit sRGB: a 16-bit or grayscale file is a wrong file (a raw
    export, a mask), not something to convert silently, so it raises :class:`DatasetError`
    naming the path, as do missing, truncated and undecodable files. An alpha channel is
    dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image {path} does not exist")
    if png_truncated(path):
        raise DatasetError(f"image {path} is a truncated PNG (no IEND chunk at the end)")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise DatasetError(f"image {path} cannot be decoded (corrupt or not an image)")
    if image.dtype != np.uint8:
        raise DatasetError(
            f"image {path} is {image.dtype} ({image.dtype.itemsize * 8}-bit); expected 8-bit sRGB"
        )
    if image.ndim == 2 or image.shape[2] == 1:
        raise DatasetError(f"image {path} is grayscale; expected 3-channel 8-bit sRGB")
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.shape[2] != 3:
        raise DatasetError(f"image {path} has {image.shape[2]} channels; expected 3 (RGB)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_rgb8_png(rgb: np.ndarray) -> bytes:
    """Encode an RGB uint8 image as PNG bytes (deterministic for the same pixels)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DatasetError(f"could not encode a {rgb.shape} image as PNG")
    return buf.tobytes()


# --------------------------------------------------------------------------- metrics


def _as_float(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return np.asarray(a, np.float64), np.asarray(b, np.float64)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels; ``inf`` when identical."""
    x, y = _as_float(a, b)
    mse = float(np.mean(np.square(x - y)))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM of two (H, W, 3) images with the settings of :data:`SSIM_SETTINGS`.

    The data range is an argument, never taken from the images: scikit-image would otherwise
    infer it from the dtype or the values, and the same pair would score differently as uint8
    and as float.
    """
    from skimage.metrics import structural_similarity  # heavy import, kept off worker start-up

    x, y = _as_float(a, b)
    return float(
        structural_similarity(
            x,
            y,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=data_range,
        )
    )


# --------------------------------------------------------------------------- the report


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _summarise(psnrs: list[float], ssims: list[float]) -> dict[str, Any]:
    """Means over samples; identical pairs (PSNR inf) are counted, not averaged in."""
    finite = [p for p in psnrs if math.isfinite(p)]
    return {
        "num_samples": len(psnrs),
        "psnr": _finite_or_none(float(np.mean(finite))) if finite else None,
        "ssim": float(np.mean(ssims)) if ssims else None,
        "identical_pairs": len(psnrs) - len(finite),
    }


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Show noise at its real scale: a downscaled full image would average it away."""
    h, w = image.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[y : y + size, x : x + size]


def plot_pair_samples(
    samples: Sequence[tuple[np.ndarray, np.ndarray, dict[str, Any]]],
    path: Path,
    title: str,
    crop: int = 256,
    label_keys: Sequence[str] = ("group", "phone", "iso"),
) -> Path:
    """A grid: one row per sample, degraded | clean (centre crops of ``crop`` pixels), each
    labelled with the ``label_keys`` values its info has."""
    from matplotlib.figure import Figure  # heavy import, kept off worker start-up

    rows = max(1, len(samples))
    fig = Figure(figsize=(6.4, 3.1 * rows))
    axes = fig.subplots(rows, 2, squeeze=False)
    for row, (degraded, clean, info) in enumerate(samples):
        parts: dict[Any, str] = {}  # by value: a sequence that is also the group is named once
        for key in label_keys:
            if info.get(key) is not None:
                parts.setdefault(info[key], f"{key} {info[key]}")
        label = ", ".join(parts.values())
        value = psnr(degraded, clean)
        axes[row, 0].imshow(_center_crop(degraded, crop), interpolation="nearest")
        axes[row, 0].set_title(f"degraded ({value:.2f} dB)\n{label}", fontsize=7)
        axes[row, 1].imshow(_center_crop(clean, crop), interpolation="nearest")
        axes[row, 1].set_title("clean", fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def write_pair_report(
    split: PairSplit,
    out_dir: Path,
    group_keys: Sequence[str] = ("phone", "iso"),
    *,
    num_sample_rows: int = 4,
    max_metric_samples: int | None = None,
) -> dict[str, Any]:
    """Describe ``split``: counts, and the degraded input's PSNR/SSIM against the clean image
    overall and per value of each of ``group_keys`` (the baseline every restorer's figure is
    read against), as ``out_dir/report_<split>.json`` plus a sample grid
    ``out_dir/samples_<split>.png``; return the report with ``"files"`` added.

    ``max_metric_samples`` limits the metrics to that many evenly spaced samples (full-size
    SIDD-Medium pairs take seconds each for SSIM); counts always cover the whole split.
    A sample whose info lacks a key (real SIDD validation blocks have no ISO) is binned
    under ``"unknown"``.
    """
    out_dir = Path(out_dir)
    total = len(split)
    if total == 0:
        raise DatasetError(f"split {split.name!r} of {split.root} has no samples to report on")
    counts: dict[str, dict[str, int]] = {key: defaultdict(int) for key in group_keys}
    for index in range(total):
        info = split.sample_info(index)
        for key in group_keys:
            counts[key][str(info.get(key, "unknown"))] += 1

    if max_metric_samples is not None and max_metric_samples < total:
        chosen = np.unique(np.linspace(0, total - 1, max(1, max_metric_samples)).round().astype(int))
    else:
        chosen = np.arange(total)
    metric_set = set(chosen.tolist())
    shown = set(
        np.unique(np.linspace(0, total - 1, min(num_sample_rows, total)).round().astype(int)).tolist()
    )
    psnrs: list[float] = []
    ssims: list[float] = []
    binned: dict[str, dict[str, tuple[list[float], list[float]]]] = {
        key: defaultdict(lambda: ([], [])) for key in group_keys
    }
    grid: list[tuple[np.ndarray, np.ndarray, dict[str, Any]]] = []
    for index in sorted(metric_set | shown):
        degraded, clean, info = split.sample(index)
        if index in shown:
            grid.append((degraded, clean, info))
        if index not in metric_set:
            continue
        if degraded.shape != clean.shape:
            raise DatasetError(
                f"sample {index} of split {split.name!r} ({info.get('group', 'block')}): degraded "
                f"{degraded.shape} and clean {clean.shape} differ in size"
            )
        p, s = psnr(degraded, clean), ssim(degraded, clean)
        psnrs.append(p)
        ssims.append(s)
        for key in group_keys:
            bucket = binned[key][str(info.get(key, "unknown"))]
            bucket[0].append(p)
            bucket[1].append(s)

    report: dict[str, Any] = {
        "split": split.name,
        "root": str(split.root),
        "num_pairs": split.num_pairs,
        "num_blocks": split.num_blocks,
        "num_samples": total,
        "counts": {
            key: dict(sorted(c.items(), key=lambda kv: _sort_key(kv[0]))) for key, c in counts.items()
        },
        "degraded_input": {
            **_summarise(psnrs, ssims),
            "by": {
                key: {
                    value: _summarise(*bucket)
                    for value, bucket in sorted(bins.items(), key=lambda kv: _sort_key(kv[0]))
                }
                for key, bins in binned.items()
            },
        },
        "psnr_settings": PSNR_SETTINGS,
        "ssim_settings": SSIM_SETTINGS,
    }
    overall = report["degraded_input"]
    log.info(
        "%s split of %s: %d samples, degraded input PSNR %s dB, SSIM %s (%s)",
        split.name,
        split.root,
        total,
        "n/a" if overall["psnr"] is None else f"{overall['psnr']:.2f}",
        "n/a" if overall["ssim"] is None else f"{overall['ssim']:.4f}",
        SSIM_SETTINGS,
    )
    json_path = out_dir / f"report_{split.name}.json"
    png_path = plot_pair_samples(
        grid,
        out_dir / f"samples_{split.name}.png",
        f"{split.name}: degraded | clean (PSNR of the degraded input)",
        label_keys=("group", *group_keys),
    )
    report["files"] = {"json": str(json_path), "png": str(png_path)}
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN/Infinity may reach the file
    write_json(json_path, report)
    return report
