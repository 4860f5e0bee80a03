"""The new-data sensor: retrain when the dataset's content hash changes, and only then; with the
schedule, never a second run of a task while one is queued or running."""

from __future__ import annotations

from pathlib import Path

from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterRunStatus,
    SensorDefinition,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)
from dagster._core.test_utils import create_run_for_test

from assets.resources import ParamsResource
from assets.versioning import dataset_content_hash
from pipelines.automation import DATA_VERSION_TAG, TRIGGER_TAG, run_in_flight
from pipelines.definitions import defs
from tests.conftest import tiny_params_dict, write_params


def _setup(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "data" / "traffic"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train.json").write_text('{"images": []}')
    raw = tiny_params_dict(tmp_path)
    raw["traffic"]["dataset"]["root"] = str(root)
    return root, {"params": ParamsResource(path=str(write_params(tmp_path, raw)))}


def _tick(sensor: SensorDefinition, instance, resources: dict, cursor: str | None):
    context = build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    return sensor.evaluate_tick(context)


def test_fires_on_a_changed_dataset_and_not_on_an_unchanged_one(tmp_path):
    root, resources = _setup(tmp_path)
    sensor = defs.resolve_sensor_def("traffic_dataset_changed")
    with instance_for_test() as instance:
        first = _tick(sensor, instance, resources, cursor=None)
        assert not first.run_requests and "watching" in first.skip_message
        assert first.cursor == dataset_content_hash(root)

        same = _tick(sensor, instance, resources, cursor=first.cursor)
        assert not same.run_requests and "unchanged" in same.skip_message

        (root / "annotations" / "instances_val.json").write_text('{"images": [1]}')
        changed = _tick(sensor, instance, resources, cursor=same.cursor)
        assert len(changed.run_requests) == 1
        request = changed.run_requests[0]
        assert request.tags[DATA_VERSION_TAG] == dataset_content_hash(root) == changed.cursor
        assert changed.cursor != first.cursor

        again = _tick(sensor, instance, resources, cursor=changed.cursor)
        assert not again.run_requests


def test_a_version_the_dataset_asset_recorded_is_not_news(tmp_path):
    """After a run's own ingest, the recorded data version matches: no second retraining."""
    root, resources = _setup(tmp_path)
    sensor = defs.resolve_sensor_def("traffic_dataset_changed")
    with instance_for_test() as instance:
        old = _tick(sensor, instance, resources, cursor=None).cursor
        (root / "annotations" / "instances_train.json").write_text('{"images": [2]}')
        instance.report_runless_asset_event(
            AssetMaterialization(
                AssetKey(["traffic", "dataset"]), tags={"dagster/data_version": dataset_content_hash(root)}
            )
        )
        result = _tick(sensor, instance, resources, cursor=old)
        assert not result.run_requests
        assert result.cursor == dataset_content_hash(root)


def test_first_sight_compares_with_the_recorded_version(tmp_path):
    """With no cursor yet, a dataset that differs from the last materialised one is news."""
    root, resources = _setup(tmp_path)
    sensor = defs.resolve_sensor_def("traffic_dataset_changed")
    with instance_for_test() as instance:
        instance.report_runless_asset_event(
            AssetMaterialization(AssetKey(["traffic", "dataset"]), tags={"dagster/data_version": "0" * 64})
        )
        assert len(_tick(sensor, instance, resources, cursor=None).run_requests) == 1


def test_no_dataset_yet_is_a_skip(tmp_path):
    root, resources = _setup(tmp_path)
    (root / "annotations" / "instances_train.json").unlink()
    (root / "annotations").rmdir()
    root.rmdir()
    sensor = defs.resolve_sensor_def("traffic_dataset_changed")
    with instance_for_test() as instance:
        result = _tick(sensor, instance, resources, cursor=None)
        assert not result.run_requests and "no dataset" in result.skip_message


def _submit(instance, job_name: str, request, status: DagsterRunStatus = DagsterRunStatus.NOT_STARTED):
    """The run the daemon creates for a run request: the job's tags (the task) and the request's.
    (A QUEUED run needs the origin of a code location, which a test instance has not.)"""
    job = defs.resolve_job_def(job_name)
    return create_run_for_test(instance, job_name=job_name, tags={**job.tags, **request.tags}, status=status)


def test_the_schedule_and_the_sensor_firing_together_start_one_run(tmp_path):
    root, resources = _setup(tmp_path)
    sensor = defs.resolve_sensor_def("traffic_dataset_changed")
    schedule = defs.resolve_schedule_def("retrain_traffic_schedule")
    with instance_for_test() as instance:
        cursor = _tick(sensor, instance, resources, cursor=None).cursor
        (root / "annotations" / "instances_val.json").write_text('{"images": [3]}')  # new data

        by_schedule = schedule.evaluate_tick(build_schedule_context(instance=instance))
        (request,) = by_schedule.run_requests
        assert request.tags[TRIGGER_TAG] == "schedule"
        run = _submit(instance, schedule.job_name, request)
        assert run_in_flight(instance, "traffic").run_id == run.run_id
        assert run_in_flight(instance, "sidd") is None  # other tasks are not held up

        held = _tick(sensor, instance, resources, cursor=cursor)
        assert not held.run_requests
        assert f"run {run.run_id} (retrain_traffic, NOT_STARTED) is already retraining" in held.skip_message
        assert held.cursor == cursor  # kept: the change is still news if that run misses it

        instance.report_run_failed(run)  # the run ended without ingesting the new data
        after = _tick(sensor, instance, resources, cursor=held.cursor)
        assert len(after.run_requests) == 1


def test_the_schedule_starts_nothing_while_a_sensor_run_is_running(tmp_path):
    root, resources = _setup(tmp_path)
    sensor = defs.resolve_sensor_def("traffic_dataset_changed")
    schedule = defs.resolve_schedule_def("retrain_traffic_schedule")
    with instance_for_test() as instance:
        cursor = _tick(sensor, instance, resources, cursor=None).cursor
        (root / "annotations" / "instances_val.json").write_text('{"images": [4]}')
        (request,) = _tick(sensor, instance, resources, cursor=cursor).run_requests
        run = _submit(instance, sensor.job_name, request, status=DagsterRunStatus.STARTED)
        skipped = schedule.evaluate_tick(build_schedule_context(instance=instance))
        assert not skipped.run_requests
        assert f"run {run.run_id} (retrain_traffic, STARTED) is already retraining" in skipped.skip_message
