"""The new-data sensor: retrain when the dataset's content hash changes, and only then."""

from __future__ import annotations

from pathlib import Path

from dagster import AssetKey, AssetMaterialization, SensorDefinition, build_sensor_context, instance_for_test

from assets.resources import ParamsResource
from assets.versioning import dataset_content_hash
from pipelines.automation import DATA_VERSION_TAG
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
