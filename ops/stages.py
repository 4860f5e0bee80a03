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
    """The steps of ``task`` in the order a pipeline runs them (the task's steps module says)."""
    from ops.tasks import task_steps

    return task_steps(task).stages(params)


def stage(params: Params, task: str, name: str) -> Stage:
    """One stage of ``task`` by name (raises ``KeyError`` naming the known ones)."""
    for candidate in task_stages(params, task):
        if candidate.name == name:
            return candidate
    known = ", ".join(s.name for s in task_stages(params, task))
    raise KeyError(f"{task} has no step {name!r} (steps: {known})")
