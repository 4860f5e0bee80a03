"""What each step of a task reads and writes: the one table DVC stages and MLflow runs come from.

``dvc.yaml`` (rendered by :mod:`ops.versioning`) and the MLflow run of a step (logged by
:mod:`ops.tracking`) are both derived from :func:`task_stages`, so the parameters a DVC stage
depends on are the ones its MLflow run records, and the files DVC caches are the files MLflow
keeps. Paths come from :class:`~ops.layout.TaskLayout`, the same ones the steps write.

No external system is touched here: this module is plain data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ops.config import Params
from ops.layout import TaskLayout

# Backends validate scores on every machine; TensorRT engines only exist where they were built.
CPU_BACKENDS = ("pytorch", "onnx", "onnx-int8")


@dataclass(frozen=True)
class Plot:
    """A plot DVC renders (``dvc plots show``) and MLflow keeps.

    An image is shown as is. A JSON list of rows is a series: ``x`` names the step field and
    ``y`` the plotted field; MLflow logs every numeric field of every row as a per-step metric.
    """

    path: Path
    x: str | None = None
    y: str | None = None
    title: str = ""

    @property
    def is_series(self) -> bool:
        return self.x is not None


@dataclass(frozen=True)
class Stage:
    """One step: its CLI command (``visionforge <name> <task>``) and what it depends on and makes.

    ``params`` are dotted keys of ``params.yaml`` (a whole section counts as one key);
    ``outs`` are cached by DVC and kept as MLflow artefacts (a directory as its files, except
    the dataset, which is DVC's alone); ``metrics`` are JSON files of numbers; ``registers``
    maps a registry format to the file registered under it. ``in_dvc`` is false for a step whose
    files another stage also writes (two DVC stages cannot own one file).
    """

    name: str
    params: tuple[str, ...]
    deps: tuple[Path, ...] = ()
    outs: tuple[Path, ...] = ()
    metrics: tuple[Path, ...] = ()
    plots: tuple[Plot, ...] = ()
    registers: tuple[tuple[str, Path], ...] = ()
    in_dvc: bool = True
    description: str = ""


def deployable_artefacts(params: Params, task: str) -> dict[str, Path]:
    """Registry format -> the file registered under it (formats are the backend names validate
    reports metrics under). TensorRT engines are listed for every requested precision; whether
    one exists is for the caller to check."""
    layout = TaskLayout.for_task(params, task)
    artefacts = {"pytorch": layout.weights, "onnx": layout.onnx, "onnx-int8": layout.onnx_int8}
    for precision in getattr(params, task).tensorrt.precisions:
        artefacts[f"trt-{precision}"] = layout.engine(precision)
    return artefacts


def task_stages(params: Params, task: str) -> list[Stage]:
    """The steps of ``task`` in the order a pipeline runs them."""
    if task != "traffic":
        raise ValueError(f"no stage table for task {task!r}")
    layout = TaskLayout.for_task(params, task)
    cfg = params.traffic
    artefacts = deployable_artefacts(params, task)
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


def stage(params: Params, task: str, name: str) -> Stage:
    """One stage of ``task`` by name (raises ``KeyError`` naming the known ones)."""
    for candidate in task_stages(params, task):
        if candidate.name == name:
            return candidate
    known = ", ".join(s.name for s in task_stages(params, task))
    raise KeyError(f"{task} has no step {name!r} (steps: {known})")
