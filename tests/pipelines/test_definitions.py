"""The code location: what `dagster dev` and the CLI load from pipelines.definitions."""

from __future__ import annotations

from dagster import AssetCheckKey, AssetKey, DefaultScheduleStatus, DefaultSensorStatus

from assets.factory import STAGES
from pipelines.automation import DEFAULT_RETRAIN_CRON, retrain_job, retrain_schedule
from pipelines.definitions import defs

TRAFFIC_KEYS = [AssetKey(["traffic", stage]) for stage in STAGES]


def test_definitions_load_with_the_traffic_chain_in_order():
    graph = defs.resolve_asset_graph()
    assert [k for k in graph.toposorted_asset_keys if k.path[0] == "traffic"] == TRAFFIC_KEYS
    for upstream, downstream in zip(TRAFFIC_KEYS, TRAFFIC_KEYS[1:], strict=False):
        assert upstream in graph.get(downstream).parent_keys


def test_every_gate_and_the_dataset_are_checked_and_the_checks_block():
    checks = _check_specs()
    expected = {
        AssetCheckKey(AssetKey(["traffic", "dataset"]), "integrity"),
        AssetCheckKey(AssetKey(["traffic", "onnx"]), "parity"),
        *(
            AssetCheckKey(AssetKey(["traffic", "validation"]), name)
            for name in (
                "output_cosine_onnx",
                "map50_drop_onnx",
                "map50_drop_onnx_int8",
                "map50_drop_trt_fp16",
                "map50_drop_trt_int8",
            )
        ),
    }
    assert {key for key in checks if key.asset_key.path[0] == "traffic"} == expected
    restoration = {
        task: {key.name for key in checks if key.asset_key.path[0] == task} for task in ("sidd", "gopro")
    }
    assert (
        restoration["sidd"]
        == restoration["gopro"]
        == {
            "integrity",
            "parity",
            "output_psnr_onnx",
            "psnr_drop_onnx",
            "psnr_drop_onnx_int8",
            "psnr_drop_trt_fp16",
            "psnr_drop_trt_int8",
        }
    )
    assert all(spec.blocking for spec in checks.values())


def _check_specs():
    specs = {}
    for assets_def in defs.assets:
        for spec in assets_def.check_specs:
            specs[spec.key] = spec
    return specs


def test_jobs_select_what_they_promise():
    retrain = defs.resolve_job_def("retrain_traffic")
    release = defs.resolve_job_def("release_traffic")
    assert set(retrain.asset_layer.executable_asset_keys) == set(TRAFFIC_KEYS[:-1])
    assert set(release.asset_layer.executable_asset_keys) == {
        AssetKey(["traffic", "validation"]),
        AssetKey(["traffic", "release"]),
    }


def test_default_resource_reads_params_yaml_from_the_working_directory():
    assert defs.resources["params"].path == "params.yaml"


def test_schedule_is_weekly_by_default_and_targets_retraining():
    schedule = defs.resolve_schedule_def("retrain_traffic_schedule")
    assert schedule.cron_schedule == DEFAULT_RETRAIN_CRON == "0 3 * * 1"
    assert schedule.job_name == "retrain_traffic"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING


def test_schedule_cron_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("VISIONFORGE_RETRAIN_CRON", "30 1 * * *")
    monkeypatch.setenv("VISIONFORGE_RETRAIN_TIMEZONE", "Europe/Madrid")
    schedule = retrain_schedule("traffic", retrain_job("traffic"))
    assert schedule.cron_schedule == "30 1 * * *"
    assert schedule.execution_timezone == "Europe/Madrid"


def test_sensor_targets_retraining():
    sensor = defs.resolve_sensor_def("traffic_dataset_changed")
    assert sensor.job_name == "retrain_traffic"
    assert sensor.default_status == DefaultSensorStatus.RUNNING
