"""Presentation of step reports as Dagster metadata: numbers, tables, files and inline plots.

Only formatting lives here; every figure comes from an ``ops`` report.
"""

from __future__ import annotations

import base64
import io
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from dagster import MetadataValue
from PIL import Image

from ops.tracking import StepLog

# A plot is embedded in the event log as base64; past this size it is shrunk to a JPEG
# preview so the asset page stays quick to load (the full file is linked beside it).
MAX_INLINE_BYTES = 300_000
PREVIEW_WIDTH = 1024


def image_md(path: Path | str, title: str) -> MetadataValue:
    """A PNG shown inline on the asset page (the Dagster UI renders base64 images in Markdown)."""
    path = Path(path)
    data = path.read_bytes()
    mime = "image/png"
    if len(data) > MAX_INLINE_BYTES:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            if img.width > PREVIEW_WIDTH:
                img = img.resize((PREVIEW_WIDTH, round(img.height * PREVIEW_WIDTH / img.width)))
            buffer = io.BytesIO()
            img.save(buffer, format="JPEG", quality=85)
        data, mime = buffer.getvalue(), "image/jpeg"
    encoded = base64.b64encode(data).decode("ascii")
    return MetadataValue.md(f"**{title}** (`{path}`)\n\n![{title}](data:{mime};base64,{encoded})")


def plots(entries: Mapping[str, Path | str | None]) -> dict[str, MetadataValue]:
    """``{name: png}`` -> inline image and path entries, skipping plots that were not drawn."""
    out: dict[str, MetadataValue] = {}
    for name, path in entries.items():
        if path and Path(path).is_file():
            out[f"plot_{name}"] = image_md(path, name.replace("_", " "))
            out[f"plot_{name}_path"] = MetadataValue.path(str(path))
    return out


def file_entries(name: str, path: Path | str) -> dict[str, Any]:
    """Path and size of an artefact, so the asset page says where it is and how big."""
    path = Path(path)
    entries: dict[str, Any] = {f"{name}_path": MetadataValue.path(str(path))}
    if path.is_file():
        entries[f"{name}_bytes"] = MetadataValue.int(path.stat().st_size)
    elif path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        entries[f"{name}_files"] = MetadataValue.int(len(files))
        entries[f"{name}_bytes"] = MetadataValue.int(sum(p.stat().st_size for p in files))
    return entries


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> MetadataValue:
    """A Markdown table (renders on the asset page and in check results alike)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return MetadataValue.md("\n".join(lines))


def numeric(values: Mapping[str, Any], prefix: str = "") -> dict[str, MetadataValue]:
    """The numeric entries of a report (bools excluded), as typed metadata for the UI's plots.

    NumPy scalars become plain Python numbers: Dagster's event log cannot serialise them.
    """
    out: dict[str, MetadataValue] = {}
    for key, value in values.items():
        if isinstance(value, (bool, np.bool_)):
            continue
        if isinstance(value, numbers.Integral):
            out[f"{prefix}{key}"] = MetadataValue.int(int(value))
        elif isinstance(value, numbers.Real):
            out[f"{prefix}{key}"] = MetadataValue.float(float(value))
    return out


def values_entries(values: Mapping[str, Any]) -> dict[str, MetadataValue]:
    """A step's plain values as typed metadata: numbers, files (``Path``), JSON (dicts, lists), text."""
    out: dict[str, MetadataValue] = numeric(values)
    for key, value in values.items():
        if key in out or isinstance(value, (bool, np.bool_)):
            continue
        if isinstance(value, Path):
            out[key] = MetadataValue.path(str(value))
        elif isinstance(value, (dict, list)):
            out[key] = MetadataValue.json(value)
        else:
            out[key] = MetadataValue.text(str(value))
    return out


def tracking_entries(step: str, record: StepLog | None) -> dict[str, MetadataValue]:
    """Where a step's MLflow run is and what it registered (or that tracking was off)."""
    if record is None:
        return {f"mlflow_{step}": MetadataValue.text("not recorded: tracking.enabled is false")}
    entries = {
        f"mlflow_{step}_run": MetadataValue.text(record.run_id),
        "mlflow_tracking_uri": MetadataValue.text(record.tracking_uri),
    }
    for fmt, registration in record.registered.items():
        how = "new version" if registration.created else "already registered"
        entries[f"registered_{fmt}"] = MetadataValue.text(
            f"{registration.name} v{registration.version} ({how})"
        )
    return entries
