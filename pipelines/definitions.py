"""The single Dagster entry point (``workspace.yaml``, ``dagster dev``, ``dagster asset materialize -m``).

Run from the repository root: ``params.yaml`` and the relative paths inside it are read
from the working directory.
"""

from __future__ import annotations

from dagster import Definitions

from assets.factory import build_task_assets
from assets.resources import ParamsResource, TrackingResource
from pipelines.automation import dataset_sensor, release_job, retrain_job, retrain_schedule

TRAFFIC_ASSETS = build_task_assets("traffic")

retrain_traffic = retrain_job("traffic")
release_traffic = release_job("traffic")

defs = Definitions(
    assets=TRAFFIC_ASSETS,
    resources={"params": ParamsResource(), "tracking": TrackingResource()},
    jobs=[retrain_traffic, release_traffic],
    schedules=[retrain_schedule("traffic", retrain_traffic)],
    sensors=[dataset_sensor("traffic", retrain_traffic)],
)
