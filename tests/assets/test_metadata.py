"""Plots embed in the asset page; reports' numbers become metadata Dagster can store."""

from __future__ import annotations

import base64
import re

import numpy as np
from dagster import MetadataValue
from PIL import Image

from assets.metadata import MAX_INLINE_BYTES, PREVIEW_WIDTH, image_md, md_table, numeric, plots


def _embedded(value: MetadataValue) -> tuple[str, bytes]:
    match = re.search(r"data:(image/\w+);base64,([A-Za-z0-9+/=]+)\)", value.value)
    assert match, value.value[:200]
    return match.group(1), base64.b64decode(match.group(2))


def test_a_small_plot_is_embedded_as_the_png_itself(tmp_path):
    path = tmp_path / "curve.png"
    Image.new("RGB", (64, 32), "white").save(path)
    mime, data = _embedded(image_md(path, "curve"))
    assert mime == "image/png" and data == path.read_bytes()


def test_a_large_plot_is_embedded_as_a_smaller_preview(tmp_path):
    path = tmp_path / "samples.png"
    noise = np.random.default_rng(0).integers(0, 256, (900, 2000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    assert path.stat().st_size > MAX_INLINE_BYTES
    mime, data = _embedded(image_md(path, "samples"))
    assert mime == "image/jpeg"
    assert len(data) < path.stat().st_size
    assert Image.open(__import__("io").BytesIO(data)).width == PREVIEW_WIDTH


def test_plots_skips_missing_files_and_links_the_rest(tmp_path):
    path = tmp_path / "pr.png"
    Image.new("RGB", (8, 8)).save(path)
    entries = plots({"pr_curve": path, "samples": tmp_path / "absent.png", "none": None})
    assert set(entries) == {"plot_pr_curve", "plot_pr_curve_path"}


def test_numpy_numbers_become_plain_python_numbers():
    entries = numeric({"a": np.float64(0.5), "b": np.int64(3), "c": True, "d": "text", "e": 2})
    assert set(entries) == {"a", "b", "e"}
    assert type(entries["a"].value) is float and type(entries["b"].value) is int


def test_markdown_table_escapes_pipes():
    table = md_table(["name", "value"], [["a|b", 0.123456], ["c", None]]).value
    assert "a\\|b" in table and "0.1235" in table and table.count("\n") == 3
