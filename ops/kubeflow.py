"""The pipeline for Kubeflow Pipelines v2, compiled offline from the stage table ``dvc.yaml`` comes from.

One container component per step of :func:`ops.stages.task_stages` that DVC runs, plus the
release (``visionforge promote``). Each runs ``visionforge <step> <task> --pipeline-run <KFP job
id>`` in the project's image, so its pod downloads its inputs from S3 and uploads its outputs
there (:mod:`ops.handoff`), and MLflow groups the run's steps under the job. A step runs after
the steps that write the files it reads, as DVC orders them.

Every ``params.yaml`` key a step depends on is a pipeline parameter (a JSON string, defaulting to
the value in params.yaml, editable when a run is submitted) passed as ``--set key=<json>``. The
pods get S3 and MLflow credentials from a Kubernetes secret and the deployment's params overlay
from a config map (``docker/k8s/``). Caching is off: a step's result lives under its job's id.
"""

from __future__ import annotations

import inspect
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ops.config import Params
from ops.errors import ConfigError
from ops.handoff import RELEASE_STEP, step_files
from ops.io import atomic_path
from ops.stages import stage, task_stages
from ops.tasks import TASKS, task_spec

# KFP replaces this with the pipeline job's id in each pod (kfp.dsl.PIPELINE_JOB_ID_PLACEHOLDER).
JOB_ID = "{{$.pipeline_job_uuid}}"
OVERLAY_MOUNT = "/etc/visionforge"
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class PipelineOptions:
    image: str = "visionforge:cpu"  # the tag docker/compose.yaml uses
    gpus: int = 0  # per training pod; also the training processes (--nproc)
    secret: str = "visionforge-credentials"  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (+ MLflow's)
    overlay_config_map: str = "visionforge-params"  # holds params.deploy.yaml


@dataclass(frozen=True)
class PipelineStep:
    task: str
    command: str  # visionforge's subcommand
    params: tuple[str, ...]  # dotted params.yaml keys
    after: tuple[str, ...]  # commands of the same task that write what this one reads

    @property
    def name(self) -> str:
        return f"{self.task}-{self.command}"


def _reads_any(reads: Sequence[Path], writes: Sequence[Path]) -> bool:
    """A read path is a written one, lies inside a written directory, or holds a written file."""
    return any(r == w or w in r.parents or r in w.parents for r in reads for w in writes)


def pipeline_steps(params: Params, task: str) -> list[PipelineStep]:
    """``task``'s steps in run order, each after the steps whose files it reads; the release last."""
    task_spec(task)  # an unknown task is a ConfigError naming the known ones
    commands = [entry.name for entry in task_stages(params, task) if entry.in_dvc] + [RELEASE_STEP]
    files = {command: step_files(params, task, command) for command in commands}
    steps: list[PipelineStep] = []
    for index, command in enumerate(commands):
        after = [c for c in commands[:index] if _reads_any(files[command].inputs, files[c].outputs)]
        if command == RELEASE_STEP:
            # The release reads no file validate writes, but moves aliases on its verdict.
            after = list(dict.fromkeys([*after, "validate"]))
            keys: tuple[str, ...] = (f"{task}.release",)
        else:
            keys = stage(params, task, command).params
        steps.append(PipelineStep(task, command, keys, tuple(after)))
    return steps


def parameter_name(key: str) -> str:
    return key.replace(".", "_").replace("-", "_")


def _value_at(params: Params, key: str) -> Any:
    value: Any = params.model_dump(mode="json")
    for part in key.split("."):
        value = value[part]
    return value


def _component(step: PipelineStep, options: PipelineOptions) -> Any:
    from kfp import components

    args: list[Any] = [step.command, step.task, "--pipeline-run", JOB_ID]
    if step.command == "train" and options.gpus > 1:
        args += ["--nproc", str(options.gpus)]
    for key in step.params:
        args += ["--set", {"concat": [f"{key}=", {"inputValue": parameter_name(key)}]}]
    spec = {
        "name": step.name,
        "description": f"visionforge {step.command} {step.task}",
        "inputs": [{"name": parameter_name(key), "type": "String"} for key in step.params],
        "implementation": {"container": {"image": options.image, "command": ["visionforge"], "args": args}},
    }
    return components.load_component_from_text(yaml.safe_dump(spec, sort_keys=False))


def _configure(task: Any, step: PipelineStep, options: PipelineOptions) -> None:
    from kfp import kubernetes

    task.set_caching_options(False)
    task.set_display_name(step.name)
    task.set_env_variable("VISIONFORGE_PARAMS_OVERLAY", f"{OVERLAY_MOUNT}/params.deploy.yaml")
    kubernetes.use_config_map_as_volume(task, options.overlay_config_map, mount_path=OVERLAY_MOUNT)
    kubernetes.use_secret_as_env(
        task, options.secret, secret_key_to_env={key: key for key in CREDENTIAL_KEYS}
    )
    if step.command == "train" and options.gpus > 0:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(options.gpus)


def build_pipeline(params: Params, tasks: Sequence[str], options: PipelineOptions) -> Any:
    """The ``kfp`` pipeline object for ``tasks`` (each task's chain runs beside the others)."""
    from kfp import dsl

    chains = {task: pipeline_steps(params, task) for task in tasks}
    keys = list(dict.fromkeys(key for steps in chains.values() for step in steps for key in step.params))
    defaults = {parameter_name(key): json.dumps(_value_at(params, key)) for key in keys}

    def body(*values: str) -> None:
        arguments = dict(zip(defaults, values, strict=True))
        for steps in chains.values():
            made: dict[str, Any] = {}
            for step in steps:
                component = _component(step, options)
                inputs = {parameter_name(key): arguments[parameter_name(key)] for key in step.params}
                task = component(**inputs)
                _configure(task, step, options)
                for earlier in step.after:
                    task.after(made[earlier])
                made[step.command] = task

    # kfp reads the pipeline's parameters from the function's signature: one per params key.
    body.__signature__ = inspect.Signature(
        [
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=str)
            for name, default in defaults.items()
        ]
    )
    name = "visionforge-" + ("-".join(tasks) if len(tasks) < len(TASKS) else "all")
    description = "visionforge: " + "; ".join(task_spec(task).description for task in tasks)
    return dsl.pipeline(name=name, description=description)(body)


def compile_pipeline(
    params: Params, output: Path, tasks: Sequence[str] | None = None, options: PipelineOptions | None = None
) -> Path:
    """Write the Kubeflow Pipelines v2 YAML of ``tasks`` (default: every task) to ``output``."""
    try:
        from kfp import compiler, kubernetes  # noqa: F401  (kubernetes: checked here, used per step)
    except ImportError as exc:
        raise ConfigError(
            f"visionforge kfp needs the Kubeflow Pipelines SDK ({exc.name} is missing): "
            "pip install 'visionforge[kubeflow]'"
        ) from None

    tasks = list(tasks or TASKS)
    for task in tasks:
        task_spec(task)
    options = options or PipelineOptions()
    if options.gpus < 0:
        raise ConfigError(f"--gpus must be 0 or more (got {options.gpus})")
    pipeline = build_pipeline(params, tasks, options)
    output = Path(output)
    # kfp writes only to a path ending in .yaml or .json: compile aside, then move into place.
    with tempfile.TemporaryDirectory() as scratch, atomic_path(output) as tmp:
        compiled = Path(scratch) / "pipeline.yaml"
        compiler.Compiler().compile(pipeline, str(compiled))
        shutil.copyfile(compiled, tmp)
    return output
