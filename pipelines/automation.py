"""Jobs, the retraining schedule and the new-data sensor of a task: wiring around its assets.

Settings a user may want to change without touching code come from the environment (read
when the code location loads; reload it in the UI after a change):

- ``VISIONFORGE_RETRAIN_CRON``: when the periodic retraining runs (default weekly, Monday
  03:00), ``VISIONFORGE_RETRAIN_TIMEZONE`` its time zone (default UTC);
- ``VISIONFORGE_SENSOR_INTERVAL_S``: how often the sensor hashes the dataset (default 60 s).
"""

import os
from typing import TYPE_CHECKING

from dagster import (
    AssetKey,
    AssetSelection,
    DagsterInstance,
    DagsterInvalidDefinitionError,
    DagsterRun,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    define_asset_job,
    sensor,
)

from assets.factory import STAGES
from assets.resources import ParamsResource
from assets.versioning import dataset_content_hash
from ops.errors import ConfigError

if TYPE_CHECKING:  # what define_asset_job returns; Dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

DEFAULT_RETRAIN_CRON = "0 3 * * 1"
DEFAULT_TIMEZONE = "UTC"
DEFAULT_SENSOR_INTERVAL_S = 60
DATA_VERSION_TAG = "visionforge/data_version"
# On every job's runs: the run queue (pipelines/dagster.yaml, docker/dagster.yaml) runs one per
# task at a time, and the schedule and the sensor start nothing while one is queued or running.
TASK_TAG = "visionforge/task"
TRIGGER_TAG = "visionforge/trigger"
IN_FLIGHT = (
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
)


def run_in_flight(instance: DagsterInstance, task: str) -> DagsterRun | None:
    """A run of ``task``'s jobs that is queued or running, if any.

    The schedule and the sensor ask before they start a run, so when both fire for the same
    change, the second finds the first's run and starts nothing. Their evaluations are separate
    daemon threads: two evaluations less than a run submission apart could both find nothing,
    and then the run queue's one-run-per-task limit runs the second after the first.
    """
    runs = instance.get_runs(filters=RunsFilter(tags={TASK_TAG: task}, statuses=list(IN_FLIGHT)), limit=1)
    return runs[0] if runs else None


def _busy(run: DagsterRun) -> SkipReason:
    return SkipReason(f"run {run.run_id} ({run.job_name}, {run.status.value}) is already retraining")


def _keys(task: str, stages: tuple[str, ...]) -> list[AssetKey]:
    return [AssetKey([task, stage]) for stage in stages]


def retrain_job(task: str) -> "UnresolvedAssetJobDefinition":
    """Dataset through validation: a fresh candidate, judged by the gates."""
    return define_asset_job(
        f"retrain_{task}",
        selection=AssetSelection.assets(*_keys(task, STAGES[: STAGES.index("validation") + 1])),
        tags={TASK_TAG: task},
        description=f"Ingest the {task} dataset, train, export, quantise, build engines and validate "
        "(the release gates are blocking asset checks of the validation asset).",
    )


def release_job(task: str) -> "UnresolvedAssetJobDefinition":
    """Validate the current candidate again, then record its promotion; a failed gate blocks it."""
    return define_asset_job(
        f"release_{task}",
        selection=AssetSelection.assets(*_keys(task, ("validation", "release"))),
        tags={TASK_TAG: task},
        description=f"Re-validate the current {task} candidate and promote it. A failed gate fails "
        "its blocking check and the release step does not run.",
    )


def retrain_schedule(task: str, job: "UnresolvedAssetJobDefinition") -> ScheduleDefinition:
    cron = os.environ.get("VISIONFORGE_RETRAIN_CRON", DEFAULT_RETRAIN_CRON)
    timezone = os.environ.get("VISIONFORGE_RETRAIN_TIMEZONE", DEFAULT_TIMEZONE)

    def retrain_unless_running(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        running = run_in_flight(context.instance, task)
        if running is not None:
            return _busy(running)
        return RunRequest(tags={TRIGGER_TAG: "schedule"})

    try:
        return ScheduleDefinition(
            name=f"retrain_{task}_schedule",
            job=job,
            cron_schedule=cron,
            execution_timezone=timezone,
            execution_fn=retrain_unless_running,
            default_status=DefaultScheduleStatus.RUNNING,
            description=f"Periodic retraining of {task} (cron from VISIONFORGE_RETRAIN_CRON); skipped "
            "while a run of the task is queued or running.",
        )
    except DagsterInvalidDefinitionError as exc:  # the code location would not load: name the setting
        raise ConfigError(
            f"VISIONFORGE_RETRAIN_CRON={cron!r} / VISIONFORGE_RETRAIN_TIMEZONE={timezone!r}: {exc}"
        ) from None


def _sensor_interval_s() -> int:
    raw = os.environ.get("VISIONFORGE_SENSOR_INTERVAL_S", str(DEFAULT_SENSOR_INTERVAL_S))
    try:
        interval = int(raw)
    except ValueError:
        interval = 0
    if interval < 1:
        raise ConfigError(f"VISIONFORGE_SENSOR_INTERVAL_S={raw!r}: a whole number of seconds >= 1")
    return interval


def recorded_data_version(context: SensorEvaluationContext, task: str) -> str | None:
    """The data version the last materialisation of ``<task>/dataset`` recorded, if any."""
    event = context.instance.get_latest_materialization_event(AssetKey([task, "dataset"]))
    if event is None or event.asset_materialization is None:
        return None
    return event.asset_materialization.tags.get("dagster/data_version")


def dataset_sensor(task: str, job: "UnresolvedAssetJobDefinition") -> SensorDefinition:
    """Start retraining when the dataset's content hash changes.

    The cursor is the last hash seen. A hash the dataset asset itself recorded is not news
    (the pipeline's own ingest wrote or checked it), so a retraining run never triggers another.
    On first sight, with nothing recorded, the sensor only starts watching: turning it on does
    not launch a training run by itself. While a run of the task is queued or running it starts
    nothing and keeps its cursor, so a change that run did not ingest is news on the next tick.
    """

    @sensor(
        name=f"{task}_dataset_changed",
        job=job,
        minimum_interval_seconds=_sensor_interval_s(),
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Retrain {task} when the dataset's content hash (its data version) changes.",
    )
    def _sensor(context: SensorEvaluationContext, params: ParamsResource) -> RunRequest | SkipReason:
        root = getattr(params.load(task), task).dataset.root
        if not root.is_dir():
            return SkipReason(f"no dataset at {root} yet")
        running = run_in_flight(context.instance, task)
        if running is not None:
            return _busy(running)
        current = dataset_content_hash(root)
        recorded = recorded_data_version(context, task)
        previous = context.cursor or recorded
        context.update_cursor(current)
        if previous is None:
            return SkipReason(f"watching {root} from data version {current[:12]}")
        if current in (previous, recorded):
            return SkipReason(f"dataset unchanged (data version {current[:12]})")
        return RunRequest(
            run_key=None,
            tags={DATA_VERSION_TAG: current, TRIGGER_TAG: "dataset changed"},
        )

    return _sensor
