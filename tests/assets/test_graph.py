"""The whole asset graph materialised for real, in-process, on the tiny configuration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, instance_for_test

from assets.versioning import dataset_content_hash
from ops.config import load_params
from ops.layout import TaskLayout
from ops.tasks import TASKS
from pipelines.definitions import defs
from pipelines.demo import RunSummary, format_summary, run_graph
from tests.conftest import tiny_params_dict, write_params

pytestmark = pytest.mark.slow

STAGES = ("dataset", "model", "onnx", "int8", "tensorrt", "validation", "release")


def _run_config(params_path: Path, overrides: dict | None = None, **params_config) -> dict:
    return {
        "resources": {
            "params": {"config": {"path": str(params_path), "overrides": overrides or {}, **params_config}}
        },
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
    }


@pytest.fixture(scope="module")
def instance():
    with instance_for_test() as instance:
        yield instance


@pytest.fixture(scope="module")
def graph(tmp_path_factory, instance) -> tuple[Path, RunSummary, list[str]]:
    """Everything materialised once (as `make demo` does), epochs overridden by run config."""
    workdir = tmp_path_factory.mktemp("graph")
    params_path = write_params(workdir, tiny_params_dict(workdir))
    lines: list[str] = []
    summary = run_graph(instance, _run_config(params_path, epochs=1), echo=lines.append)
    return params_path, summary, lines


def _materializations(instance: DagsterInstance, run_id: str) -> dict[str, dict]:
    out = {}
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.dagster_event.event_specific_data.materialization
        out[materialization.asset_key.to_user_string()] = materialization
    return out


def _checks(instance: DagsterInstance, run_id: str, task: str = "traffic") -> dict[str, object]:
    """``task``'s check evaluations of the run, by check name."""
    entries = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    evaluations = [entry.dagster_event.asset_check_evaluation_data for entry in entries]
    return {e.check_name: e for e in evaluations if e.asset_key.path[0] == task}


def test_every_asset_materialises_with_its_checks(graph, instance):
    params_path, summary, _ = graph
    assert summary.success, summary.errors
    materialized = _materializations(instance, summary.run_id)
    assert set(materialized) == {f"{task}/{stage}" for task in TASKS for stage in STAGES}
    checks = _checks(instance, summary.run_id)
    assert set(checks) == {
        "integrity",
        "parity",
        "output_cosine_onnx",
        "map50_drop_onnx",
        "map50_drop_onnx_int8",
        "map50_drop_trt_fp16",
        "map50_drop_trt_int8",
    }
    assert all(check.passed for check in checks.values())
    assert checks["parity"].metadata["threshold"].value == pytest.approx(0.999)
    assert checks["map50_drop_onnx"].metadata["status"].value == "passed"


def test_metadata_carries_counts_metrics_files_and_plots(graph, instance):
    params_path, summary, _ = graph
    meta = {key: m.metadata for key, m in _materializations(instance, summary.run_id).items()}
    assert meta["traffic/dataset"]["train_images"].value == 16
    assert meta["traffic/dataset"]["val_images"].value == 8
    model = meta["traffic/model"]
    assert model["epochs"].value == 1  # the run config's override reached the training step
    assert 0.0 <= model["map50"].value <= 1.0
    assert Path(model["weights_path"].value).is_file() and model["weights_bytes"].value > 0
    for plot in ("plot_training_curves", "plot_pr_curve", "plot_samples"):
        assert "data:image/" in model[plot].value
    assert meta["traffic/onnx"]["onnx_bytes"].value > 0
    assert meta["traffic/int8"]["onnx_int8_bytes"].value > 0
    validation = meta["traffic/validation"]
    assert validation["passed"].value is True
    assert "data:image/" in validation["plot_onnx-int8_pr_curve"].value
    assert "onnx-int8" in validation["metrics"].value
    assert meta["traffic/release"]["decision"].value == "promoted"
    for task in TASKS:  # from each validation asset's benchmark: one size each in the tiny params
        serving = meta[f"{task}/release"]["cpu_serving"].value
        assert len(serving) == 1 and set(serving.values()) <= {"onnx", "onnx-int8"}, (task, serving)
    assert meta["traffic/onnx"]["registered_onnx"].value.startswith("traffic-detector-onnx v")


def test_the_dataset_data_version_is_its_dvc_hash_in_dagster_and_mlflow(graph, instance):
    from mlflow import MlflowClient

    from ops.tracking import tracking_uri

    params_path, summary, _ = graph
    params = load_params(params_path)
    root = params.traffic.dataset.root
    materialization = _materializations(instance, summary.run_id)["traffic/dataset"]
    assert materialization.tags["dagster/data_version"] == dataset_content_hash(root)
    # the release moved the registry's aliases; the champion carries the same data version
    client = MlflowClient(tracking_uri(params))
    champion = client.get_model_version_by_alias("traffic-detector-onnx-int8", "champion")
    assert champion.tags["data_version"] == dataset_content_hash(root)
    assert champion.tags["validation.passed"] == "true"
    experiment = client.get_run(champion.run_id).info.experiment_id
    parents = client.search_runs([experiment], f"tags.`visionforge.pipeline_run` = '{summary.run_id}'")
    assert len(parents) == 1  # one parent run for the Dagster run, every step nested under it
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    steps = ("ingest", "train", "evaluate", "export", "quantize", "build-engine", "validate", "benchmark")
    assert {run.info.run_name for run in children} == {*steps, "release"}


def test_tensorrt_without_a_gpu_is_a_recorded_skip_not_a_failure(graph, instance):
    params_path, summary, _ = graph
    tensorrt = _materializations(instance, summary.run_id)["traffic/tensorrt"].metadata
    assert tensorrt["status"].value == "skipped"
    assert tensorrt["engines_built"].value == 0
    assert tensorrt["fp16_status"].value.startswith("skipped: ")
    engines = list((params_path.parent / "artifacts" / "traffic" / "tensorrt").glob("*.engine"))
    assert engines == []  # never a fake engine
    checks = _checks(instance, summary.run_id)
    for name in ("map50_drop_trt_fp16", "map50_drop_trt_int8"):
        assert checks[name].passed
        assert checks[name].metadata["status"].value == "skipped"
        assert checks[name].metadata["note"].value.startswith("skipped: ")


def test_progress_line_per_asset_and_summary_table(graph):
    _, summary, lines = graph
    keys = [row.key for row in summary.assets]
    assert len(keys) == len(TASKS) * len(STAGES)
    for stage in STAGES:
        index = keys.index(f"traffic/{stage}") + 1
        assert f"==> [{index}/{len(keys)}] traffic/{stage}: started" in lines
        assert any(line.startswith(f"==> [{index}/{len(keys)}] traffic/{stage}: done in ") for line in lines)
    table = format_summary(summary)
    for stage in STAGES:
        assert f"traffic/{stage}" in table
    assert "traffic/validation:map50_drop_onnx_int8" in table and "succeeded" in table


def test_a_broken_gate_fails_its_check_and_blocks_the_release(graph, instance):
    params_path, first, _ = graph
    job = defs.resolve_job_def("release_traffic")
    overrides = {"traffic.validation.max_map50_drop_onnx": 0.0, "traffic.tensorrt.precisions": ["fp16"]}
    run_config = _run_config(params_path, overrides)
    run_config["ops"] = {"traffic__validation": {"config": {"benchmark": False}}}
    result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False)
    assert not result.success
    checks = _checks(instance, result.run_id)
    failed = checks["map50_drop_onnx"]
    # ONNX FP32 scores what PyTorch scores: a drop of 0 is not below a threshold of 0
    assert not failed.passed
    assert failed.metadata["status"].value == "failed"
    assert failed.metadata["threshold"].value == 0.0
    assert failed.metadata["value"].value == pytest.approx(0.0)
    assert checks["output_cosine_onnx"].passed
    not_requested = checks["map50_drop_trt_int8"]  # a precision params does not ask for
    assert not_requested.passed and not_requested.metadata["note"].value == "skipped: not requested by params"
    assert "traffic/release" not in _materializations(instance, result.run_id)
    latest = instance.get_latest_materialization_event(AssetKey(["traffic", "release"]))
    assert latest.run_id == first.run_id  # the earlier promotion is still the latest


def test_a_corrupt_dataset_fails_integrity_and_nothing_downstream_runs(tmp_path, tiny_dataset, instance):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset, broken)
    next((broken / "images" / "train").iterdir()).write_bytes(b"not an image")
    raw = tiny_params_dict(tmp_path)
    raw["traffic"]["dataset"].update(source="local", root=str(broken))
    params_path = write_params(tmp_path, raw)
    job = defs.resolve_job_def("retrain_traffic")
    result = job.execute_in_process(
        run_config=_run_config(params_path), instance=instance, raise_on_error=False
    )
    assert not result.success
    integrity = _checks(instance, result.run_id)["integrity"]
    assert not integrity.passed
    assert "train" in integrity.metadata["problems"].value
    assert set(_materializations(instance, result.run_id)) == {"traffic/dataset"}
    assert not TaskLayout.for_task(
        __import__("ops.config").config.load_params(params_path), "traffic"
    ).weights.exists()


def test_the_sidd_chain_materialises_with_its_gates_and_release(graph, instance):
    params_path, summary, _ = graph
    meta = {key: m.metadata for key, m in _materializations(instance, summary.run_id).items()}
    checks = _checks(instance, summary.run_id, "sidd")
    assert set(checks) == {
        "integrity",
        "parity",
        "output_psnr_onnx",
        "psnr_drop_onnx",
        "psnr_drop_onnx_int8",
        "psnr_drop_trt_fp16",
        "psnr_drop_trt_int8",
    }
    assert all(check.passed for check in checks.values())
    assert checks["parity"].metadata["threshold"].value == pytest.approx(60.0)
    assert checks["psnr_drop_trt_fp16"].metadata["status"].value == "skipped"
    assert meta["sidd/dataset"]["train_pairs"].value == 4  # one pair per scene instance folder
    assert meta["sidd/dataset"]["val_samples"].value == 4
    assert 10 < meta["sidd/dataset"]["val_psnr_input"].value < 40
    model = meta["sidd/model"]
    assert model["epochs"].value == 1
    assert model["psnr_input"].value == pytest.approx(meta["sidd/dataset"]["val_psnr_input"].value, abs=1e-3)
    assert "data:image/" in model["plot_samples"].value
    validation = meta["sidd/validation"]
    assert validation["passed"].value is True
    assert validation["onnx_psnr"].value == pytest.approx(validation["pytorch_psnr"].value, abs=0.05)
    assert meta["sidd/onnx"]["registered_onnx"].value.startswith("sidd-denoiser-onnx v")
    assert meta["sidd/release"]["decision"].value == "promoted"
    metrics = json.loads(
        (params_path.parent / "artifacts" / "sidd" / "metrics" / "onnx-int8.json").read_text()
    )
    assert {"psnr", "ssim", "psnr_input", "ssim_input", "per_iso", "ssim_settings"} <= set(metrics)


def test_the_gopro_chain_is_the_same_factory_with_its_own_data(graph, instance):
    params_path, summary, _ = graph
    meta = {key: m.metadata for key, m in _materializations(instance, summary.run_id).items()}
    checks = _checks(instance, summary.run_id, "gopro")
    assert set(checks) == set(_checks(instance, summary.run_id, "sidd"))
    assert all(check.passed for check in checks.values())
    assert meta["gopro/dataset"]["train_pairs"].value == 4  # 2 sequences x 2 frames
    assert meta["gopro/dataset"]["val_samples"].value == 2
    assert 10 < meta["gopro/dataset"]["val_psnr_input"].value < 45
    assert meta["gopro/onnx"]["registered_onnx"].value.startswith("gopro-deblurrer-onnx v")
    assert meta["gopro/release"]["decision"].value == "promoted"
    metrics = json.loads(
        (params_path.parent / "artifacts" / "gopro" / "metrics" / "onnx-int8.json").read_text()
    )
    # generated frames know how many sharp frames each blurred one averages (3-5 in the tiny config)
    assert set(metrics["per_blur_frames"]) <= {"3", "4", "5"}
    assert sum(b["num_samples"] for b in metrics["per_blur_frames"].values()) == 2
