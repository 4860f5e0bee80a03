"""One factory builds a task's whole asset chain, so the tasks cannot drift apart.

``build_task_assets("traffic")`` returns the assets ``traffic/dataset`` -> ``traffic/model`` ->
``traffic/onnx`` -> ``traffic/int8`` -> ``traffic/tensorrt`` -> ``traffic/validation`` ->
``traffic/release``. Each one is a thin call into the task's ``ops`` module (``ops.<task>``:
``ingest``, ``train``, ``evaluate``, ``export``, ``quantize``, ``build_engines``, ``validate``)
that turns the step's report into metadata and asset-check results. Decisions (is a gate
passed, what a release needs) are made by ``ops``; here they are only shown and enforced.
Every step is recorded in MLflow through the ``tracking`` resource (``ops.tracking``): a run
nested under this Dagster run's parent run, and its artefact registered; ``<task>/release``
moves the registry aliases.
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Config,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from assets.metadata import (
    file_entries,
    image_md,
    md_table,
    numeric,
    plots,
    tracking_entries,
    values_entries,
)
from assets.resources import ParamsResource, TrackingResource
from ops.distributed import Launch, train_task
from ops.errors import DatasetError
from ops.layout import TaskLayout
from ops.locking import task_lock
from ops.tasks import task_spec, task_steps
from ops.tracking import Tracker
from ops.versioning import dataset_status

STAGES = ("dataset", "model", "onnx", "int8", "tensorrt", "validation", "release")


def check_name(gate_name: str) -> str:
    """Dagster check names allow letters, digits and underscores only (``onnx-int8`` has a dash)."""
    return gate_name.replace("-", "_")


class TrainRunConfig(Config):
    """Per-run options of the training asset (launchpad: ``ops: <task>__model: config:``)."""

    resume: bool = Field(
        default=False,
        description="Continue from the last epoch checkpoint of an interrupted training run "
        "instead of starting over.",
    )
    nproc: int | None = Field(
        default=None,
        ge=1,
        description="Training processes (torchrun, DistributedDataParallel) for this run; "
        "unset: <task>.train.nproc from params. Rank 0's output streams into this run's log.",
    )


class ValidationRunConfig(Config):
    """Per-run options of the validation asset."""

    benchmark: bool = Field(
        default=True,
        description="Also time every backend side by side (latency, FPS) when the task has a "
        "benchmark step; costs a minute on a small CPU.",
    )


def _gate_result(gate: Mapping[str, Any], asset_key: AssetKey, name: str | None = None) -> AssetCheckResult:
    """A gate as a check result: a failed gate fails (ERROR, blocking); a skipped one passes, saying why."""
    status = "skipped" if gate["skipped"] else ("passed" if gate["passed"] else "failed")
    value = gate["value"]
    metadata: dict[str, Any] = {
        "status": MetadataValue.text(status),
        "value": MetadataValue.float(float(value)) if value is not None else MetadataValue.text("n/a"),
        "threshold": MetadataValue.float(float(gate["threshold"])),
        "rule": MetadataValue.text(f"value {gate['comparison']} {gate['threshold']}"),
        "detail": MetadataValue.text(gate["detail"]),
    }
    if gate["skipped"]:
        metadata["note"] = MetadataValue.text(f"skipped: {gate['detail']}")
    return AssetCheckResult(
        asset_key=asset_key,
        check_name=name or check_name(gate["name"]),
        passed=bool(gate["passed"]),
        severity=AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=f"{status}: {gate['detail']}",
    )


def _integrity_result(
    asset_key: AssetKey, problems: list[str], header: list[str], rows: list[list[Any]]
) -> AssetCheckResult:
    """The dataset is usable for training: it loaded cleanly and the task's own rules hold."""
    metadata: dict[str, Any] = {"problems": MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")}
    if rows:
        metadata["splits"] = md_table(header, rows)
    return AssetCheckResult(
        asset_key=asset_key,
        check_name="integrity",
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        metadata=metadata,
        description="; ".join(problems) if problems else "every file valid, the data usable for training",
    )


def build_task_assets(task: str) -> list[AssetsDefinition]:
    """The chain of ``task`` as Dagster assets keyed ``<task>/<stage>``, checks attached."""
    steps = task_steps(task)
    gates = tuple(steps.GATES)  # every gate validate() can report; Dagster needs them up front

    def key(stage: str) -> AssetKey:
        return AssetKey([task, stage])

    common: dict[str, Any] = {"key_prefix": [task], "group_name": task}

    def task_asset(**spec: Any) -> Callable[[Callable[..., MaterializeResult]], AssetsDefinition]:
        """``@asset`` for one stage of the chain, whose computation holds the task's lock
        (:mod:`ops.locking`): a CLI step or another run's step of the same task never writes
        beside it. Dagster reads the computation's parameters through ``functools.wraps``."""

        def decorate(compute: Callable[..., MaterializeResult]) -> AssetsDefinition:
            holder = f"{task}/{spec['name']}"

            @functools.wraps(compute)
            def locked(context: AssetExecutionContext, **kwargs: Any) -> MaterializeResult:
                cfg = kwargs["params"].load(task)
                with task_lock(cfg, task, f"Dagster run {context.run.run_id} ({holder})"):
                    return compute(context, **kwargs)

            return asset(**spec)(locked)

        return decorate

    @task_asset(
        name="dataset",
        kinds={"python"},
        description=f"The {task} dataset in its official layout, validated, with its report. "
        "Data version: a content hash of the dataset directory.",
        check_specs=[
            AssetCheckSpec(
                "integrity",
                asset=key("dataset"),
                blocking=True,
                description="Every file of the dataset is valid and the task's data rules hold "
                "(listed in the check's metadata when they fail).",
            )
        ],
        **common,
    )
    def dataset(
        context: AssetExecutionContext, params: ParamsResource, tracking: TrackingResource
    ) -> MaterializeResult:
        cfg = params.load(task)
        tracker = tracking.open(cfg)
        root = getattr(cfg, task).dataset.root
        try:
            reports, error = steps.ingest(cfg), None
        except DatasetError as exc:  # shown as the failed integrity check, which blocks the chain
            reports, error = None, str(exc)
        status = dataset_status(cfg, task)  # the data version is DVC's hash of the directory
        version = status.version or "missing"
        context.log.info(f"{task}/dataset: data version {version[:12]}")
        if status.state == "modified":  # changed on disk without `dvc commit`
            context.log.warning(f"{task}/dataset: {status.describe()}")
        metadata: dict[str, Any] = {
            "data_version": MetadataValue.text(version),
            "dvc_state": MetadataValue.text(status.state),
            "dvc_detail": MetadataValue.text(status.describe()),
            **file_entries("dataset", root),
        }
        problems, header, rows = [error] if error else [], [], []
        if reports is not None:
            metadata.update(_record(context, tracker, task, "ingest"))
            values, dataset_plots = steps.dataset_metadata(reports)
            metadata.update(values_entries(values))
            metadata.update(plots(dataset_plots))
            task_problems, header, rows = steps.integrity_problems(reports)
            problems += task_problems
        return MaterializeResult(
            metadata=metadata,
            data_version=DataVersion(version),
            check_results=[_integrity_result(key("dataset"), problems, header, rows)],
        )

    @task_asset(
        name="model",
        deps=[dataset],
        kinds={"pytorch"},
        description=f"The trained PyTorch {task_spec(task).model_noun} (released weights) with its "
        "training curves and its quality on the validation split.",
        **common,
    )
    def model(
        context: AssetExecutionContext,
        config: TrainRunConfig,
        params: ParamsResource,
        tracking: TrackingResource,
    ) -> MaterializeResult:
        cfg = params.load(task)
        tracker = tracking.open(cfg)
        epochs = getattr(cfg, task).train.epochs

        def progress(epoch: int) -> None:
            context.log.info(f"{task}/model: epoch {epoch}/{epochs} done")

        launch = Launch(nproc=config.nproc or getattr(cfg, task).train.nproc)
        result = train_task(
            task, cfg, resume=config.resume, after_epoch=progress, launch=launch, on_output=context.log.info
        )
        metrics = steps.evaluate(cfg)
        last = result.history[-1] if result.history else {}
        metadata: dict[str, Any] = {
            "device": MetadataValue.text(str(result.device)),
            "epochs": MetadataValue.int(len(result.history)),
            "num_train_images": MetadataValue.int(result.num_train_images),
            **numeric({k: v for k, v in last.items() if k != "epoch"}, prefix="final_"),
            **numeric(metrics),
            # breakdowns the task's evaluation reports
            # (traffic: per class; sidd: per ISO; gopro: per blur length)
            **{key: MetadataValue.json(value) for key, value in metrics.items() if key.startswith("per_")},
            **file_entries("weights", result.model_path),
            "history": MetadataValue.path(str(result.history_path)),
            **plots({"training_curves": result.curves_path, **metrics.get("plots", {})}),
            **_record(context, tracker, task, "train", "evaluate"),
        }
        return MaterializeResult(metadata=metadata)

    @task_asset(
        name="onnx",
        deps=[model],
        kinds={"onnx"},
        description="The FP32 ONNX model (and the detector's torch.export program) with output parity "
        "against PyTorch on validation images.",
        check_specs=[
            AssetCheckSpec(
                "parity",
                asset=key("onnx"),
                blocking=True,
                description=steps.PARITY_CHECK,
            )
        ],
        **common,
    )
    def onnx(
        context: AssetExecutionContext, params: ParamsResource, tracking: TrackingResource
    ) -> MaterializeResult:
        cfg = params.load(task)
        tracker = tracking.open(cfg)
        report = steps.export(cfg)
        parity = report["parity"]
        gate = steps.parity_gate(cfg, report)
        context.log.info(f"{task}/onnx: parity {gate.value} ({gate.comparison} {gate.threshold})")
        metadata: dict[str, Any] = {
            **file_entries("onnx", report["onnx"]),
            "onnx_sha256": MetadataValue.text(report["onnx_sha256"]),
            **numeric(parity["onnx"], prefix="onnx_"),
            **numeric({k: v for k, v in report.items() if k != "parity"}),
        }
        if "program" in report:  # the detector's torch.export program
            metadata.update(file_entries("program", report["program"]))
            metadata.update(numeric(parity["program"], prefix="program_"))
        metadata.update(_record(context, tracker, task, "export"))
        return MaterializeResult(
            metadata=metadata, check_results=[_gate_result(gate.to_dict(), key("onnx"), "parity")]
        )

    @task_asset(
        name="int8",
        deps=[onnx],
        kinds={"onnx"},
        description="The INT8 (QDQ) ONNX model, statically calibrated on training images.",
        **common,
    )
    def int8(
        context: AssetExecutionContext, params: ParamsResource, tracking: TrackingResource
    ) -> MaterializeResult:
        cfg = params.load(task)
        tracker = tracking.open(cfg)
        report = steps.quantize(cfg)
        layout = TaskLayout.for_task(cfg, task)
        fp32_bytes = layout.onnx.stat().st_size if layout.onnx.is_file() else None
        metadata: dict[str, Any] = {
            **file_entries("onnx_int8", report.get("path", layout.onnx_int8)),
            "onnx_sha256": MetadataValue.text(str(report.get("onnx_sha256", ""))),
            **numeric(report),
            "excluded_nodes": MetadataValue.int(len(report.get("excluded_nodes", []))),
            "convs_on_gemm_kernel": MetadataValue.int(
                sum(choice["kernel"] == "gemm" for choice in report.get("conv_kernels", []))
            ),
            "report": MetadataValue.json(
                {k: v for k, v in report.items() if isinstance(v, (str, int, float, list, dict))}
            ),
        }
        if fp32_bytes:
            metadata["size_vs_fp32"] = MetadataValue.float(report["onnx_bytes"] / fp32_bytes)
        metadata.update(_record(context, tracker, task, "quantize"))
        return MaterializeResult(metadata=metadata)

    @task_asset(
        name="tensorrt",
        deps=[onnx, int8],
        kinds={"tensorrt"},
        description="TensorRT engines (FP16 from the FP32 ONNX, INT8 from the QDQ ONNX). Without a "
        "GPU or TensorRT each build is a recorded skip with its reason, never a fake engine.",
        **common,
    )
    def tensorrt(
        context: AssetExecutionContext, params: ParamsResource, tracking: TrackingResource
    ) -> MaterializeResult:
        cfg = params.load(task)
        tracker = tracking.open(cfg)
        outcomes = steps.build_engines(cfg)
        layout = TaskLayout.for_task(cfg, task)
        rows, metadata = [], {}
        for precision, outcome in outcomes.items():
            built = bool(outcome.get("built"))
            reason = outcome.get("reason", "")
            rows.append([precision, "built" if built else "skipped", reason])
            metadata[f"{precision}_status"] = MetadataValue.text("built" if built else f"skipped: {reason}")
            if built:
                metadata.update(file_entries(f"{precision}_engine", layout.engine(precision)))
            context.log.info(f"{task}/tensorrt {precision}: {'built' if built else 'skipped: ' + reason}")
        built_count = sum(bool(o.get("built")) for o in outcomes.values())
        summary = (
            "built" if built_count == len(outcomes) else ("skipped" if built_count == 0 else "partly built")
        )
        return MaterializeResult(
            metadata={
                "status": MetadataValue.text(summary),
                "engines_built": MetadataValue.int(built_count),
                "builds": md_table(["precision", "outcome", "reason"], rows),
                **metadata,
                "report": MetadataValue.path(str(layout.tensorrt_report)),
                **_record(context, tracker, task, "build-engine"),
            },
        )

    @task_asset(
        name="validation",
        deps=[model, onnx, int8, tensorrt],
        kinds={"python"},
        description="Every deployable artefact scored on the validation split; the release gates "
        "(output parity, quality lost against PyTorch) as blocking asset checks.",
        check_specs=[
            AssetCheckSpec(
                check_name(gate),
                asset=key("validation"),
                blocking=True,
                description=steps.GATES[gate],
            )
            for gate in gates
        ],
        **common,
    )
    def validation(
        context: AssetExecutionContext,
        config: ValidationRunConfig,
        params: ParamsResource,
        tracking: TrackingResource,
    ) -> MaterializeResult:
        cfg = params.load(task)
        tracker = tracking.open(cfg)
        summary = steps.validate(cfg)
        layout = TaskLayout.for_task(cfg, task)
        reported = {gate["name"]: gate for gate in summary["gates"]}
        unchecked = sorted(set(reported) - set(gates))
        if unchecked:  # a gate no check would show could fail unseen: refuse instead
            raise Failure(
                f"{task}/validation: gates {', '.join(unchecked)} have no asset check; add them to "
                f"ops.{task}.GATES",
                metadata={"gates": MetadataValue.json(summary["gates"])},
            )
        results = []
        for gate in gates:
            if gate in reported:
                results.append(_gate_result(reported[gate], key("validation")))
            else:  # validate judges only what params asks for, e.g. the TensorRT precisions listed
                results.append(
                    AssetCheckResult(
                        asset_key=key("validation"),
                        check_name=check_name(gate),
                        passed=True,
                        metadata={"status": "skipped", "note": "skipped: not requested by params"},
                        description="skipped: not requested by params",
                    )
                )
        backends = summary["metrics"]
        metadata: dict[str, Any] = {
            "passed": MetadataValue.bool(bool(summary["passed"])),
            "metrics": md_table(
                ["backend", *next(iter(backends.values()), {}).keys()],
                [[b, *m.values()] for b, m in backends.items()],
            ),
            "gates": md_table(
                ["gate", "status", "value", "rule", "detail"],
                [
                    [
                        g["name"],
                        "skipped" if g["skipped"] else ("passed" if g["passed"] else "FAILED"),
                        g["value"],
                        f"{g['comparison']} {g['threshold']}",
                        g["detail"],
                    ]
                    for g in summary["gates"]
                ],
            ),
            "report": MetadataValue.path(str(layout.validation)),
        }
        for backend, values in backends.items():
            metadata.update(numeric(values, prefix=f"{backend}_"))
            backend_plots = summary.get("plots", {}).get(backend, {})
            metadata.update(plots({f"{backend}_{name}": path for name, path in backend_plots.items()}))
        # recorded whether or not the gates passed: the registry keeps failed validations too
        metadata.update(_record(context, tracker, task, "validate"))
        benchmark: Callable[..., dict[str, Any]] | None = getattr(steps, "benchmark", None)
        if config.benchmark and benchmark is not None:
            metadata.update(_benchmark_metadata(benchmark(cfg)))
            metadata.update(_record(context, tracker, task, "benchmark"))
        return MaterializeResult(metadata=metadata, check_results=results)

    @task_asset(
        name="release",
        deps=[validation],
        kinds={"mlflow"},
        description="The release decision in the MLflow registry: alias 'candidate' on the validated "
        "versions; 'champion' moves only when every gate passed and no format's metric is below its "
        "champion's beyond <task>.release.tolerance. Runs only after the blocking gate checks pass.",
        **common,
    )
    def release(
        context: AssetExecutionContext, params: ParamsResource, tracking: TrackingResource
    ) -> MaterializeResult:
        cfg = params.load(task)
        decision = tracking.open(cfg).promote(task, pipeline_run=context.run.run_id)
        record = decision.to_dict()
        if decision.decision == "blocked":  # e.g. artefacts changed since validation: nothing moved
            raise Failure(
                f"{task}/release blocked, no alias moved: {'; '.join(decision.reasons)}",
                metadata={"record": MetadataValue.json(record)},
            )
        context.log.info(f"{task}/release: {decision.decision} ({'; '.join(decision.reasons)})")
        rows = [
            [fmt, version, decision.champions_before.get(fmt), decision.champions_after.get(fmt)]
            for fmt, version in decision.candidates.items()
        ]
        return MaterializeResult(
            metadata={
                "decision": MetadataValue.text(decision.decision),
                "reasons": MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons)),
                "versions": md_table(["format", "candidate", "champion before", "champion after"], rows),
                "mlflow_release_run": MetadataValue.text(str(decision.run_id)),
                # per deployment size, the faster CPU file (the reasons carry the figures)
                "cpu_serving": MetadataValue.json(decision.cpu_serving),
                "record": MetadataValue.json(record),
            }
        )

    return [dataset, model, onnx, int8, tensorrt, validation, release]


def _record(context: AssetExecutionContext, tracker: Tracker, task: str, *steps: str) -> dict[str, Any]:
    """Record ``steps`` in MLflow as runs nested under this Dagster run; their metadata entries."""
    metadata: dict[str, Any] = {}
    for step in steps:
        record = tracker.log_step(task, step, pipeline_run=context.run.run_id)
        if record is None:
            context.log.warning(f"{task}: {step} not recorded in MLflow (tracking.enabled is false)")
        metadata.update(tracking_entries(step, record))
    return metadata


def _benchmark_metadata(report: Mapping[str, Any]) -> dict[str, Any]:
    """The side-by-side timing of every backend: its table and its chart."""
    metadata: dict[str, Any] = {}
    if report.get("table"):
        metadata["benchmark"] = MetadataValue.md(f"```\n{report['table']}\n```")
    if report.get("rows"):
        metadata["benchmark_rows"] = MetadataValue.json(list(report["rows"]))
    if report.get("plot"):
        metadata["plot_benchmark"] = image_md(report["plot"], "benchmark")
        metadata["plot_benchmark_path"] = MetadataValue.path(str(report["plot"]))
    return metadata
