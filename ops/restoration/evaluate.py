"""PSNR and SSIM of a restorer on a validation split, always beside the degraded input's.

Backend-neutral: the restorer is a :class:`~ops.deploy.runtime.Predictor` (float32 NCHW RGB in
0..1 in, ``restored`` out), so PyTorch, ONNX Runtime and TensorRT are scored by the same code.
Outputs are clipped and rounded to 8 bits before scoring, as the image a user saves would be;
PSNR and SSIM use a fixed data range of 255 (never inferred from the data).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ops.deploy.runtime import Predictor
from ops.io import save_figure, write_json
from ops.restoration.pairs import PSNR_SETTINGS, SSIM_SETTINGS, PairSplit, psnr, ssim
from ops.restoration.training import to_tensor, to_uint8

log = logging.getLogger(__name__)


def _batches(split: PairSplit, batch_size: int) -> Iterator[list[tuple[np.ndarray, np.ndarray, dict]]]:
    """Samples grouped into batches of equal size (blocks batch together; file pairs of
    different sizes go one by one)."""
    batch: list[tuple[np.ndarray, np.ndarray, dict]] = []
    for sample in split.iter_samples():
        if batch and (len(batch) == batch_size or batch[0][0].shape != sample[0].shape):
            yield batch
            batch = []
        batch.append(sample)
    if batch:
        yield batch


def restore(predictor: Predictor, degraded: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> the predictor's restoration as uint8 (N, H, W, 3)."""
    outputs = predictor(to_tensor(degraded).numpy())
    return to_uint8(outputs["restored"])


def _mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return round(float(np.mean(finite)), 4) if finite else float("nan")


def evaluate_restorer(
    predictor: Predictor,
    split: PairSplit,
    out_dir: Path,
    metrics_path: Path,
    *,
    batch_size: int = 16,
    num_sample_images: int = 4,
    bin_key: str = "iso",
) -> dict[str, Any]:
    """Score ``predictor`` on every sample of ``split``; write the metrics JSON and a
    before/after/difference grid. Returns the metrics (``psnr``, ``ssim``, ``psnr_input``,
    ``ssim_input``, ``psnr_gain``, per ``bin_key`` value, and the metric settings)."""
    rows: list[dict[str, Any]] = []
    shown: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]] = []
    # evenly spaced over the split, so the grid spans its images (and ISO levels)
    picked = set(
        np.linspace(0, len(split) - 1, min(num_sample_images, len(split))).round().astype(int).tolist()
    )
    progress = tqdm(total=len(split), desc=f"evaluate {predictor.backend}", unit="image", disable=None)
    for batch in _batches(split, batch_size):
        degraded = np.stack([d for d, _, _ in batch])
        restored = restore(predictor, degraded)
        for (noisy, clean, info), output in zip(batch, restored, strict=True):
            rows.append(
                {
                    "bin": str(info.get(bin_key, "unknown")),
                    "psnr": psnr(output, clean),
                    "ssim": ssim(output, clean),
                    "psnr_input": psnr(noisy, clean),
                    "ssim_input": ssim(noisy, clean),
                }
            )
            if len(rows) - 1 in picked:
                label = f"{bin_key} {info[bin_key]}" if bin_key in info else f"sample {len(rows) - 1}"
                shown.append((noisy, output, clean, label))
        progress.update(len(batch))
    progress.close()

    def summary(selected: list[dict[str, Any]]) -> dict[str, Any]:
        values = {
            key: _mean([r[key] for r in selected]) for key in ("psnr", "ssim", "psnr_input", "ssim_input")
        }
        values["psnr_gain"] = round(values["psnr"] - values["psnr_input"], 4)
        values["num_samples"] = len(selected)
        return values

    by_bin: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_bin[row["bin"]].append(row)
    metrics: dict[str, Any] = {
        "backend": predictor.backend,
        "split": split.name,
        **summary(rows),
        f"per_{bin_key}": {
            name: summary(selected)
            for name, selected in sorted(by_bin.items(), key=lambda kv: _bin_order(kv[0]))
        },
        "psnr_settings": PSNR_SETTINGS,
        "ssim_settings": SSIM_SETTINGS,
    }
    grid = plot_restorations(shown, out_dir / "samples.png", predictor.backend)
    metrics["plots"] = {"samples": str(grid)}
    write_json(metrics_path, metrics)
    log.info(
        "%s on %s: PSNR %.2f dB (input %.2f, gain %+.2f), SSIM %.4f (input %.4f)",
        predictor.backend,
        split.name,
        metrics["psnr"],
        metrics["psnr_input"],
        metrics["psnr_gain"],
        metrics["ssim"],
        metrics["ssim_input"],
    )
    return metrics


def _bin_order(name: str) -> tuple[int, float, str]:
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def plot_restorations(
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]], path: Path, backend: str
) -> Path:
    """Rows of degraded | restored | clean | |restored - clean| x4, each titled with its PSNR."""
    from matplotlib.figure import Figure

    rows = max(1, len(samples))
    fig = Figure(figsize=(10, 2.6 * rows))
    axes = fig.subplots(rows, 4, squeeze=False)
    for row, (noisy, restored, clean, label) in zip(axes, samples, strict=False):
        difference = np.clip(np.abs(restored.astype(np.int16) - clean.astype(np.int16)) * 4, 0, 255)
        panels = (
            (noisy, f"input {psnr(noisy, clean):.2f} dB ({label})"),
            (restored, f"{backend} {psnr(restored, clean):.2f} dB"),
            (clean, "clean"),
            (difference.astype(np.uint8), "|restored - clean| x4"),
        )
        for ax, (image, title) in zip(row, panels, strict=True):
            ax.imshow(image, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    fig.suptitle(f"{backend}: before / after / difference (PSNR data range 255)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
