"""The single Dagster entry point (``workspace.yaml``, ``dagster dev``, ``dagster asset materialize -m``).

Run from the repository root: ``params.yaml`` and the relative paths inside it are read
from the working directory.
"""

from __future__ import annotations

from dagster import Definitions

from assets.factory import build_task_assets
from assets.resources import ParamsResource, TrackingResource
from ops.tasks import task_names
from pipelines.automation import dataset_sensor, release_job, retrain_job, retrain_schedule

ASSETS = [asset for task in task_names() for asset in build_task_assets(task)]
RETRAIN_JOBS = {task: retrain_job(task) for task in task_names()}

defs = Definitions(
    assets=ASSETS,
    resources={"params": ParamsResource(), "tracking": TrackingResource()},
    jobs=[*RETRAIN_JOBS.values(), *(release_job(task) for task in task_names())],
    schedules=[retrain_schedule(task, job) for task, job in RETRAIN_JOBS.items()],
    sensors=[dataset_sensor(task, job) for task, job in RETRAIN_JOBS.items()],
)
