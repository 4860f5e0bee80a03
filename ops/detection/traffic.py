"""The traffic detection task's steps, each a plain function of :class:`~ops.config.Params`.

The CLI, DVC stages and Dagster assets all call these, so a step means the same thing
wherever it runs.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ops.config import ModelConfig, Params, QuantizeConfig
from ops.deploy.benchmark import (
    BackendRow,
    cpu_serving_choice,
    format_table,
    measure_interleaved,
    plot_benchmark,
)
from ops.deploy.export import (
    ProgramPredictor,
    export_onnx,
    export_program,
    float16_onnx,
    parity,
)
from ops.deploy.optimize import QuantizeSettings, quantize_int8
from ops.deploy.roofline import measure_roofline
from ops.deploy.runtime import OnnxRuntimePredictor, Predictor, TorchPredictor
from ops.detection.coco import load_coco_split, write_dataset_report
from ops.detection.data import (
    InputNormalizer,
    calibration_batches,
    detector_metadata,
    load_input_batches,
)
from ops.detection.evaluate import evaluate_predictor
from ops.detection.model import TrafficQuantizerNet, estimate_gflops
from ops.detection.scenes import generate_traffic_dataset
from ops.detection.training import build_detector, load_detector, train_detector
from ops.errors import DatasetError
from ops.gates import Gate, all_passed, cosine_gate, map_drop_gate, skipped_gate
from ops.io import sha256_file, write_json
from ops.layout import TaskLayout
from ops.stages import CPU_BACKENDS, Plot, Stage, deployable_artefacts
from ops.train import TrainResult

log = logging.getLogger(__name__)
TASK = "traffic"
SPLITS = ("train", "val")
# Every gate ``validate`` can report, with what it demands. The orchestration layer declares
# one asset check per gate before the first run, so the list lives here, beside the judge.
GATES = {
    "output_cosine_onnx": "Lowest cosine similarity of the FP32 ONNX model's outputs to PyTorch's "
    "must reach validation.min_output_cosine.",
    "map50_drop_onnx": "mAP@0.5 lost by the FP32 ONNX model against PyTorch must stay below "
    "validation.max_map50_drop_onnx.",
    "map50_drop_onnx-int8": "mAP@0.5 lost by the INT8 ONNX model against PyTorch must stay below "
    "validation.max_map50_drop_onnx.",
    "map50_drop_trt-fp16": "mAP@0.5 lost by the TensorRT FP16 engine against PyTorch must stay below "
    "validation.max_map50_drop_tensorrt (skipped, and not blocking, without a GPU).",
    "map50_drop_trt-int8": "mAP@0.5 lost by the TensorRT INT8 engine against PyTorch must stay below "
    "validation.max_map50_drop_tensorrt (skipped, and not blocking, without a GPU).",
}


PARITY_CHECK = (
    "Lowest cosine similarity of the ONNX outputs to PyTorch's reaches validation.min_output_cosine."
)
# What the demo's summary shows per stage of this task: (metadata key, label).
SUMMARY_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "dataset": (
        ("train_images", "train images"),
        ("train_annotations", "train boxes"),
        ("val_images", "val images"),
        ("data_version", "data version"),
    ),
    "model": (("map50", "mAP@0.5"), ("map50_95", "mAP@[.5:.95]"), ("epochs", "epochs"), ("device", "on")),
    "onnx": (("onnx_bytes", "bytes"), ("onnx_min_cosine", "min cosine")),
    "validation": (
        ("passed", "gates passed"),
        ("pytorch_map50", "pytorch mAP@0.5"),
        ("onnx_map50", "onnx"),
        ("onnx-int8_map50", "onnx-int8"),
    ),
}


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


def dataset_metadata(reports: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path]]:
    """What the dataset asset shows per split: counts, class balance, the report file; and plots."""
    values: dict[str, Any] = {}
    plots: dict[str, Path] = {}
    for split, report in reports.items():
        values[f"{split}_images"] = report["num_images"]
        values[f"{split}_annotations"] = report["num_annotations"]
        values[f"{split}_objects_per_image_mean"] = float(report["objects_per_image"]["mean"])
        values[f"{split}_class_counts"] = report["class_counts"]
        values[f"{split}_report"] = Path(report["files"]["json"])
        plots[f"box_sizes_{split}"] = Path(report["files"]["png"])
    return values, plots


def integrity_problems(reports: dict[str, Any]) -> tuple[list[str], list[str], list[list[Any]]]:
    """Why the dataset cannot be trained on (both splits need boxes, every class training boxes),
    and a table of the splits (header, rows) for the integrity check."""
    problems, rows = [], []
    for split, report in reports.items():
        counts = report["class_counts"]
        if report["num_images"] == 0 or report["num_annotations"] == 0:
            problems.append(f"{split}: {report['num_images']} images, {report['num_annotations']} boxes")
        missing = sorted(name for name, count in counts.items() if count == 0)
        if split == "train" and missing:
            problems.append(f"train: no boxes of class {', '.join(missing)}")
        rows.append([split, report["num_images"], report["num_annotations"], report["truncated_boxes"]])
    return problems, ["split", "images", "boxes", "boxes cut by the border"], rows


def train(
    params: Params, resume: bool = False, after_epoch: Callable[[int], None] | None = None
) -> TrainResult:
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


def _validation_batches(
    params: Params, count: int, batch_size: int = 8, model_cfg: ModelConfig | None = None
) -> list[np.ndarray]:
    """The first ``count`` validation images, pre-processed as at inference for ``model_cfg``
    (default: the configured model)."""
    model_cfg = model_cfg or params.traffic.model
    split = load_coco_split(params.traffic.dataset.root, "val", check_images=False)
    normalizer = InputNormalizer(model_cfg.mean, model_cfg.std)
    return load_input_batches(split.images[:count], model_cfg.input_size, normalizer, batch_size)


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
    export_program(bundle.model, metadata, layout.program)
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


def parity_gate(params: Params, report: dict[str, Any]) -> Gate:
    """The export's parity check: the FP32 ONNX outputs point the same way as PyTorch's."""
    min_cosine = report["parity"]["onnx"]["min_cosine"]
    return cosine_gate("onnx", min_cosine, params.traffic.validation.min_output_cosine)


def quantize_settings(cfg: QuantizeConfig) -> QuantizeSettings:
    """The detector's quantisation: every supported operator, the heads' last layers optionally
    float, the wider convolutions on ONNX Runtime's GEMM kernel."""
    return QuantizeSettings(
        calibration_method=cfg.calibration_method,
        per_channel=cfg.per_channel,
        exclude_nodes=tuple(cfg.exclude_nodes),
        keep_output_layers=cfg.keep_outputs_float,
        gemm_kernel_min_multiply_adds=cfg.gemm_kernel_min_multiply_adds,
    )


def quantize(params: Params) -> dict[str, Any]:
    """INT8 QDQ model calibrated on training images; report in ``int8/quantization.json``."""
    layout = TaskLayout.for_task(params, TASK)
    cfg = params.traffic.quantize
    train_split = load_coco_split(params.traffic.dataset.root, "train", check_images=False)
    batches = calibration_batches(
        train_split, params.traffic.model, cfg.calibration_images, seed=params.traffic.train.seed
    )
    report = quantize_int8(layout.onnx, layout.onnx_int8, batches, quantize_settings(cfg)).to_dict()
    report["onnx_bytes"] = layout.onnx_int8.stat().st_size
    report["onnx_sha256"] = sha256_file(layout.onnx_int8)
    write_json(layout.quantization_report, report)
    return report


def build_engines(params: Params) -> dict[str, Any]:
    """TensorRT engines (FP16 from the FP32 ONNX, INT8 from the QDQ ONNX), or recorded skips.

    The outcome of every requested precision lands in ``tensorrt/build.json``; a skipped
    build (no GPU, no TensorRT) says why and never leaves an engine-looking file behind.
    """
    from ops.deploy import tensorrt

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
            from ops.deploy.tensorrt import TensorRTPredictor

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
    unknown = [g.name for g in gates if g.name not in GATES]
    assert not unknown, f"gates {unknown} missing from GATES"  # a bug here, not a user error
    summary = {
        "passed": all_passed(gates),
        "gates": [g.to_dict() for g in gates],
        "metrics": {b: {k: m[k] for k in ("map50", "map50_95")} for b, m in metrics.items()},
        "plots": {
            b: {name: str(layout.evaluation(b) / f"{name}.png") for name in ("pr_curve", "samples")}
            for b in metrics
        },
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


def _benchmark_predictors(
    model: TrafficQuantizerNet, onnx_path: Path, int8_path: Path, params: Params, engines: list[Path]
) -> tuple[dict[str, Predictor], dict[str, str]]:
    """Every backend this machine can run, with the same thread count; and why others are absent."""
    cfg = params.traffic.benchmark
    predictors: dict[str, Predictor] = {
        "pytorch": TorchPredictor(model),
        "pytorch-channels-last": TorchPredictor(
            copy.deepcopy(model), "pytorch-channels-last", channels_last=True
        ),
    }
    if cfg.compile:
        predictors["pytorch-compile"] = TorchPredictor(
            copy.deepcopy(model), "pytorch-compile", channels_last=True, compile=True
        )
    predictors["onnx"] = OnnxRuntimePredictor(onnx_path, "onnx", threads=cfg.threads)
    predictors["onnx-int8"] = OnnxRuntimePredictor(int8_path, "onnx-int8", threads=cfg.threads)
    absent: dict[str, str] = {}
    import onnxruntime as ort
    import torch

    if torch.cuda.is_available():
        predictors["pytorch-cuda"] = TorchPredictor(copy.deepcopy(model), "pytorch-cuda", device="cuda")
        predictors["pytorch-cuda-fp16"] = TorchPredictor(
            copy.deepcopy(model), "pytorch-cuda-fp16", device="cuda", half=True
        )
    else:
        absent["pytorch-cuda"] = "no CUDA device"
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        cuda = ("CUDAExecutionProvider", "CPUExecutionProvider")
        predictors["onnx-cuda"] = OnnxRuntimePredictor(onnx_path, "onnx-cuda", providers=cuda)
        fp16_path = float16_onnx(onnx_path, onnx_path.with_name(onnx_path.stem + "_fp16.onnx"))
        predictors["onnx-cuda-fp16"] = OnnxRuntimePredictor(fp16_path, "onnx-cuda-fp16", providers=cuda)
    else:
        absent["onnx-cuda"] = (
            "onnxruntime has no CUDAExecutionProvider here (needs onnxruntime-gpu and a GPU)"
        )
    from ops.deploy import tensorrt

    reason = tensorrt.tensorrt_unavailable_reason()
    for engine in engines:
        if reason is None and engine.is_file():
            predictor = tensorrt.TensorRTPredictor(engine)
            predictors[predictor.backend] = predictor
    if reason is not None:
        absent["tensorrt"] = reason
    return predictors, absent


def full_size_model_config(model_cfg: ModelConfig) -> ModelConfig:
    """The seed's architecture (512x512, width 1.0, stride-4 decoder without skips): what
    ``--full-size`` measures, with the rest of ``model_cfg`` (normalisation, backbone)."""
    return model_cfg.model_copy(
        update={
            "input_size": 512,
            "width_mult": 1.0,
            "head_width": 64,
            "upsample": (True, True, True),
            "decoder_skips": False,
        }
    )


def benchmark(params: Params, full_size: bool = False) -> dict[str, Any]:
    """Latency of every available backend side by side, plus each one's mAP and file size.

    With ``full_size`` the seed's architecture (512x512, width 1.0) is measured instead of
    the trained model: it is exported and quantised (calibrated on training images) in a
    temporary directory, and has no accuracy columns since it is untrained.
    """
    import torch

    cfg = params.traffic.benchmark
    layout = TaskLayout.for_task(params, TASK)
    torch.set_num_threads(cfg.threads)
    out_dir = layout.benchmark_dir / ("full_size" if full_size else "trained")
    with tempfile.TemporaryDirectory(prefix="benchmark-") as tmp:
        if full_size:
            train_split = load_coco_split(params.traffic.dataset.root, "train", check_images=False)
            model_cfg = full_size_model_config(params.traffic.model)
            torch.manual_seed(params.traffic.train.seed)
            model = build_detector(model_cfg, len(train_split.class_names)).eval()
            onnx_path, int8_path = Path(tmp) / "model.onnx", Path(tmp) / "model_int8.onnx"
            metadata = detector_metadata(
                model, model_cfg.mean, model_cfg.std, model_cfg.input_size, train_split.class_names
            )
            export_onnx(model, metadata, onnx_path, opset=params.traffic.export.opset)
            batches = calibration_batches(
                train_split, model_cfg, params.traffic.quantize.calibration_images, params.traffic.train.seed
            )
            quantize_int8(onnx_path, int8_path, batches, quantize_settings(params.traffic.quantize))
            engines: list[Path] = []
        else:
            model_cfg = params.traffic.model
            model = load_detector(layout.weights, model_cfg).model
            onnx_path, int8_path = layout.onnx, layout.onnx_int8
            engines = [layout.engine(p) for p in params.traffic.tensorrt.precisions]
        gflops = estimate_gflops(model, model_cfg.input_size)
        predictors, absent = _benchmark_predictors(model, onnx_path, int8_path, params, engines)
        batch = _validation_batches(params, cfg.batch_size, cfg.batch_size, model_cfg)[0]
        log.info("benchmarking %s at batch %d, %d threads", ", ".join(predictors), len(batch), cfg.threads)
        roofline = measure_roofline(cfg.threads)
        timings = measure_interleaved(predictors, batch, cfg.warmup, cfg.runs)
        sizes = {"onnx": onnx_path.stat().st_size, "onnx-int8": int8_path.stat().st_size}
    weights_bytes = None if full_size else layout.weights.stat().st_size
    rows: list[BackendRow] = []
    for backend, latencies in timings.items():
        row = BackendRow(backend, latencies, batch_size=len(batch), gflops=gflops)
        row.size_bytes = sizes.get(backend.removesuffix("-cuda").removesuffix("-cuda-fp16"), weights_bytes)
        if backend.startswith("trt-"):
            row.size_bytes = layout.engine(backend.removeprefix("trt-")).stat().st_size
        if not full_size:
            # Baselines that run PyTorch's own weights share its accuracy; artefacts have their own.
            scored = backend if layout.metrics(backend).is_file() else "pytorch"
            if layout.metrics(scored).is_file():
                metrics = json.loads(layout.metrics(scored).read_text())
                row.map50, row.map50_95 = metrics["map50"], metrics["map50_95"]
                row.note = "" if scored == backend else "accuracy of the pytorch weights"
        rows.append(row)
    reference = rows[0]
    table_rows = [row.to_dict(reference, roofline) for row in rows]
    title = (
        f"{'seed architecture 512x512, width 1.0 (untrained)' if full_size else 'trained model'}: "
        f"batch {len(batch)}, {cfg.threads} threads, {cfg.runs} interleaved runs"
    )
    table = f"{roofline.describe()}\n\n{format_table(table_rows)}"
    serving = None
    if not full_size:  # the trained model's files: the full-size ones are gone with the temporary directory
        size = f"{model_cfg.input_size}x{model_cfg.input_size}"
        digests = {"onnx": sha256_file(onnx_path), "onnx-int8": sha256_file(int8_path)}
        serving = cpu_serving_choice(table_rows, size, len(batch), cfg.threads, digests)
    report = {
        "title": title,
        "full_size": full_size,
        "input_size": model_cfg.input_size,
        "width_mult": model_cfg.width_mult,
        "threads": cfg.threads,
        "batch_size": len(batch),
        "runs": cfg.runs,
        "warmup": cfg.warmup,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "roofline": roofline.to_dict(),
        "rows": table_rows,
        "cpu_serving": [serving] if serving else [],
        "absent": absent,
        "table": table,
        "plot": str(plot_benchmark(table_rows, title, out_dir / "benchmark.png")),
    }
    write_json(out_dir / "benchmark.json", report)
    return report


def prune(params: Params) -> dict[str, Any]:
    """Structured channel pruning of the trained model, a short fine-tune, and what it changed.

    Writes ``pruned/model.onnx`` and ``pruned/model.pt2`` and ``pruned/report.json``:
    parameters, GFLOPs, latency (PyTorch and ONNX Runtime, original vs pruned, interleaved)
    and mAP@0.5 before pruning, right after it, and after the fine-tune.
    """
    import torch

    from ops.deploy.prune import prune_channels
    from ops.detection.training import detector_training_data
    from ops.train import fit

    layout = TaskLayout.for_task(params, TASK)
    cfg, model_cfg = params.traffic.prune, params.traffic.model
    out_dir = layout.pruned_dir
    bundle = load_detector(layout.weights, model_cfg)
    val = load_coco_split(params.traffic.dataset.root, "val")

    def map50(predictor: Predictor, name: str) -> float:
        summary = evaluate_predictor(
            predictor,
            val,
            model_cfg,
            params.traffic.evaluate,
            out_dir / "eval" / name,
            out_dir / f"{name}.json",
        )
        return summary["map50"]

    original = copy.deepcopy(bundle.model)
    map_original = map50(TorchPredictor(original), "original")
    model = bundle.model
    summary = prune_channels(model, model_cfg.input_size, cfg.ratio)
    map_pruned = map50(TorchPredictor(model, "pytorch-pruned"), "pruned_before_finetune")
    if cfg.finetune_epochs:
        train_split = load_coco_split(params.traffic.dataset.root, "train", check_images=False)
        finetune_cfg = params.traffic.train.model_copy(
            # No weight averaging: over a short fine-tune the average would still hold much of the
            # freshly pruned, broken network (measured: mAP@0.5 0.016 after 2 epochs with EMA).
            update={
                "epochs": cfg.finetune_epochs,
                "lr": cfg.finetune_lr,
                "warmup_epochs": 0.0,
                "ema_decay": 0.0,
            }
        )
        dataset, loss_fn = detector_training_data(train_split, model_cfg, finetune_cfg, model.output_stride)
        signature = {"architecture": "TrafficQuantizerNet-pruned", **summary.to_dict()}
        model = (
            fit(
                model,
                dataset,
                loss_fn,
                finetune_cfg,
                out_dir / "checkpoints" / "last.pt",
                signature,
                prepare_inputs=InputNormalizer(model_cfg.mean, model_cfg.std),
            )
            .model.cpu()
            .eval()
        )
    metadata = detector_metadata(
        model, model_cfg.mean, model_cfg.std, model_cfg.input_size, bundle.class_names
    )
    onnx_path = export_onnx(model, metadata, out_dir / "model.onnx", opset=params.traffic.export.opset)
    program_path = export_program(model, metadata, out_dir / "model.pt2")
    map_finetuned = map50(OnnxRuntimePredictor(onnx_path, "onnx-pruned"), "pruned")

    threads = params.traffic.benchmark.threads
    torch.set_num_threads(threads)
    batch = _validation_batches(params, 1, batch_size=1)[0]
    predictors: dict[str, Predictor] = {
        "pytorch": TorchPredictor(original),
        "pytorch-pruned": TorchPredictor(model, "pytorch-pruned"),
    }
    if layout.onnx.is_file():
        predictors["onnx"] = OnnxRuntimePredictor(layout.onnx, threads=threads)
    predictors["onnx-pruned"] = OnnxRuntimePredictor(onnx_path, "onnx-pruned", threads=threads)
    timings = measure_interleaved(
        predictors, batch, params.traffic.benchmark.warmup, params.traffic.benchmark.runs
    )
    latency = {name: round(float(np.median(ms)), 2) for name, ms in timings.items()}
    report = {
        **summary.to_dict(),
        "finetune_epochs": cfg.finetune_epochs,
        "map50_original": map_original,
        "map50_pruned_before_finetune": map_pruned,
        "map50_pruned": map_finetuned,
        "latency_p50_ms": latency,
        "threads": threads,
        "onnx": str(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        "program": str(program_path),
    }
    write_json(out_dir / "report.json", report)
    return report


def stages(params: Params) -> list[Stage]:
    """What each step reads and writes: the DVC stages and MLflow runs of this task."""
    layout = TaskLayout.for_task(params, TASK)
    cfg = params.traffic
    artefacts = deployable_artefacts(params, TASK)
    root = layout.dataset
    report = layout.dataset_report
    generated = cfg.dataset.source == "generate"
    engines = tuple((fmt, path) for fmt, path in artefacts.items() if fmt.startswith("trt-"))
    history = layout.model_dir / "history.json"
    bench = layout.benchmark_dir / "trained"
    return [
        Stage(
            "ingest",
            params=("traffic.dataset",),
            deps=() if generated else (root,),
            outs=((root,) if generated else ())
            + tuple(report / f"report_{s}.json" for s in ("train", "val")),
            plots=tuple(
                Plot(report / f"box_sizes_{s}.png", title=f"box sizes ({s})") for s in ("train", "val")
            ),
            description="generate (or check) the dataset and write its report",
        ),
        Stage(
            "train",
            params=("traffic.model", "traffic.train"),
            deps=(root,),
            outs=(layout.weights, layout.checkpoint),
            plots=(
                Plot(history, x="epoch", y="loss", title="training loss"),
                Plot(layout.model_dir / "training_curves.png", title="training curves"),
            ),
            registers=(("pytorch", artefacts["pytorch"]),),
            description="train the detector",
        ),
        Stage(
            # validate scores PyTorch again (into the same files), so evaluate is no DVC stage
            "evaluate",
            params=("traffic.model", "traffic.evaluate"),
            deps=(root, layout.weights),
            outs=(layout.evaluation("pytorch") / "detections.json",),
            metrics=(layout.metrics("pytorch"),),
            plots=_eval_plots(layout, ("pytorch",)),
            in_dvc=False,
            description="mAP of the PyTorch model",
        ),
        Stage(
            "export",
            params=("traffic.model", "traffic.export"),
            deps=(root, layout.weights),
            outs=(layout.onnx, layout.program),
            metrics=(layout.parity,),
            registers=(("onnx", artefacts["onnx"]),),
            description="ONNX and torch.export, parity-checked against PyTorch",
        ),
        Stage(
            "quantize",
            params=("traffic.model", "traffic.quantize", "traffic.train.seed"),
            deps=(root, layout.onnx),
            outs=(layout.onnx_int8,),
            metrics=(layout.quantization_report,),
            registers=(("onnx-int8", artefacts["onnx-int8"]),),
            description="INT8 static quantisation",
        ),
        Stage(
            "build-engine",
            params=("traffic.tensorrt",),
            deps=(layout.onnx, layout.onnx_int8),
            outs=(layout.tensorrt_dir,),  # engines where a GPU built them, always build.json
            registers=engines,
            description="TensorRT engines (a recorded skip without a GPU)",
        ),
        Stage(
            "validate",
            params=("traffic.model", "traffic.evaluate", "traffic.validation", "traffic.tensorrt.precisions"),
            deps=(root, layout.weights, layout.onnx, layout.onnx_int8, layout.parity, layout.tensorrt_dir),
            outs=tuple(layout.evaluation(b) / "detections.json" for b in CPU_BACKENDS),
            metrics=(*(layout.metrics(b) for b in CPU_BACKENDS), layout.validation),
            plots=_eval_plots(layout, CPU_BACKENDS),
            description="score every backend and judge the release gates",
        ),
        Stage(
            "benchmark",
            params=("traffic.model", "traffic.benchmark"),
            deps=(
                root,
                layout.weights,
                layout.onnx,
                layout.onnx_int8,
                layout.tensorrt_dir,
                *(layout.metrics(b) for b in CPU_BACKENDS),
            ),
            metrics=(bench / "benchmark.json",),
            plots=(Plot(bench / "benchmark.png", title="latency per backend"),),
            description="latency of every backend side by side",
        ),
        Stage(
            "prune",
            params=(
                "traffic.model",
                "traffic.prune",
                "traffic.train",
                "traffic.evaluate",
                "traffic.export.opset",
                "traffic.benchmark",
            ),
            deps=(root, layout.weights, layout.onnx),
            outs=(layout.pruned_dir / "model.onnx", layout.pruned_dir / "model.pt2"),
            metrics=(layout.pruned_dir / "report.json",),
            description="structured channel pruning and what it changes",
        ),
    ]


def _eval_plots(layout: TaskLayout, backends: tuple[str, ...]) -> tuple[Plot, ...]:
    return tuple(
        Plot(layout.evaluation(b) / name, title=f"{b} {name.removesuffix('.png').replace('_', ' ')}")
        for b in backends
        for name in ("pr_curve.png", "samples.png")
    )
