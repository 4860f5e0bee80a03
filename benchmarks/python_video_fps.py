"""The Python video pipeline the C++ detector replaces, timed the way ``visionforge-detect
--benchmark`` times itself: per frame, reading (OpenCV decode), pre-processing (BGR->RGB,
letterbox warp, normalisation: ``ops.detection.data.prepare_images``), inference (ONNX
Runtime, ``ops.deploy.runtime.OnnxRuntimePredictor`` with the given intra-op threads) and decoding
(``ops.detection.evaluate.decode_to_image``). ``--threads`` sets ONNX Runtime's intra-op threads and
torch's (normalisation and decoding run in torch), as the C++ program's ``--threads`` does
for ONNX Runtime.

Warm-up frames are run first and not timed; a video shorter than the frame count is read
again from the start (reopening is not timed), exactly as the C++ benchmark does. Prints one
table: p50/p95/mean latency in milliseconds and FPS (1000 / mean) per stage.

    python -m benchmarks.python_video_fps MODEL.onnx VIDEO.mp4 --frames 200 --threads 2
    build/cpp/visionforge-detect MODEL.onnx VIDEO.mp4 --benchmark 200 --threads 2   # the C++ side
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

try:
    from ops.detection.data import InputNormalizer, prepare_images
except ModuleNotFoundError:  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ops.detection.data import InputNormalizer, prepare_images
from ops.deploy.export import read_onnx_contract
from ops.deploy.runtime import OnnxRuntimePredictor
from ops.detection.evaluate import decode_to_image

STAGES = ("read (decode)", "pre-processing", "inference", "decoding", "end-to-end")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="ONNX model from `visionforge export`")
    parser.add_argument("video", type=Path, help="video file")
    parser.add_argument("--frames", type=int, default=200, help="timed frames (default 200)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed frames first (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--threshold", type=float, default=0.3, help="score threshold (default 0.3)")
    parser.add_argument("--top-k", type=int, default=100, help="peaks decoded per frame (default 100)")
    return parser.parse_args(argv)


class LoopingVideo:
    """Frames of a video, starting over at the end; ``read`` returns BGR uint8."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.capture = self._open()

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise SystemExit(f"cannot open video {self.path}")
        return capture

    def read(self) -> tuple[np.ndarray, float]:
        """The next frame and the seconds spent decoding it (a reopen is not counted)."""
        start = time.perf_counter()
        ok, frame = self.capture.read()
        if not ok:
            self.capture.release()
            self.capture = self._open()
            start = time.perf_counter()
            ok, frame = self.capture.read()
            if not ok:
                raise SystemExit(f"no frame of {self.path} could be read")
        return frame, time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, list[float]]:
    if args.threads:  # the torch parts (normalisation, decoding) get the same threads as ONNX Runtime
        torch.set_num_threads(args.threads)
    meta = read_onnx_contract(args.model).metadata
    predictor = OnnxRuntimePredictor(args.model, threads=args.threads)
    normalizer = InputNormalizer(tuple(meta.mean), tuple(meta.std))
    video = LoopingVideo(args.video)
    timings: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for index in range(args.warmup + args.frames):
        bgr, read_s = video.read()
        t0 = time.perf_counter()
        batch = prepare_images([cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)], meta.input_size, normalizer)
        t1 = time.perf_counter()
        raw = predictor(batch.inputs)
        t2 = time.perf_counter()
        decode_to_image(raw, batch.matrices, batch.sizes, meta.input_size, args.top_k, args.threshold)
        t3 = time.perf_counter()
        if index < args.warmup:
            continue
        for stage, seconds in zip(STAGES, (read_s, t1 - t0, t2 - t1, t3 - t2, read_s + t3 - t0), strict=True):
            timings[stage].append(seconds * 1000)
    return timings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    timings = run(args)
    total_ms = sum(timings["end-to-end"])
    threads = args.threads if args.threads else "default"
    print(f"python benchmark: {args.frames} frames of {args.video}")
    print(
        f"model {args.model} (onnxruntime cpu, {threads} threads), threshold {args.threshold:.2f}, "
        f"top-k {args.top_k}, {args.warmup} warm-up frames"
    )
    print(f"{'stage':<16} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9} {'FPS':>10}")
    for stage in STAGES:
        values = np.array(timings[stage])
        mean = float(values.mean())
        print(
            f"{stage:<16} {np.percentile(values, 50):9.3f} {np.percentile(values, 95):9.3f} "
            f"{mean:9.3f} {1000 / mean if mean > 0 else 0.0:10.1f}"
        )
    print(
        f"end-to-end: {1000 * args.frames / total_ms:.1f} FPS ({args.frames} frames in {total_ms:.1f} ms; "
        "FPS = 1000 / mean latency)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
