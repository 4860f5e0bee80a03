"""Latency of every available backend, measured side by side in one run.

Fairness rules: the same input batch for every backend, the same thread count, warm-up
runs excluded, and runs interleaved (round-robin, order rotated every round) so that
machine noise - another process, thermal throttling - hits all backends alike instead of
whichever happened to run during the noisy minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ops.deploy.roofline import Roofline, cpu_precision
from ops.deploy.runtime import Predictor
from ops.io import save_figure

log = logging.getLogger(__name__)


@dataclass
class BackendRow:
    """One line of the benchmark table."""

    backend: str
    latencies_ms: list[float] = field(default_factory=list)
    batch_size: int = 1
    size_bytes: int | None = None
    map50: float | None = None
    map50_95: float | None = None
    note: str = ""
    # The model's forward-pass GFLOPs per image (counted on its PyTorch layers), so every
    # backend's row shows the same work per second: how close each runs to the machine's peak.
    gflops: float | None = None

    @property
    def p50(self) -> float:
        return float(np.percentile(self.latencies_ms, 50))

    @property
    def p95(self) -> float:
        return float(np.percentile(self.latencies_ms, 95))

    @property
    def fps(self) -> float:
        return 1000.0 * self.batch_size / self.p50

    @property
    def gflop_per_s(self) -> float | None:
        return self.gflops * self.fps if self.gflops else None

    def to_dict(self, reference: BackendRow | None, roofline: Roofline | None = None) -> dict[str, Any]:
        """The row's figures; with ``roofline``, its GFLOP/s as a share of the GEMM rate of the
        precision it computes in (``gemm_fraction``)."""
        row: dict[str, Any] = {
            "backend": self.backend,
            "latency_p50_ms": round(self.p50, 2),
            "latency_p95_ms": round(self.p95, 2),
            "fps": round(self.fps, 2),
            "gflop_per_s": round(self.gflop_per_s, 1) if self.gflop_per_s else None,
            "gemm_fraction": (
                roofline.fraction(cpu_precision(self.backend), self.gflop_per_s) if roofline else None
            ),
            "speedup_vs_pytorch": round(reference.p50 / self.p50, 2) if reference else None,
            "size_mb": round(self.size_bytes / 1e6, 3) if self.size_bytes else None,
            "map50": self.map50,
            "map50_95": self.map50_95,
            "map50_delta_vs_pytorch": (
                round(self.map50 - reference.map50, 4)
                if reference and reference.map50 is not None and self.map50 is not None
                else None
            ),
            "runs": len(self.latencies_ms),
            "note": self.note,
        }
        return row


def measure_interleaved(
    predictors: Mapping[str, Predictor | Callable[[np.ndarray], Any]],
    batch: np.ndarray,
    warmup: int,
    runs: int,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Milliseconds per call of each predictor on ``batch``: ``warmup`` untimed calls each,
    then ``runs`` rounds of one timed call per predictor, the order rotated every round."""
    names = list(predictors)
    for name in names:
        for _ in range(warmup):
            predictors[name](batch)
    timings: dict[str, list[float]] = {name: [] for name in names}
    for round_index in tqdm(range(runs), desc="benchmark", unit="round", disable=None if progress else True):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            predictors[name](batch)
            timings[name].append((time.perf_counter() - start) * 1000.0)
    return timings


# The files a CPU deployment serves; the release names the faster of them at each benchmarked size.
CPU_SERVING_FORMATS = ("onnx", "onnx-int8")


def cpu_serving_choice(
    rows: Sequence[Mapping[str, Any]], size: str, batch_size: int, threads: int, digests: Mapping[str, str]
) -> dict[str, Any] | None:
    """The faster CPU serving format among one size's benchmark ``rows``, with the figures that
    decided and ``digests``, the sha256 of each file measured (so a release can tell they are its own).

    Why a choice at all: INT8 is not faster everywhere. On a small model the integer kernels'
    share of the time is small and quantising, layout and pixel-shuffle work is not, so FP32
    can win at the size a user deploys (measured on the demo detector, see the README)."""
    measured = {row["backend"]: row for row in rows if row["backend"] in CPU_SERVING_FORMATS}
    if not measured:
        return None
    ranked = sorted(measured.values(), key=lambda row: row["latency_p50_ms"])
    fastest = ranked[0]
    versus = "".join(f" vs {row['backend']} {row['latency_p50_ms']:.2f} ms" for row in ranked[1:])
    return {
        "size": size,
        "batch_size": batch_size,
        "threads": threads,
        "format": fastest["backend"],
        "latency_p50_ms": {row["backend"]: row["latency_p50_ms"] for row in ranked},
        "sha256": {backend: digests[backend] for backend in measured},
        "reason": f"{fastest['backend']} {fastest['latency_p50_ms']:.2f} ms{versus} (p50 at {size}, "
        f"batch {batch_size}, {threads} threads)",
    }


# (title, row key, format) of the detector's table; a task may pass its own columns.
DETECTION_COLUMNS = (
    ("backend", "backend", "{}"),
    ("p50 ms", "latency_p50_ms", "{:.1f}"),
    ("p95 ms", "latency_p95_ms", "{:.1f}"),
    ("FPS", "fps", "{:.1f}"),
    ("GFLOP/s", "gflop_per_s", "{:.0f}"),
    ("of GEMM", "gemm_fraction", "{:.0%}"),
    ("x PyTorch", "speedup_vs_pytorch", "{:.2f}"),
    ("mAP@0.5", "map50", "{:.4f}"),
    ("delta", "map50_delta_vs_pytorch", "{:+.4f}"),
    ("MB", "size_mb", "{:.2f}"),
)


def format_table(
    rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]] = DETECTION_COLUMNS
) -> str:
    """A fixed-width text table of :meth:`BackendRow.to_dict` rows."""
    cells = [[title for title, _, _ in columns]]
    for row in rows:
        cells.append([("-" if row.get(key) is None else fmt.format(row[key])) for _, key, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_benchmark(rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Latency bars per backend and, where accuracy is known, mAP@0.5 against FPS."""
    from matplotlib.figure import Figure

    with_map = [r for r in rows if r.get("map50") is not None]
    fig = Figure(figsize=(11 if with_map else 6, 4.2))
    axes = fig.subplots(1, 2 if with_map else 1, squeeze=False)[0]
    names = [r["backend"] for r in rows]
    p50 = [r["latency_p50_ms"] for r in rows]
    p95 = [r["latency_p95_ms"] for r in rows]
    y = np.arange(len(rows))
    axes[0].barh(y, p95, color="#c7d7ea", label="p95")
    axes[0].barh(y, p50, color="#3b6ea5", label="p50")
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("latency per batch (ms)")
    axes[0].legend(loc="lower right", fontsize=8)
    axes[0].grid(axis="x", alpha=0.3)
    for i, row in enumerate(rows):
        if row.get("speedup_vs_pytorch"):
            axes[0].text(
                row["latency_p50_ms"], i, f" {row['speedup_vs_pytorch']:.2f}x", va="center", fontsize=8
            )
    if with_map:
        ax = axes[1]
        for row in with_map:
            ax.scatter(row["fps"], row["map50"], s=40)
            ax.annotate(
                row["backend"],
                (row["fps"], row["map50"]),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
            )
        ax.set_xlabel("throughput (FPS)")
        ax.set_ylabel("mAP@0.5")
        ax.set_title("accuracy vs speed")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
