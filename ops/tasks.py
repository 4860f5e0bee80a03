"""The task registry: every task the product runs, and the module that implements its steps.

The asset factory, the CLI, the DVC stage table, MLflow tracking and release, the demo
summary, and the jobs, schedules and sensors all iterate :data:`TASKS`; none of them names
a task. What differs between tasks lives in the task's steps module, which provides:

- ``GATES``: gate name -> what it demands (one blocking asset check each);
- ``PARITY_CHECK``: what the export's parity check demands, in words;
- ``SUMMARY_FIELDS``: per stage, the metadata keys (and labels) the demo summary shows;
- ``ingest(params)`` -> report per split; ``dataset_metadata(reports)`` -> metadata values
  and plots; ``integrity_problems(reports)`` -> what makes the data unusable;
- ``train(params, resume, after_epoch)`` -> :class:`ops.train.TrainResult`;
- ``evaluate(params, split)``, ``export(params)``, ``parity_gate(params, report)``,
  ``quantize(params)``, ``build_engines(params)``, ``validate(params)``,
  ``benchmark(params, full_size)``;
- ``stages(params)``: what each step reads and writes (:mod:`ops.stages`).

Importing this module is cheap (no torch): the CLI builds its argument choices from it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ops.errors import ConfigError


@dataclass(frozen=True)
class TaskSpec:
    """One task: its family (which shared package implements it) and its steps module."""

    name: str
    family: str  # detection | restoration
    steps_module: str  # a module, or module:object for a shared steps class's instance
    # What the trained model is called in the registry: <task>-<model_noun>-<format>.
    model_noun: str
    description: str


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "traffic",
            "detection",
            "ops.detection.traffic",
            "detector",
            "traffic object detection (TrafficQuantizerNet, COCO mAP)",
        ),
        TaskSpec(
            "sidd",
            "restoration",
            "ops.restoration.tasks:SIDD",
            "denoiser",
            "SIDD smartphone image denoising (NAFNet, PSNR/SSIM)",
        ),
        TaskSpec(
            "gopro",
            "restoration",
            "ops.restoration.tasks:GOPRO",
            "deblurrer",
            "GOPRO camera-motion deblurring (NAFNet or a channel-attention transformer, PSNR/SSIM)",
        ),
    )
}


def task_names() -> tuple[str, ...]:
    return tuple(TASKS)


def task_spec(task: str) -> TaskSpec:
    try:
        return TASKS[task]
    except KeyError:
        raise ConfigError(f"unknown task {task!r} (tasks: {', '.join(TASKS)})") from None


def task_steps(task: str) -> Any:
    """The module (or ``module:object``) implementing ``task``'s steps, imported on first use:
    it pulls in torch."""
    module_name, _, attribute = task_spec(task).steps_module.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module
