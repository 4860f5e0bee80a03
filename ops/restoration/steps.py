"""The steps of a restoration task (SIDD denoising, GOPRO deblurring), one class for all of them.

A task is a :class:`RestorationSteps` built with its data source (how the dataset is made or
found and read, :class:`RestorationData`); everything else (training, evaluation, export,
INT8, engines, gates, the benchmark, the stage table) is the same code for every restoration
task. The task registry (:mod:`ops.tasks`) points at the instance, which offers the steps
module interface the asset factory, CLI and DVC table use.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ops.config import Params
from ops.deploy.benchmark import (
    BackendRow,
    cpu_serving_choice,
    format_table,
    measure_interleaved,
    plot_benchmark,
)
from ops.deploy.export import (
    RestorerMetadata,
    export_onnx,
    parity,
)
from ops.deploy.optimize import CALIBRATION_BATCH_SIZE, QuantizeSettings, quantize_int8
from ops.deploy.roofline import measure_roofline
from ops.deploy.runtime import RESTORER, OnnxRuntimePredictor, Predictor, TorchPredictor
from ops.gates import Gate, all_passed, drop_gate, minimum_gate, skipped_gate
from ops.io import sha256_file, write_json
from ops.layout import TaskLayout
from ops.restoration.evaluate import evaluate_restorer
from ops.restoration.models import architecture_name, restorer_macs
from ops.restoration.nafnet import NAFNet, NAFNetConfig
from ops.restoration.pairs import PairSplit, read_rgb8, write_pair_report
from ops.restoration.training import load_restorer, to_tensor, train_restorer
from ops.stages import CPU_BACKENDS, Plot, Stage, deployable_artefacts
from ops.train import TrainResult

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


class RestorationData(Protocol):
    """What differs between restoration tasks: where the pairs come from and how they are read."""

    # Info keys the dataset report counts and bins by (SIDD: phone, ISO; GOPRO: sequence, blur
    # length); the last one also breaks evaluation figures down (per ISO, per blur length).
    group_keys: tuple[str, ...]
    # The published model (ops.restoration.nafnet.PUBLISHED_SIZES) `benchmark --full-size` times.
    full_size_model: str

    def prepare(self, dataset_cfg: Any) -> None:
        """Generate, download or check the dataset at ``dataset_cfg.root`` (DatasetError if unusable)."""

    def load(self, dataset_cfg: Any, split: str, check_images: bool = True) -> PairSplit:
        """The ``train`` or ``val`` split, validated (every offending item in one DatasetError)."""


def output_psnr(mse: float) -> float:
    """PSNR (dB, data range 1) of one output against another from their mean squared difference."""
    return math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)


class RestorationSteps:
    """The steps module of one restoration task."""

    PARITY_CHECK = (
        "PSNR of the FP32 ONNX model's outputs against PyTorch's reaches validation.min_output_psnr."
    )
    SUMMARY_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
        "dataset": (
            ("train_pairs", "train pairs"),
            ("val_samples", "val samples"),
            ("val_psnr_input", "input PSNR"),
            ("data_version", "data version"),
        ),
        "model": (("psnr", "PSNR"), ("psnr_input", "input"), ("ssim", "SSIM"), ("epochs", "epochs")),
        "onnx": (("onnx_bytes", "bytes"), ("output_psnr", "output PSNR vs pytorch")),
        "validation": (
            ("passed", "gates passed"),
            ("pytorch_psnr", "pytorch PSNR"),
            ("onnx_psnr", "onnx"),
            ("onnx-int8_psnr", "onnx-int8"),
        ),
    }

    def __init__(self, task: str, data: RestorationData) -> None:
        self.task = task
        self.data = data
        self.GATES = {
            "output_psnr_onnx": "PSNR of the FP32 ONNX model's outputs against PyTorch's must reach "
            "validation.min_output_psnr.",
            "psnr_drop_onnx": "PSNR lost by the FP32 ONNX model against PyTorch must stay below "
            "validation.max_psnr_drop_onnx (dB).",
            "psnr_drop_onnx-int8": "PSNR lost by the INT8 ONNX model against PyTorch must stay below "
            "validation.max_psnr_drop_int8 (dB).",
            "psnr_drop_trt-fp16": "PSNR lost by the TensorRT FP16 engine must stay below "
            "validation.max_psnr_drop_tensorrt (skipped, and not blocking, without a GPU).",
            "psnr_drop_trt-int8": "PSNR lost by the TensorRT INT8 engine must stay below "
            "validation.max_psnr_drop_tensorrt (skipped, and not blocking, without a GPU).",
        }

    # --- helpers ---------------------------------------------------------------------------

    def cfg(self, params: Params) -> Any:
        return getattr(params, self.task)

    def layout(self, params: Params) -> TaskLayout:
        return TaskLayout.for_task(params, self.task)

    def split(self, params: Params, name: str, check_images: bool = True) -> PairSplit:
        return self.data.load(self.cfg(params).dataset, name, check_images=check_images)

    def _validation_batches(self, params: Params, count: int) -> list[np.ndarray]:
        """The first ``count`` validation samples as float batches (equal sizes batch together)."""
        split = self.split(params, "val", check_images=False)
        samples = [split.sample(i)[0] for i in range(min(count, len(split)))]
        batches: list[np.ndarray] = []
        for image in samples:
            if batches and batches[-1].shape[2:] == image.shape[:2] and len(batches[-1]) < 8:
                batches[-1] = np.concatenate([batches[-1], to_tensor(image[None]).numpy()])
            else:
                batches.append(to_tensor(image[None]).numpy())
        return batches

    def _bin_key(self) -> str:
        return self.data.group_keys[-1]

    # --- steps -----------------------------------------------------------------------------

    def ingest(self, params: Params) -> dict[str, Any]:
        """Generate (or fetch, or find) the dataset, validate both splits and write their reports."""
        cfg = self.cfg(params)
        self.data.prepare(cfg.dataset)
        layout = self.layout(params)
        return {
            split: write_pair_report(
                self.data.load(cfg.dataset, split), layout.dataset_report, self.data.group_keys
            )
            for split in SPLITS
        }

    def dataset_metadata(self, reports: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path]]:
        values: dict[str, Any] = {}
        plots: dict[str, Path] = {}
        for split, report in reports.items():
            values[f"{split}_pairs"] = report.get("num_pairs", 0)
            values[f"{split}_samples"] = report.get("num_samples", 0)
            degraded = report["degraded_input"]
            if degraded.get("psnr") is not None:
                values[f"{split}_psnr_input"] = degraded["psnr"]
                values[f"{split}_ssim_input"] = degraded["ssim"]
            values[f"{split}_report"] = Path(report["files"]["json"])
            plots[f"samples_{split}"] = Path(report["files"]["png"])
        return values, plots

    def integrity_problems(self, reports: dict[str, Any]) -> tuple[list[str], list[str], list[list[Any]]]:
        """Both splits must hold samples; the files themselves were checked when loading."""
        problems, rows = [], []
        for split, report in reports.items():
            if not report.get("num_samples"):
                problems.append(f"{split}: no samples")
            degraded = report["degraded_input"]
            rows.append(
                [split, report.get("num_pairs", 0), report.get("num_blocks", 0), degraded.get("psnr")]
            )
        return problems, ["split", "pairs", "blocks", "input PSNR dB"], rows

    def train(
        self, params: Params, resume: bool = False, after_epoch: Callable[[int], None] | None = None
    ) -> TrainResult:
        cfg = self.cfg(params)
        return train_restorer(
            self.split(params, "train"),
            cfg.model,
            cfg.train,
            self.layout(params).model_dir,
            resume=resume,
            after_epoch=after_epoch,
        )

    def _evaluate(self, params: Params, predictor: Predictor, split: PairSplit) -> dict[str, Any]:
        cfg, layout = self.cfg(params), self.layout(params)
        return evaluate_restorer(
            predictor,
            split,
            layout.evaluation(predictor.backend),
            layout.metrics(predictor.backend),
            batch_size=cfg.evaluate.batch_size,
            num_sample_images=cfg.evaluate.num_sample_images,
            bin_key=self._bin_key(),
        )

    def evaluate(self, params: Params, split: str = "val") -> dict[str, Any]:
        """Score the trained PyTorch weights on ``split``; metrics in ``metrics/pytorch.json``."""
        bundle = load_restorer(self.layout(params).weights, self.cfg(params).model)
        return self._evaluate(
            params, TorchPredictor(bundle.model, contract=RESTORER), self.split(params, split)
        )

    def _metadata(self, model: Any) -> RestorerMetadata:
        return RestorerMetadata(task=self.task, pad_multiple=int(model.pad_multiple))

    def export(self, params: Params) -> dict[str, Any]:
        """ONNX model (dynamic batch, height and width), checked against PyTorch on validation
        samples; the figures land in ``onnx/parity.json``.

        No torch.export program here (the detector has one): traced with a dynamic height and
        width, torch 2.13 records layout guards that hold either for sizes the network must pad
        or for sizes it need not, never both, so the program would refuse half of all inputs."""
        cfg, layout = self.cfg(params), self.layout(params)
        model = load_restorer(layout.weights, cfg.model).model
        metadata = self._metadata(model)
        export_onnx(model, metadata, layout.onnx, opset=cfg.export.opset)
        batches = self._validation_batches(params, cfg.export.parity_images)
        reference = TorchPredictor(model, contract=RESTORER)
        report = {
            "onnx": parity(reference, OnnxRuntimePredictor(layout.onnx, contract=RESTORER), batches),
        }
        for figures in report.values():
            figures["output_psnr"] = round(output_psnr(figures["max_mse"]), 2)
        write_json(layout.parity, report)
        log.info(
            "parity vs PyTorch: ONNX output PSNR %.1f dB, max |diff| %.2e",
            report["onnx"]["output_psnr"],
            report["onnx"]["max_abs_diff"],
        )
        return {
            "onnx": str(layout.onnx),
            "onnx_bytes": layout.onnx.stat().st_size,
            "onnx_sha256": sha256_file(layout.onnx),
            "output_psnr": report["onnx"]["output_psnr"],
            "parity": report,
        }

    def parity_gate(self, params: Params, report: dict[str, Any]) -> Gate:
        value = report["parity"]["onnx"]["output_psnr"]
        return minimum_gate(
            "output_psnr_onnx",
            value,
            self.cfg(params).validation.min_output_psnr,
            "PSNR (dB, range 1) of the FP32 ONNX outputs against PyTorch's",
        )

    def calibration_batches(self, params: Params) -> list[np.ndarray]:
        """A seeded sample of crops of *training* pairs' degraded images (never validation)."""
        cfg = self.cfg(params)
        split = self.split(params, "train", check_images=False)
        rng = np.random.default_rng(cfg.train.seed)
        size = cfg.quantize.calibration_crop
        crops = []
        for _ in range(cfg.quantize.calibration_images):
            image = read_rgb8(split.pairs[int(rng.integers(len(split.pairs)))].degraded)
            y = int(rng.integers(image.shape[0] - size + 1))
            x = int(rng.integers(image.shape[1] - size + 1))
            crops.append(image[y : y + size, x : x + size])
        tensors = to_tensor(np.stack(crops)).numpy()
        return [
            tensors[i : i + CALIBRATION_BATCH_SIZE] for i in range(0, len(tensors), CALIBRATION_BATCH_SIZE)
        ]

    def quantize_settings(self, params: Params) -> QuantizeSettings:
        """Restorers lose PSNR to quantised activations: convolutions only by default, the
        network's first and last convolution (which see and produce pixels) kept float."""
        cfg = self.cfg(params).quantize
        return QuantizeSettings(
            calibration_method=cfg.calibration_method,
            per_channel=cfg.per_channel,
            keep_input_layers=cfg.keep_first_last_float,
            keep_output_layers=cfg.keep_first_last_float,
            op_types=tuple(cfg.op_types),
            gemm_kernel_min_multiply_adds=cfg.gemm_kernel_min_multiply_adds,
        )

    def quantize(self, params: Params) -> dict[str, Any]:
        """INT8 QDQ model calibrated on training crops; report in ``int8/quantization.json``."""
        layout = self.layout(params)
        report = quantize_int8(
            layout.onnx,
            layout.onnx_int8,
            self.calibration_batches(params),
            self.quantize_settings(params),
            metadata_type=RestorerMetadata,
        ).to_dict()
        report["onnx_bytes"] = layout.onnx_int8.stat().st_size
        report["onnx_sha256"] = sha256_file(layout.onnx_int8)
        write_json(layout.quantization_report, report)
        return report

    def build_engines(self, params: Params) -> dict[str, Any]:
        """TensorRT engines with a height/width profile, or recorded skips (``tensorrt/build.json``)."""
        from ops.deploy import tensorrt

        cfg, layout = self.cfg(params).tensorrt, self.layout(params)
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
                metadata_type=RestorerMetadata,
                spatial_profile=(tuple(cfg.min_size), tuple(cfg.opt_size), tuple(cfg.max_size)),
            )
            outcomes[precision] = {
                "built": isinstance(outcome, tensorrt.EngineBuildResult),
                **outcome.to_dict(),
            }
        write_json(layout.tensorrt_report, outcomes)
        return outcomes

    def deployable_predictors(self, params: Params, threads: int | None = None) -> dict[str, Predictor]:
        """Every deployable artefact on disk as a Predictor, PyTorch first."""
        layout = self.layout(params)
        model = load_restorer(layout.weights, self.cfg(params).model).model
        predictors: dict[str, Predictor] = {"pytorch": TorchPredictor(model, contract=RESTORER)}
        for backend, path in (("onnx", layout.onnx), ("onnx-int8", layout.onnx_int8)):
            if path.is_file():
                predictors[backend] = OnnxRuntimePredictor(path, backend, threads=threads, contract=RESTORER)
        return predictors

    def validate(self, params: Params) -> dict[str, Any]:
        """Score every deployable artefact (PSNR/SSIM) and judge the release gates."""
        cfg, layout = self.cfg(params), self.layout(params)
        gates_cfg = cfg.validation
        split = self.split(params, "val")
        metrics = {
            backend: self._evaluate(params, predictor, split)
            for backend, predictor in self.deployable_predictors(params).items()
        }
        reference = metrics["pytorch"]["psnr"]
        gates: list[Gate] = []
        if layout.parity.is_file():
            value = json.loads(layout.parity.read_text())["onnx"]["output_psnr"]
            gates.append(
                minimum_gate(
                    "output_psnr_onnx",
                    value,
                    gates_cfg.min_output_psnr,
                    "PSNR (dB, range 1) of the FP32 ONNX outputs against PyTorch's",
                )
            )
        else:
            gates.append(
                Gate(
                    "output_psnr_onnx",
                    False,
                    None,
                    gates_cfg.min_output_psnr,
                    ">=",
                    f"{layout.parity} missing: run `visionforge export {self.task}` first",
                )
            )
        for backend, limit in (
            ("onnx", gates_cfg.max_psnr_drop_onnx),
            ("onnx-int8", gates_cfg.max_psnr_drop_int8),
        ):
            if backend in metrics:
                gates.append(
                    drop_gate("psnr", "PSNR dB", backend, reference, metrics[backend]["psnr"], limit)
                )
            else:
                gates.append(
                    Gate(
                        f"psnr_drop_{backend}",
                        False,
                        None,
                        limit,
                        "<",
                        f"no {backend} model: run export and quantize first",
                    )
                )
        builds = json.loads(layout.tensorrt_report.read_text()) if layout.tensorrt_report.is_file() else {}
        for precision in cfg.tensorrt.precisions:
            reason = builds.get(precision, {}).get("reason", "engine not built")
            gates.append(
                skipped_gate(f"psnr_drop_trt-{precision}", gates_cfg.max_psnr_drop_tensorrt, "<", reason)
            )
        unknown = [g.name for g in gates if g.name not in self.GATES]
        assert not unknown, f"gates {unknown} missing from GATES"  # a bug here, not a user error
        summary = {
            "passed": all_passed(gates),
            "gates": [g.to_dict() for g in gates],
            "metrics": {
                b: {k: m[k] for k in ("psnr", "ssim", "psnr_input", "ssim_input", "psnr_gain")}
                for b, m in metrics.items()
            },
            "plots": {b: m["plots"] for b, m in metrics.items()},
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

    def benchmark(self, params: Params, full_size: bool = False) -> dict[str, Any]:
        """Latency of every backend at each configured size, side by side in one run.

        With ``full_size`` the task's published NAFNet-w32 configuration (untrained) is measured instead
        of the trained model: exported and quantised (calibrated on training crops) in a
        temporary directory, speed only."""
        import torch

        cfg, layout = self.cfg(params), self.layout(params)
        bench = cfg.benchmark
        torch.set_num_threads(bench.threads)
        out_dir = layout.benchmark_dir / ("full_size" if full_size else "trained")
        quality = {}
        with tempfile.TemporaryDirectory(prefix="benchmark-") as tmp:
            if full_size:
                torch.manual_seed(cfg.train.seed)
                model = NAFNet(NAFNetConfig.published(self.data.full_size_model)).eval()
                onnx_path, int8_path = Path(tmp) / "model.onnx", Path(tmp) / "model_int8.onnx"
                export_onnx(model, self._metadata(model), onnx_path, opset=cfg.export.opset)
                quantize_int8(
                    onnx_path,
                    int8_path,
                    self.calibration_batches(params),
                    self.quantize_settings(params),
                    metadata_type=RestorerMetadata,
                )
                name = f"{self.data.full_size_model} (untrained)"
            else:
                model = load_restorer(layout.weights, cfg.model).model
                onnx_path, int8_path = layout.onnx, layout.onnx_int8
                name = f"trained {architecture_name(cfg.model)} width {cfg.model.width}"
                for backend in ("pytorch", "onnx", "onnx-int8"):
                    if layout.metrics(backend).is_file():
                        quality[backend] = json.loads(layout.metrics(backend).read_text())["psnr"]
            predictors: dict[str, Predictor] = {
                "pytorch": TorchPredictor(model, contract=RESTORER),
                "pytorch-channels-last": TorchPredictor(
                    copy.deepcopy(model), "pytorch-channels-last", channels_last=True, contract=RESTORER
                ),
            }
            if bench.compile:
                predictors["pytorch-compile"] = TorchPredictor(
                    copy.deepcopy(model), "pytorch-compile", compile=True, contract=RESTORER
                )
            predictors["onnx"] = OnnxRuntimePredictor(
                onnx_path, "onnx", threads=bench.threads, contract=RESTORER
            )
            predictors["onnx-int8"] = OnnxRuntimePredictor(
                int8_path, "onnx-int8", threads=bench.threads, contract=RESTORER
            )
            rows: list[dict[str, Any]] = []
            rng = np.random.default_rng(0)
            roofline = measure_roofline(bench.threads)
            for height, width in bench.sizes:
                batch = rng.random((1, 3, height, width), dtype=np.float32)
                gmacs = restorer_macs(model, height, width) / 1e9
                log.info(
                    "benchmarking %s at %dx%d, %d threads",
                    ", ".join(predictors),
                    height,
                    width,
                    bench.threads,
                )
                timings = measure_interleaved(predictors, batch, bench.warmup, bench.runs)
                size_rows = [BackendRow(b, t, batch_size=1, gflops=2 * gmacs) for b, t in timings.items()]
                for row in size_rows:
                    entry = row.to_dict(size_rows[0], roofline)
                    entry["size"] = f"{height}x{width}"
                    entry["ms_per_megapixel"] = round(row.p50 / (height * width / 1e6), 2)
                    scored = row.backend if row.backend in quality else "pytorch"
                    entry["psnr"] = quality.get(scored)
                    entry["psnr_delta_vs_pytorch"] = (
                        round(quality[scored] - quality["pytorch"], 4)
                        if scored in quality and "pytorch" in quality
                        else None
                    )
                    rows.append(entry)
        columns = (
            ("backend", "backend", "{}"),
            ("size", "size", "{}"),
            ("p50 ms", "latency_p50_ms", "{:.1f}"),
            ("p95 ms", "latency_p95_ms", "{:.1f}"),
            ("ms/MP", "ms_per_megapixel", "{:.1f}"),
            ("GFLOP/s", "gflop_per_s", "{:.0f}"),
            ("of GEMM", "gemm_fraction", "{:.0%}"),
            ("x PyTorch", "speedup_vs_pytorch", "{:.2f}"),
            ("PSNR", "psnr", "{:.2f}"),
            ("delta dB", "psnr_delta_vs_pytorch", "{:+.3f}"),
        )
        title = f"{name}: batch 1, {bench.threads} threads, {bench.runs} interleaved runs per size"
        table = f"{roofline.describe()}\n\n{format_table(rows, columns)}"
        largest = [r for r in rows if r["size"] == f"{bench.sizes[-1][0]}x{bench.sizes[-1][1]}"]
        serving = []
        if not full_size:  # the trained model's files, hashed once for every size
            digests = {"onnx": sha256_file(layout.onnx), "onnx-int8": sha256_file(layout.onnx_int8)}
            for size in (f"{h}x{w}" for h, w in bench.sizes):
                at_size = [r for r in rows if r["size"] == size]
                serving.append(cpu_serving_choice(at_size, size, 1, bench.threads, digests))
        report = {
            "title": title,
            "full_size": full_size,
            "threads": bench.threads,
            "runs": bench.runs,
            "warmup": bench.warmup,
            "sizes": [list(s) for s in bench.sizes],
            "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
            "roofline": roofline.to_dict(),
            "rows": rows,
            "cpu_serving": [choice for choice in serving if choice is not None],
            "absent": {"tensorrt": "restorer engines are not built yet (dynamic-size sidecar)"},
            "table": table,
            "plot": str(plot_benchmark(largest, title, out_dir / "benchmark.png")),
        }
        write_json(out_dir / "benchmark.json", report)
        return report

    # --- what each step reads and writes ---------------------------------------------------

    def stages(self, params: Params) -> list[Stage]:
        t = self.task
        cfg, layout = self.cfg(params), self.layout(params)
        artefacts = deployable_artefacts(params, t)
        root, report = layout.dataset, layout.dataset_report
        generated = cfg.dataset.source == "generate"
        engines = tuple((fmt, path) for fmt, path in artefacts.items() if fmt.startswith("trt-"))
        bench = layout.benchmark_dir / "trained"
        samples = tuple(
            Plot(layout.evaluation(b) / "samples.png", title=f"{b} restorations") for b in CPU_BACKENDS
        )
        return [
            Stage(
                "ingest",
                params=(f"{t}.dataset",),
                deps=() if generated else (root,),
                outs=((root,) if generated else ()) + tuple(report / f"report_{s}.json" for s in SPLITS),
                plots=tuple(Plot(report / f"samples_{s}.png", title=f"sample pairs ({s})") for s in SPLITS),
                description="generate (or fetch, or check) the dataset and write its report",
            ),
            Stage(
                "train",
                params=(f"{t}.model", f"{t}.train"),
                deps=(root,),
                outs=(layout.weights, layout.checkpoint),
                plots=(
                    Plot(layout.model_dir / "history.json", x="epoch", y="loss", title="training loss"),
                    Plot(layout.model_dir / "training_curves.png", title="training curves"),
                ),
                registers=(("pytorch", artefacts["pytorch"]),),
                description=f"train the {t} restorer",
            ),
            Stage(
                "evaluate",
                params=(f"{t}.model", f"{t}.evaluate"),
                deps=(root, layout.weights),
                metrics=(layout.metrics("pytorch"),),
                plots=samples[:1],
                in_dvc=False,
                description="PSNR/SSIM of the PyTorch model beside the degraded input's",
            ),
            Stage(
                "export",
                params=(f"{t}.model", f"{t}.export"),
                deps=(root, layout.weights),
                outs=(layout.onnx,),
                metrics=(layout.parity,),
                registers=(("onnx", artefacts["onnx"]),),
                description="ONNX (dynamic batch, height and width), parity-checked against PyTorch",
            ),
            Stage(
                "quantize",
                params=(f"{t}.model", f"{t}.quantize", f"{t}.train.seed"),
                deps=(root, layout.onnx),
                outs=(layout.onnx_int8,),
                metrics=(layout.quantization_report,),
                registers=(("onnx-int8", artefacts["onnx-int8"]),),
                description="INT8 static quantisation calibrated on training crops",
            ),
            Stage(
                "build-engine",
                params=(f"{t}.tensorrt",),
                deps=(layout.onnx, layout.onnx_int8),
                outs=(layout.tensorrt_dir,),
                registers=engines,
                description="TensorRT engines (a recorded skip without a GPU)",
            ),
            Stage(
                "validate",
                params=(f"{t}.model", f"{t}.evaluate", f"{t}.validation", f"{t}.tensorrt.precisions"),
                deps=(
                    root,
                    layout.weights,
                    layout.onnx,
                    layout.onnx_int8,
                    layout.parity,
                    layout.tensorrt_dir,
                ),
                metrics=(*(layout.metrics(b) for b in CPU_BACKENDS), layout.validation),
                plots=samples,
                description="score every backend (PSNR/SSIM) and judge the release gates",
            ),
            Stage(
                "benchmark",
                params=(f"{t}.model", f"{t}.benchmark"),
                deps=(
                    layout.weights,
                    layout.onnx,
                    layout.onnx_int8,
                    *(layout.metrics(b) for b in CPU_BACKENDS),
                ),
                metrics=(bench / "benchmark.json",),
                plots=(Plot(bench / "benchmark.png", title="latency per backend"),),
                description="latency of every backend at each size, side by side",
            ),
        ]
