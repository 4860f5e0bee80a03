"""Shared test vectors for the C++ detector: what Python computes, for C++ to reproduce.

Writes, into ``--out``:

* ``model.onnx``: a tiny TrafficQuantizerNet (4 classes, 128 px input) with fixed random
  weights, exported by :func:`ops.deploy.export.export_onnx` (the real exporter, metadata included);
* ``images/*.png``: procedural traffic scenes of several sizes and aspect ratios (PNG, so
  Python and C++ decode the same pixels), and per image under ``vectors/`` the network input
  Python builds (``prepare_images``), the ONNX Runtime outputs (``OnnxRuntimePredictor``) as
  raw little-endian float32, plus in ``manifest.json`` the Python decoder's top-K in network
  pixels (``decode_detections``, in torch.topk's order, with flat indices) and the final
  detections in image pixels (``decode_to_image``);
* ``clip.mp4``: a short traffic video (:mod:`ops.detection.video`), ``python_clip.jsonl`` and
  ``python_images.jsonl``: the Python pipeline's detections on it and on ``images/``, for the
  program-level comparison;
* ``bad/``: inputs the program must refuse or survive: a non-ONNX file, a model breaking the
  I/O contract, one without metadata, a non-video, an empty folder, a video with corrupt
  frames, a folder with an unreadable image, engines with foreign or missing sidecars.

    python tests/cpp/make_test_vectors.py --out build/cpp/test_vectors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere (CTest does)
    sys.path.insert(0, str(REPO_ROOT))

from ops.config import TrafficGeneratorConfig  # noqa: E402
from ops.deploy.export import export_onnx, read_onnx_contract  # noqa: E402
from ops.deploy.runtime import OnnxRuntimePredictor  # noqa: E402
from ops.deploy.tensorrt import SIDECAR_SCHEMA_VERSION, EngineSidecar  # noqa: E402
from ops.detection.centernet import decode_detections  # noqa: E402
from ops.detection.coco import read_image_rgb  # noqa: E402
from ops.detection.data import (  # noqa: E402
    InputNormalizer,
    detector_metadata,  # noqa: E402
    prepare_images,
)
from ops.detection.evaluate import decode_to_image  # noqa: E402
from ops.detection.model import TrafficQuantizerNet  # noqa: E402
from ops.detection.scenes import TRAFFIC_CLASSES, render_traffic_scene  # noqa: E402
from ops.detection.video import write_traffic_video  # noqa: E402

INPUT_SIZE = 128
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TOP_K = 100
# Vectors: the evaluation threshold (many detections, so order is tested on long lists).
VECTOR_THRESHOLD = 0.01
# Program runs: a threshold a user would pick for drawing.
PROGRAM_THRESHOLD = 0.3
THREADS = 1
# (width, height) of the test images: square, landscape, portrait, odd sizes.
IMAGE_SIZES = ((128, 128), (160, 120), (96, 144), (201, 99), (257, 190))
CLIP = {"seed": 11, "width": 160, "height": 120, "fps": 10.0, "seconds": 2.0}
CORRUPT_FRAMES = (5, 6)  # zeroed in bad/corrupt.avi
WARP_CASES = 24


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_model(seed: int, **architecture: object) -> TrafficQuantizerNet:
    """The test's detector: small, with output heads re-drawn so scores, sizes and offsets spread.

    Freshly initialised heads predict an almost constant heatmap and zero sizes, which would
    test little; these weights give scores across (0, 1) and boxes of a few cells.
    """
    torch.manual_seed(seed)
    model = TrafficQuantizerNet(
        num_classes=len(TRAFFIC_CLASSES),
        input_size=INPUT_SIZE,
        width_mult=0.25,
        head_width=16,
        **architecture,
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # eval-mode statistics that are not identity
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
        heads = model.heads
        heads.heatmap[-1].weight.normal_(0, 0.8, generator=generator)
        heads.heatmap[-1].bias.fill_(-2.5)
        heads.wh[-1].weight.normal_(0, 0.3, generator=generator)
        heads.wh[-1].bias.fill_(4.0)
        heads.offset[-1].weight.normal_(0, 0.1, generator=generator)
        heads.offset[-1].bias.fill_(0.5)
    return model.eval()


def render_images(folder: Path, seed: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for index, (width, height) in enumerate(IMAGE_SIZES):
        cfg = TrafficGeneratorConfig(
            seed=seed,
            num_train=len(IMAGE_SIZES),
            num_val=1,
            image_width=max(width, 64),
            image_height=max(height, 64),
            min_objects=1,
            max_objects=6,
            jpeg_quality=90,
        )
        image = render_traffic_scene(cfg, "train", index).image
        if image.shape[:2] != (height, width):  # sizes under the renderer's 64 px minimum
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        path = folder / f"{index:03d}_{width}x{height}.png"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def python_detections(
    predictor: OnnxRuntimePredictor, rgb: np.ndarray, threshold: float
) -> tuple[object, dict[str, np.ndarray], list]:
    """The Python pipeline on one RGB image: prepared batch, raw outputs, image detections."""
    batch = prepare_images([rgb], INPUT_SIZE, InputNormalizer(MEAN, STD))
    raw = predictor(batch.inputs)
    decoded = decode_to_image(raw, batch.matrices, batch.sizes, INPUT_SIZE, TOP_K, threshold)
    return batch, raw, decoded


def detections_json(decoded: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[dict]:
    boxes, scores, classes = decoded
    return [
        {"box": [float(v) for v in box], "score": float(score), "class": int(cls)}
        for box, score, cls in zip(boxes, scores, classes, strict=True)
    ]


def write_warp_cases(out: Path, count: int, seed: int) -> list[dict]:
    """Noise images of random sizes and their network inputs: the letterbox warp's arithmetic
    checked on many geometries (noise makes every rounding visible)."""
    folder = out / "warp"
    folder.mkdir()
    rng = np.random.default_rng(seed)
    cases = []
    for index in range(count):
        width, height = (int(v) for v in rng.integers(17, 640, size=2))
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        if index % 2:
            image = cv2.GaussianBlur(image, (0, 0), 1.5)
        path = folder / f"{index:03d}_{width}x{height}.png"
        cv2.imwrite(str(path), image)
        inputs = prepare_images([read_image_rgb(path)], INPUT_SIZE, InputNormalizer(MEAN, STD)).inputs
        target = folder / f"{index:03d}_input.bin"
        np.ascontiguousarray(inputs, dtype="<f4").tofile(target)
        cases.append({"image": str(path.relative_to(out)), "input": str(target.relative_to(out))})
    return cases


def write_vectors(out: Path, model_path: Path, images: list[Path]) -> list[dict]:
    predictor = OnnxRuntimePredictor(model_path, threads=THREADS)
    vectors = out / "vectors"
    vectors.mkdir()
    records = []
    for path in images:
        rgb = read_image_rgb(path)
        batch, raw, decoded = python_detections(predictor, rgb, VECTOR_THRESHOLD)
        stem = path.stem
        files = {}
        for name, array in (("input", batch.inputs), *raw.items()):
            target = vectors / f"{stem}_{name}.bin"
            np.ascontiguousarray(array, dtype="<f4").tofile(target)
            files[name] = {"file": str(target.relative_to(out)), "shape": list(array.shape)}
        heatmap = torch.from_numpy(raw["heatmap"])
        stride = INPUT_SIZE // heatmap.shape[-1]
        boxes, scores, classes = decode_detections(
            heatmap, torch.from_numpy(raw["wh"]), torch.from_numpy(raw["offset"]), TOP_K, stride
        )
        # The flat index of each detection: the same masked top-K decode_detections takes.
        peaks = torch.nn.functional.max_pool2d(heatmap, kernel_size=3, stride=1, padding=1)
        masked = heatmap * (peaks == heatmap).to(heatmap.dtype)
        _, flat = masked.reshape(1, -1).topk(min(TOP_K, masked.numel()))
        score_list = scores[0].tolist()
        ties = sum(1 for a, b in zip(score_list, score_list[1:], strict=False) if a == b)
        records.append(
            {
                "image": str(path.relative_to(out)),
                "width": int(rgb.shape[1]),
                "height": int(rgb.shape[0]),
                "letterbox": [
                    float(batch.matrices[0][0, 0]),
                    float(batch.matrices[0][0, 2]),
                    float(batch.matrices[0][1, 2]),
                ],
                **files,
                "raw_detections": [
                    {"box": [float(v) for v in box], "score": float(s), "class": int(c), "index": int(i)}
                    for box, s, c, i in zip(boxes[0], scores[0], classes[0], flat[0], strict=True)
                ],
                "equal_score_neighbours": ties,
                "detections": detections_json(decoded[0]),
            }
        )
    return records


def python_jsonl(
    predictor: OnnxRuntimePredictor, frames: list[tuple[str, int, np.ndarray]], path: Path
) -> None:
    """The Python pipeline's detections, one JSON line per frame, in the program's format."""
    with path.open("w") as handle:
        for source, index, rgb in frames:
            _, _, decoded = python_detections(predictor, rgb, PROGRAM_THRESHOLD)
            line = {
                "source": source,
                "frame": index,
                "width": int(rgb.shape[1]),
                "height": int(rgb.shape[0]),
                "detections": [
                    {
                        "class": d["class"],
                        "label": TRAFFIC_CLASSES[d["class"]],
                        "score": d["score"],
                        "box": d["box"],
                    }
                    for d in detections_json(decoded[0])
                ],
            }
            handle.write(json.dumps(line) + "\n")


def video_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def write_corrupt_video(frames: list[np.ndarray], path: Path, fps: float) -> None:
    """An MJPEG AVI whose frames CORRUPT_FRAMES have their JPEG data zeroed: FFmpeg cannot decode
    them but the container stays intact, as with a damaged recording."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, frames[0].shape[1::-1])
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 3) if data[i : i + 4] == b"00dc"]  # AVI video chunks
    chunks = [s for s in starts if int.from_bytes(data[s + 4 : s + 8], "little") > 0][: len(frames)]
    for index in CORRUPT_FRAMES:
        start = chunks[index] + 8
        size = int.from_bytes(data[chunks[index] + 4 : chunks[index] + 8], "little")
        data[start : start + size] = bytes(size)
    path.write_bytes(bytes(data))


def write_bad_inputs(out: Path, model_path: Path, images: list[Path], clip_frames: list[np.ndarray]) -> None:
    import onnx
    from onnx import TensorProto, helper

    bad = out / "bad"
    bad.mkdir()
    rng = np.random.default_rng(0)
    (bad / "garbage.onnx").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (bad / "garbage.mp4").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (bad / "empty_dir").mkdir()

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "not_a_detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, INPUT_SIZE, INPUT_SIZE])],
    )
    wrong = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    wrong.ir_version = 9
    onnx.save(wrong, str(bad / "wrong_io.onnx"))

    bare = onnx.load(str(model_path))
    del bare.metadata_props[:]
    onnx.save(bare, str(bad / "no_metadata.onnx"))

    write_corrupt_video(clip_frames, bad / "corrupt.avi", CLIP["fps"])

    broken = bad / "images_with_broken"
    broken.mkdir()
    shutil.copy(images[0], broken / images[0].name)
    (broken / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))

    # Engines: a sidecar written by the Python side for another TensorRT and GPU, and one without.
    engines = bad / "engines"
    engines.mkdir()
    engine = engines / "foreign.engine"
    engine.write_bytes(rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())
    EngineSidecar(
        schema_version=SIDECAR_SCHEMA_VERSION,
        tensorrt_version="10.0.1",
        gpu_name="NVIDIA A100-SXM4-40GB",
        compute_capability="8.0",
        precision="fp16",
        quantization="none",
        input_name="images",
        min_batch=1,
        opt_batch=1,
        max_batch=8,
        input_chw=(3, INPUT_SIZE, INPUT_SIZE),
        onnx_path=str(model_path),
        onnx_sha256=sha256(model_path),
        engine_sha256=sha256(engine),
        engine_bytes=engine.stat().st_size,
        built_at="2026-11-01T12:00:00+00:00",
        metadata=read_onnx_contract(model_path).metadata.to_props(),  # as build_engine writes it
    ).to_json(engine.with_name(engine.name + ".json"))
    (engines / "no_sidecar.engine").write_bytes(b"\0" * 64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to (re)create")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out: Path = args.out
    # Built beside the destination and renamed at the end: CTest never sees half a set.
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model_path = tmp / "model.onnx"
        model = tiny_model(args.seed)
        export_onnx(model, detector_metadata(model, MEAN, STD, INPUT_SIZE, TRAFFIC_CLASSES), model_path)
        images = render_images(tmp / "images", seed=args.seed + 100)
        records = write_vectors(tmp, model_path, images)
        warp_cases = write_warp_cases(tmp, WARP_CASES, seed=args.seed + 200)

        clip = write_traffic_video(tmp / "clip.mp4", **CLIP)
        clip_frames = video_frames(clip)
        predictor = OnnxRuntimePredictor(model_path, threads=THREADS)
        python_jsonl(
            predictor, [(clip.name, i, f) for i, f in enumerate(clip_frames)], tmp / "python_clip.jsonl"
        )
        python_jsonl(
            predictor,
            [(str(p.relative_to(tmp)), i, read_image_rgb(p)) for i, p in enumerate(images)],
            tmp / "python_images.jsonl",
        )
        write_bad_inputs(tmp, model_path, images, clip_frames)

        manifest = {
            "model": "model.onnx",
            "input_size": INPUT_SIZE,
            "mean": MEAN,
            "std": STD,
            "class_names": list(TRAFFIC_CLASSES),
            "top_k": TOP_K,
            "threshold": VECTOR_THRESHOLD,
            "program_threshold": PROGRAM_THRESHOLD,
            "threads": THREADS,
            "clip": {"file": "clip.mp4", "frames": len(clip_frames), **CLIP},
            "corrupt_video": {
                "file": "bad/corrupt.avi",
                "frames": len(clip_frames),
                "corrupt": list(CORRUPT_FRAMES),
            },
            "images": records,
            "warp_cases": warp_cases,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ties = sum(r["equal_score_neighbours"] for r in records)
    print(
        f"wrote {out}: {len(records)} images, {len(clip_frames)}-frame clip, {ties} equal scores side by side"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
