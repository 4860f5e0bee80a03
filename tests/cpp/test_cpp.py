"""The C++ detector (cpp/): built with CMake and Ninja, its CTest suite run, and its output
compared with the Python pipeline's on a video and a folder of images.

CTest's first test writes the shared vectors (tests/cpp/make_test_vectors.py: a tiny exported
detector, rendered images and a rendered traffic clip, Python's raw outputs and detections) into
``build/cpp/test_vectors``; the GoogleTest suite checks the decoder, pre-processing and the ONNX
Runtime backend against them and the program's refusals of bad input. Here the program's JSON
lines are compared with the Python pipeline's on the same clip and images.

The toolchain comes from Debian (``make test`` installs it: see the Makefile's apt step); only
a machine without it skips, with the command that installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import pytest
import torch

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

SOURCE = REPO_ROOT / "cpp"
BUILD = REPO_ROOT / "build" / "cpp"
VECTORS = BUILD / "test_vectors"
PROGRAM = BUILD / "visionforge-detect"
APT_HINT = (
    "make cpp (or: apt-get install cmake ninja-build g++ libopencv-dev libgtest-dev nlohmann-json3-dev)"
)
# Headers of the Debian packages the build needs, to name a missing one in the skip reason.
REQUIRED_HEADERS = {
    "libopencv-dev": Path("/usr/include/opencv4/opencv2/core.hpp"),
    "libgtest-dev": Path("/usr/include/gtest/gtest.h"),
    "nlohmann-json3-dev": Path("/usr/include/nlohmann/json.hpp"),
}
BOX_TOLERANCE = 1e-3  # pixels
SCORE_TOLERANCE = 1e-4


def _missing_toolchain() -> str | None:
    missing = [tool for tool in ("cmake", "ninja", "g++") if shutil.which(tool) is None]
    missing += [package for package, header in REQUIRED_HEADERS.items() if not header.is_file()]
    return f"C++ toolchain missing ({', '.join(missing)}): {APT_HINT}" if missing else None


def _run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def built() -> Path:
    reason = _missing_toolchain()
    if reason:
        pytest.skip(reason)
    configure = _run(["cmake", "-S", str(SOURCE), "-B", str(BUILD), "-G", "Ninja"], timeout=300)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    jobs = str(max(1, min(os.cpu_count() or 1, 4)))
    build = _run(["cmake", "--build", str(BUILD), "--parallel", jobs], timeout=1800)
    assert build.returncode == 0, build.stdout[-6000:] + build.stderr[-6000:]
    return BUILD


@pytest.fixture(scope="module")
def ctest_run(built: Path) -> subprocess.CompletedProcess[str]:
    return _run(["ctest", "--test-dir", str(built), "--output-on-failure", "--parallel", "2"], timeout=1800)


def test_ctest_suite_passes(ctest_run: subprocess.CompletedProcess[str]) -> None:
    assert ctest_run.returncode == 0, ctest_run.stdout[-8000:] + ctest_run.stderr[-2000:]
    assert "100% tests passed" in ctest_run.stdout


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _assert_same_detections(cpp: list[dict], python: list[dict]) -> None:
    assert len(cpp) == len(python), f"{len(cpp)} frames from C++, {len(python)} from Python"
    for ours, theirs in zip(cpp, python, strict=True):
        where = f"{theirs['source']} frame {theirs['frame']}"
        assert Path(ours["source"]).name == Path(theirs["source"]).name, where
        assert (ours["frame"], ours["width"], ours["height"]) == (
            theirs["frame"],
            theirs["width"],
            theirs["height"],
        ), where
        assert len(ours["detections"]) == len(theirs["detections"]), where
        for rank, (a, b) in enumerate(zip(ours["detections"], theirs["detections"], strict=True)):
            assert (a["class"], a["label"]) == (b["class"], b["label"]), f"{where} rank {rank}"
            assert a["score"] == pytest.approx(b["score"], abs=SCORE_TOLERANCE), f"{where} rank {rank}"
            assert a["box"] == pytest.approx(b["box"], abs=BOX_TOLERANCE), f"{where} rank {rank}"


def _detect(model: Path, source: Path, detections: Path, *output: str) -> None:
    """The program at the vectors' threshold, top-k and threads; its JSON lines to ``detections``."""
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    run = _run(
        [
            str(PROGRAM),
            str(model),
            str(source),
            "--threshold",
            str(manifest["program_threshold"]),
            "--top-k",
            str(manifest["top_k"]),
            "--threads",
            str(manifest["threads"]),
            "--json",
            str(detections),
            *output,
        ],
        timeout=300,
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(
    ("input_name", "reference"), [("clip.mp4", "python_clip.jsonl"), ("images", "python_images.jsonl")]
)
def test_program_matches_python_pipeline(
    ctest_run: subprocess.CompletedProcess[str], tmp_path: Path, input_name: str, reference: str
) -> None:
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    output = tmp_path / ("annotated.mp4" if input_name.endswith(".mp4") else "annotated")
    detections = tmp_path / "detections.jsonl"
    _detect(VECTORS / manifest["model"], VECTORS / input_name, detections, "--output", str(output))
    _assert_same_detections(_lines(detections), _lines(VECTORS / reference))
    if output.suffix == ".mp4":
        capture = cv2.VideoCapture(str(output))
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        capture.release()
        assert frames == manifest["clip"]["frames"]
    else:
        assert sorted(p.name for p in output.iterdir()) == sorted(
            Path(r["image"]).name for r in manifest["images"]
        )
    assert not list(tmp_path.glob(".*partial*")), "temporary files left behind"


def test_program_runs_an_hrnet_detector_like_the_python_pipeline(
    ctest_run: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    """One output contract for every backbone: the program needs no change for HRNet's ONNX."""
    from ops.deploy.export import export_onnx
    from ops.deploy.runtime import OnnxRuntimePredictor
    from ops.detection.coco import read_image_rgb
    from ops.detection.data import detector_metadata
    from tests.cpp import make_test_vectors as vectors

    manifest = json.loads((VECTORS / "manifest.json").read_text())
    model = vectors.tiny_model(7, backbone="hrnet", hrnet_width=8)
    # HRNet's fused map is larger than the ResNet decoder's: at the vectors' head weights every
    # score saturates at 1.0 (ties in any order); scaled down, 53 distinct scores are above 0.3.
    with torch.no_grad():
        model.heads.heatmap[-1].weight.mul_(0.005)
    model_path = export_onnx(
        model,
        detector_metadata(model, vectors.MEAN, vectors.STD, vectors.INPUT_SIZE, vectors.TRAFFIC_CLASSES),
        tmp_path / "hrnet.onnx",
    )
    images = sorted((VECTORS / "images").iterdir())
    reference = tmp_path / "python.jsonl"
    vectors.python_jsonl(
        OnnxRuntimePredictor(model_path, threads=manifest["threads"]),
        [(str(p.relative_to(VECTORS)), i, read_image_rgb(p)) for i, p in enumerate(images)],
        reference,
    )
    detections = tmp_path / "detections.jsonl"
    _detect(model_path, VECTORS / "images", detections)
    ours, theirs = _lines(detections), _lines(reference)
    assert sum(len(line["detections"]) for line in theirs) > 0, "the reference detects something"
    _assert_same_detections(ours, theirs)


def test_program_survives_corrupt_frames(ctest_run: subprocess.CompletedProcess[str], tmp_path: Path) -> None:
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    corrupt = manifest["corrupt_video"]
    detections = tmp_path / "corrupt.jsonl"
    run = _run(
        [
            str(PROGRAM),
            str(VECTORS / "model.onnx"),
            str(VECTORS / corrupt["file"]),
            "--json",
            str(detections),
        ],
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "cannot be decoded (corrupt data); skipped" in run.stderr
    frames = [line["frame"] for line in _lines(detections)]
    assert frames == [i for i in range(corrupt["frames"]) if i not in corrupt["corrupt"]]
