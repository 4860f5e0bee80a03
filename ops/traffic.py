"""The traffic detection task's steps, each a plain function of :class:`~ops.config.Params`.

The CLI, DVC stages and Dagster assets all call these, so a step means the same thing
wherever it runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ops.config import Params
from ops.data.coco import load_coco_split, read_image_rgb, write_dataset_report
from ops.data.detection import InputNormalizer, prepare_images
from ops.data.traffic_scenes import generate_traffic_dataset
from ops.errors import DatasetError
from ops.evaluate import evaluate_predictor
from ops.export import (
    ProgramPredictor,
    detector_metadata,
    export_onnx,
    export_program,
    parity,
    sha256_file,
)
from ops.gates import Gate, all_passed, cosine_gate, map_drop_gate, skipped_gate
from ops.io import write_json
from ops.layout import TaskLayout
from ops.optimize import calibration_batches, quantize_int8
from ops.runtime import OnnxRuntimePredictor, Predictor, TorchPredictor
from ops.train import TrainDetectorResult, load_detector, train_detector

log = logging.getLogger(__name__)
TASK = "traffic"
SPLITS = ("train", "val")


def ingest(params: Params) -> dict[str, Any]:
    """Generate (or find) the dataset, validate both splits and write their reports."""
    cfg = params.traffic.dataset
    layout = TaskLayout.for_task(params, TASK)
    if cfg.source == "generate":
        generate_traffic_dataset(cfg.root, cfg.generator)
    elif not cfg.root.is_dir():
        raise DatasetError(f"dataset.source is 'local' but {cfg.root} does not exist")
    reports = {}
    for split in SPLITS:
        reports[split] = write_dataset_report(load_coco_split(cfg.root, split), layout.dataset_report)
    return reports


def train(
    params: Params, resume: bool = False, after_epoch: Callable[[int], None] | None = None
) -> TrainDetectorResult:
    layout = TaskLayout.for_task(params, TASK)
    return train_detector(
        params.traffic.dataset.root,
        params.traffic.model,
        params.traffic.train,
        layout.model_dir,
        resume=resume,
        after_epoch=after_epoch,
    )


def evaluate(params: Params, split: str = "val") -> dict[str, Any]:
    """Score the trained PyTorch weights on ``split``; metrics in ``metrics/pytorch.json``."""
    layout = TaskLayout.for_task(params, TASK)
    bundle = load_detector(layout.weights, params.traffic.model)
    coco_split = load_coco_split(params.traffic.dataset.root, split)
    if coco_split.class_names != bundle.class_names:
        raise DatasetError(
            f"{coco_split.annotation_path} has classes {coco_split.class_names} but the model "
            f"{layout.weights} was trained on {bundle.class_names}"
        )
    predictor = TorchPredictor(bundle.model)
    return evaluate_predictor(
        predictor,
        coco_split,
        params.traffic.model,
        params.traffic.evaluate,
        layout.evaluation(predictor.backend),
        layout.metrics(predictor.backend),
    )


def _validation_batches(params: Params, count: int) -> list[np.ndarray]:
    """The first ``count`` validation images, pre-processed as at inference, in batches of 8."""
    model_cfg = params.traffic.model
    split = load_coco_split(params.traffic.dataset.root, "val", check_images=False)
    records = split.images[:count]
    normalizer = InputNormalizer(model_cfg.mean, model_cfg.std)
    return [
        prepare_images(
            [read_image_rgb(r.path) for r in records[i : i + 8]], model_cfg.input_size, normalizer
        ).inputs
        for i in range(0, len(records), 8)
    ]


def export(params: Params) -> dict[str, Any]:
    """ONNX model + torch.export program of the trained weights, each parity-checked on
    validation images against PyTorch; the figures land in ``onnx/parity.json``."""
    layout = TaskLayout.for_task(params, TASK)
    model_cfg = params.traffic.model
    bundle = load_detector(layout.weights, model_cfg)
    metadata = detector_metadata(
        bundle.model, model_cfg.mean, model_cfg.std, model_cfg.input_size, bundle.class_names
    )
    export_onnx(bundle.model, metadata, layout.onnx, opset=params.traffic.export.opset)
    export_program(bundle.model, model_cfg.input_size, layout.program)
    batches = _validation_batches(params, params.traffic.export.parity_images)
    reference = TorchPredictor(bundle.model)
    report = {
        "onnx": parity(reference, OnnxRuntimePredictor(layout.onnx), batches),
        "program": parity(reference, ProgramPredictor(layout.program), batches),
    }
    write_json(layout.parity, report)
    log.info(
        "parity vs PyTorch: ONNX max |diff| %.2e, min cosine %.8f",
        report["onnx"]["max_abs_diff"],
        report["onnx"]["min_cosine"],
    )
    return {
        "onnx": str(layout.onnx),
        "onnx_bytes": layout.onnx.stat().st_size,
        "onnx_sha256": sha256_file(layout.onnx),
        "program": str(layout.program),
        "program_bytes": layout.program.stat().st_size,
        "parity": report,
    }


def quantize(params: Params) -> dict[str, Any]:
    """INT8 QDQ model calibrated on training images; report in ``int8/quantization.json``."""
    layout = TaskLayout.for_task(params, TASK)
    cfg = params.traffic.quantize
    train_split = load_coco_split(params.traffic.dataset.root, "train", check_images=False)
    batches = calibration_batches(
        train_split, params.traffic.model, cfg.calibration_images, seed=params.traffic.train.seed
    )
    report = quantize_int8(layout.onnx, layout.onnx_int8, batches, cfg).to_dict()
    report["onnx_bytes"] = layout.onnx_int8.stat().st_size
    report["onnx_sha256"] = sha256_file(layout.onnx_int8)
    write_json(layout.quantization_report, report)
    return report


def build_engines(params: Params) -> dict[str, Any]:
    """TensorRT engines (FP16 from the FP32 ONNX, INT8 from the QDQ ONNX), or recorded skips.

    The outcome of every requested precision lands in ``tensorrt/build.json``; a skipped
    build (no GPU, no TensorRT) says why and never leaves an engine-looking file behind.
    """
    from ops import tensorrt

    layout = TaskLayout.for_task(params, TASK)
    cfg = params.traffic.tensorrt
    outcomes = {}
    for precision in cfg.precisions:
        source = layout.onnx_int8 if precision == "int8" else layout.onnx
        outcome = tensorrt.build_engine(
            source,
            layout.engine(precision),
            precision,
            timing_cache=layout.tensorrt_dir / "timing.cache",
            opt_batch=cfg.opt_batch,
            max_batch=cfg.max_batch,
            workspace_bytes=cfg.workspace_mib << 20,
        )
        outcomes[precision] = {"built": isinstance(outcome, tensorrt.EngineBuildResult), **outcome.to_dict()}
    write_json(layout.tensorrt_report, outcomes)
    return outcomes


def deployable_predictors(params: Params, threads: int | None = None) -> dict[str, Predictor]:
    """Every deployable artefact that exists on disk, as a Predictor (PyTorch first)."""
    layout = TaskLayout.for_task(params, TASK)
    bundle = load_detector(layout.weights, params.traffic.model)
    predictors: dict[str, Predictor] = {"pytorch": TorchPredictor(bundle.model)}
    if layout.onnx.is_file():
        predictors["onnx"] = OnnxRuntimePredictor(layout.onnx, "onnx", threads=threads)
    if layout.onnx_int8.is_file():
        predictors["onnx-int8"] = OnnxRuntimePredictor(layout.onnx_int8, "onnx-int8", threads=threads)
    for precision in params.traffic.tensorrt.precisions:
        engine = layout.engine(precision)
        if engine.is_file():
            from ops.tensorrt import TensorRTPredictor

            predictors[f"trt-{precision}"] = TensorRTPredictor(engine)
    return predictors


def validate(params: Params) -> dict[str, Any]:
    """Score every deployable artefact with pycocotools and judge the release gates.

    Each backend's metrics land in ``metrics/<backend>.json``; the gates (output parity of
    the FP32 ONNX model, mAP@0.5 lost by each backend against PyTorch) in
    ``validation/gates.json``. A missing TensorRT engine is a skipped gate with its reason.
    """
    layout = TaskLayout.for_task(params, TASK)
    cfg = params.traffic.validation
    split = load_coco_split(params.traffic.dataset.root, "val")
    metrics = {}
    for backend, predictor in deployable_predictors(params).items():
        metrics[backend] = evaluate_predictor(
            predictor,
            split,
            params.traffic.model,
            params.traffic.evaluate,
            layout.evaluation(backend),
            layout.metrics(backend),
        )
    reference = metrics["pytorch"]["map50"]
    gates: list[Gate] = []
    if layout.parity.is_file():
        parity_report = json.loads(layout.parity.read_text())
        gates.append(cosine_gate("onnx", parity_report["onnx"]["min_cosine"], cfg.min_output_cosine))
    else:
        gates.append(
            Gate(
                "output_cosine_onnx",
                False,
                None,
                cfg.min_output_cosine,
                ">=",
                f"{layout.parity} missing: run `visionforge export traffic` first",
            )
        )
    for backend in ("onnx", "onnx-int8"):
        if backend in metrics:
            gates.append(
                map_drop_gate(backend, reference, metrics[backend]["map50"], cfg.max_map50_drop_onnx)
            )
        else:
            gates.append(
                Gate(
                    f"map50_drop_{backend}",
                    False,
                    None,
                    cfg.max_map50_drop_onnx,
                    "<",
                    f"no {backend} model: run export and quantize first",
                )
            )
    builds = json.loads(layout.tensorrt_report.read_text()) if layout.tensorrt_report.is_file() else {}
    for precision in params.traffic.tensorrt.precisions:
        backend = f"trt-{precision}"
        if backend in metrics:
            gates.append(
                map_drop_gate(backend, reference, metrics[backend]["map50"], cfg.max_map50_drop_tensorrt)
            )
        else:
            reason = builds.get(precision, {}).get("reason", "engine not built")
            gates.append(skipped_gate(f"map50_drop_{backend}", cfg.max_map50_drop_tensorrt, "<", reason))
    summary = {
        "passed": all_passed(gates),
        "gates": [g.to_dict() for g in gates],
        "metrics": {b: {k: m[k] for k in ("map50", "map50_95")} for b, m in metrics.items()},
    }
    write_json(layout.validation, summary)
    for gate in gates:
        log.info(
            "gate %-26s %s  value=%s threshold %s %s",
            gate.name,
            "SKIP" if gate.skipped else ("PASS" if gate.passed else "FAIL"),
            gate.value,
            gate.comparison,
            gate.threshold,
        )
    return summary
