"""MLflow tracking and registry against a real SQLite store, checked through MlflowClient.

Artefacts here are small files with distinct bytes: the registry only cares about files and
their sha256, so no model needs training to test runs, versions, tags, aliases and promotion.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ops.config import Params
from ops.errors import TrackingError
from ops.io import sha256_file, write_json
from ops.layout import TaskLayout
from ops.tracking import (
    ALIAS_CANDIDATE,
    ALIAS_CHAMPION,
    Tracker,
    registered_model_name,
)
from ops.versioning import dataset_version
from tests.conftest import run_cli

TASK = "traffic"
FORMATS = ("pytorch", "onnx", "onnx-int8")


def _dataset(params: Params) -> Path:
    root = Path(params.traffic.dataset.root)
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    (root / "images" / "train" / "0001.jpg").write_bytes(b"\xff\xd8one")
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / "instances_train.json").write_text('{"images": []}')
    return root


def _artefacts(params: Params, tag: str) -> TaskLayout:
    """Distinct bytes per ``tag``: a new tag is a new artefact of every format."""
    layout = TaskLayout.for_task(params, TASK)
    for fmt, path in (("pytorch", layout.weights), ("onnx", layout.onnx), ("onnx-int8", layout.onnx_int8)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{fmt}:{tag}".encode())
    return layout


def _validated(params: Params, map50: float, failed_gate: str | None = None) -> None:
    """The report `visionforge validate` writes: gates and per-backend metrics."""
    layout = TaskLayout.for_task(params, TASK)
    gates = [
        {
            "name": f"map50_drop_{backend}",
            "passed": f"map50_drop_{backend}" != failed_gate,
            "value": 0.05 if f"map50_drop_{backend}" == failed_gate else 0.0,
            "threshold": 0.01,
            "comparison": "<",
            "detail": "",
            "skipped": False,
        }
        for backend in ("onnx", "onnx-int8")
    ]
    gates.append(
        {
            "name": "map50_drop_trt-fp16",
            "passed": True,
            "value": None,
            "threshold": 0.02,
            "comparison": "<",
            "detail": "no GPU",
            "skipped": True,
        }
    )
    summary = {
        "passed": all(g["passed"] for g in gates),
        "gates": gates,
        "metrics": {fmt: {"map50": map50, "map50_95": map50 / 2} for fmt in FORMATS},
    }
    write_json(layout.validation, summary)


def _release(tracker: Tracker, params: Params, tag: str, map50: float, failed_gate: str | None = None):
    _artefacts(params, tag)
    _validated(params, map50, failed_gate)
    tracker.log_step(TASK, "validate", pipeline_run=f"run-{tag}")
    return tracker.promote(TASK, pipeline_run=f"run-{tag}")


def _alias(client: MlflowClient, fmt: str, alias: str) -> str | None:
    aliases = client.get_registered_model(registered_model_name(TASK, fmt)).aliases
    return str(aliases[alias]) if alias in aliases else None


def _versions(client: MlflowClient, fmt: str) -> list[str]:
    return sorted(
        str(v.version) for v in client.search_model_versions(f"name = '{registered_model_name(TASK, fmt)}'")
    )


def test_steps_are_nested_runs_of_one_pipeline_run_with_params_metrics_files_and_lineage(tracked_params):
    params = tracked_params
    root = _dataset(params)
    layout = _artefacts(params, "a")
    history = [{"epoch": 1, "lr": 0.01, "loss": 2.0}, {"epoch": 2, "lr": 0.005, "loss": 1.5}]
    write_json(layout.model_dir / "history.json", history)
    write_json(layout.parity, {"onnx": {"min_cosine": 0.9999, "max_abs_diff": 1e-5}})
    tracker = Tracker(params)

    train = tracker.log_step(TASK, "train", pipeline_run="dagster-run-1")
    export = tracker.log_step(TASK, "export", pipeline_run="dagster-run-1")

    client = MlflowClient(tracker.uri)
    assert train.pipeline_run_id == export.pipeline_run_id
    children = client.search_runs(
        [train.experiment_id], f"tags.`mlflow.parentRunId` = '{train.pipeline_run_id}'"
    )
    assert sorted(r.info.run_name for r in children) == ["export", "train"]
    assert client.get_experiment(train.experiment_id).name == "visionforge-traffic"
    run = client.get_run(train.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["traffic.train.epochs"] == "2"
    assert run.data.tags["data_version"] == dataset_version(root)
    assert run.data.tags["git_commit"] and run.data.tags["params_digest"]
    assert [(m.step, m.value) for m in client.get_metric_history(train.run_id, "loss")] == [
        (1, 2.0),
        (2, 1.5),
    ]
    assert {a.path for a in client.list_artifacts(train.run_id, "model")} >= {
        "model/model.pt",
        "model/history.json",
    }
    assert client.get_run(export.run_id).data.metrics["parity.onnx.min_cosine"] == pytest.approx(0.9999)

    version = client.get_model_version("traffic-detector-pytorch", train.registered["pytorch"].version)
    assert version.tags["sha256"] == sha256_file(layout.weights)
    assert version.tags["data_version"] == dataset_version(root)
    assert version.tags["params_digest"] == run.data.tags["params_digest"]
    assert version.run_id == train.run_id
    assert export.registered["onnx"].name == "traffic-detector-onnx"


def test_the_same_artefact_registered_twice_is_one_version(tracked_params):
    params = tracked_params
    _dataset(params)
    _artefacts(params, "a")
    tracker = Tracker(params)
    first = tracker.log_step(TASK, "export").registered["onnx"]
    again = tracker.log_step(TASK, "export").registered["onnx"]
    assert (first.created, again.created) == (True, False)
    assert first.version == again.version
    client = MlflowClient(tracker.uri)
    assert _versions(client, "onnx") == ["1"]
    _artefacts(params, "b")  # new bytes: a new version
    assert tracker.log_step(TASK, "export").registered["onnx"].version == "2"


def test_an_interrupted_registration_is_completed_by_a_rerun_without_duplicates(tracked_params):
    params = tracked_params
    _dataset(params)
    layout = _artefacts(params, "a")
    tracker = Tracker(params)
    client = MlflowClient(tracker.uri)
    # What a crash right after MLflow created the version leaves: a version with its sha256 and
    # nothing else (no lineage tags, no validation, no alias).
    run = client.create_run(tracker.experiment_id(TASK))
    client.create_registered_model("traffic-detector-onnx")
    client.create_model_version(
        "traffic-detector-onnx",
        "file:///nowhere",
        run_id=run.info.run_id,
        tags={"sha256": sha256_file(layout.onnx)},
    )
    _validated(params, map50=0.8)
    tracker.log_step(TASK, "validate")
    decision = tracker.promote(TASK)
    assert decision.decision == "promoted"
    assert _versions(client, "onnx") == ["1"]
    version = client.get_model_version("traffic-detector-onnx", "1")
    assert {
        "data_version",
        "git_commit",
        "params_digest",
        "validation.passed",
        "metric.map50",
    } <= version.tags.keys()
    assert _alias(client, "onnx", ALIAS_CHAMPION) == "1"


def test_promotion_rules_failed_gate_better_worse_and_tolerance(tracked_params):
    params = tracked_params  # release.tolerance 0.005 (params.yaml)
    assert params.traffic.release.tolerance == pytest.approx(0.005)
    _dataset(params)
    tracker = Tracker(params)
    client = MlflowClient(tracker.uri)

    first = _release(tracker, params, "v1", map50=0.80)
    assert first.decision == "promoted" and "no champion yet" in " ".join(first.reasons)
    assert all(_alias(client, f, ALIAS_CHAMPION) == "1" for f in FORMATS)

    failing = _release(tracker, params, "v2", map50=0.95, failed_gate="map50_drop_onnx-int8")
    assert failing.decision == "blocked"
    assert "map50_drop_onnx-int8" in " ".join(failing.reasons)
    for fmt in FORMATS:  # a failed gate moves no alias at all
        assert _alias(client, fmt, ALIAS_CHAMPION) == "1"
        assert _alias(client, fmt, ALIAS_CANDIDATE) == "1"
    blocked_version = client.get_model_version("traffic-detector-onnx", "2")
    assert blocked_version.tags["release.decision"] == "blocked"
    assert "map50_drop_onnx-int8" in blocked_version.tags["release.reasons"]

    better = _release(tracker, params, "v3", map50=0.85)
    assert better.decision == "promoted"
    assert better.champions_before == dict.fromkeys(FORMATS, "1")
    assert all(_alias(client, f, ALIAS_CHAMPION) == "3" for f in FORMATS)

    worse = _release(tracker, params, "v4", map50=0.84)  # 0.01 below: beyond the 0.005 tolerance
    assert worse.decision == "kept"
    assert all(_alias(client, f, ALIAS_CHAMPION) == "3" for f in FORMATS)
    assert all(_alias(client, f, ALIAS_CANDIDATE) == "4" for f in FORMATS)
    assert (
        "below champion v3"
        in client.get_model_version("traffic-detector-pytorch", "4").tags["release.reasons"]
    )

    within = _release(tracker, params, "v5", map50=0.847)  # 0.003 below: within the tolerance
    assert within.decision == "promoted"
    assert all(_alias(client, f, ALIAS_CHAMPION) == "5" for f in FORMATS)

    again = tracker.promote(TASK)  # nothing new
    assert again.decision == "unchanged"
    release_runs = client.search_runs([tracker.experiment_id(TASK)], "tags.`visionforge.role` = 'release'")
    assert {r.data.tags["release.decision"] for r in release_runs} == {
        "promoted",
        "blocked",
        "kept",
        "unchanged",
    }


class _FailingAliasTracker(Tracker):
    """A real tracker whose registry refuses the ``fail_at``-th alias move (a lost connection midway)."""

    fail_at = 4

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.moves = 0
        client = self.client
        real = client.set_registered_model_alias

        def flaky(name: str, alias: str, version: str) -> None:
            self.moves += 1
            if self.moves == self.fail_at:
                raise ConnectionError("registry went away")
            real(name, alias, version)

        client.set_registered_model_alias = flaky  # type: ignore[method-assign]


def test_a_failure_midway_through_the_alias_moves_leaves_every_alias_where_it_was(tracked_params):
    params = tracked_params
    _dataset(params)
    tracker = Tracker(params)
    client = MlflowClient(tracker.uri)
    assert _release(tracker, params, "v1", map50=0.80).promoted
    _artefacts(params, "v2")
    _validated(params, map50=0.90)
    tracker.log_step(TASK, "validate")

    flaky = _FailingAliasTracker(params)
    with pytest.raises(TrackingError, match="previous aliases restored"):
        flaky.promote(TASK)
    assert flaky.moves == 7  # three candidates moved, the first champion move failed, three put back
    for fmt in FORMATS:
        assert _alias(client, fmt, ALIAS_CANDIDATE) == "1"
        assert _alias(client, fmt, ALIAS_CHAMPION) == "1"
    # a rerun completes the release, without new versions
    assert tracker.promote(TASK).decision == "promoted"
    assert all(_alias(client, f, ALIAS_CHAMPION) == "2" for f in FORMATS)
    assert all(_versions(client, f) == ["1", "2"] for f in FORMATS)


def test_an_unvalidated_artefact_is_not_released(tracked_params):
    params = tracked_params
    _dataset(params)
    tracker = Tracker(params)
    assert _release(tracker, params, "v1", map50=0.80).promoted
    _artefacts(params, "v2")  # new files, validate not rerun
    decision = tracker.promote(TASK)
    assert decision.decision == "blocked"
    assert "never validated" in " ".join(decision.reasons)
    assert _alias(MlflowClient(tracker.uri), "onnx", ALIAS_CHAMPION) == "1"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_server_is_one_clear_error_after_bounded_retries(tracked_params, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")):
        monkeypatch.setenv(name, value)  # what Tracker would set for the process, undone after the test
    params = tracked_params.model_copy(
        update={
            "tracking": tracked_params.tracking.model_copy(
                update={
                    "uri": f"http://127.0.0.1:{_closed_port()}",
                    "connect_retries": 2,
                    "connect_timeout_s": 1,
                }
            )
        }
    )
    start = time.monotonic()
    with pytest.raises(TrackingError, match=r"unreachable after 2 attempts.*tracking.enabled: false"):
        Tracker(params)
    assert time.monotonic() - start < 10


def test_offline_mode_records_nothing_and_says_so(tmp_path, caplog):
    from tests.conftest import tiny_params_dict, write_params

    raw = tiny_params_dict(tmp_path)
    raw["tracking"]["enabled"] = False
    from ops.config import load_params

    params = load_params(write_params(tmp_path, raw))
    tracker = Tracker(params)
    with caplog.at_level(logging.WARNING, logger="ops.tracking"):
        assert tracker.log_step(TASK, "export") is None
    assert "not recorded" in caplog.text
    with pytest.raises(TrackingError, match="tracking.enabled is false"):
        tracker.promote(TASK)
    assert not (tmp_path / "mlruns.db").exists()


def test_the_decision_is_recorded_as_an_artefact_of_the_release_run(tracked_params):
    params = tracked_params
    _dataset(params)
    tracker = Tracker(params)
    decision = _release(tracker, params, "v1", map50=0.80)
    client = MlflowClient(tracker.uri)
    local = client.download_artifacts(decision.run_id, "decision.json", str(params.project.artifacts_dir))
    assert json.loads(Path(local).read_text())["decision"] == "promoted"


def _benchmarked(params: Params, fastest: str) -> None:
    """The ``cpu_serving`` entry `visionforge benchmark` writes, for the files on disk now."""
    layout = TaskLayout.for_task(params, TASK)
    files = {"onnx": layout.onnx, "onnx-int8": layout.onnx_int8}
    choice = {
        "size": "256x256",
        "format": fastest,
        "sha256": {fmt: sha256_file(path) for fmt, path in files.items()},
        "reason": f"{fastest} was faster",
    }
    write_json(layout.benchmark_dir / "trained" / "benchmark.json", {"cpu_serving": [choice]})


def test_the_release_names_the_faster_cpu_format_only_from_a_benchmark_of_its_files(tracked_params):
    params = tracked_params
    _dataset(params)
    tracker = Tracker(params)
    never = _release(tracker, params, "v1", map50=0.80)
    assert never.cpu_serving == {} and "never benchmarked" in " ".join(never.reasons)

    _benchmarked(params, "onnx")
    chosen = tracker.promote(TASK, pipeline_run="run-v1")
    assert chosen.cpu_serving == {"256x256": "onnx"}
    assert "CPU serving at 256x256: onnx, onnx was faster" in chosen.reasons
    tags = MlflowClient(tracker.uri).get_run(chosen.run_id).data.tags
    assert tags["serving.cpu.256x256"] == "onnx"

    stale = _release(tracker, params, "v2", map50=0.80)  # new files; the benchmark measured v1's
    assert stale.cpu_serving == {}
    assert "the last benchmark was of other onnx, onnx-int8 files" in " ".join(stale.reasons)


@pytest.mark.slow
def test_visionforge_promote_records_the_decision_and_exits_1_when_blocked(tracked_params, tmp_path):
    params = tracked_params
    _dataset(params)
    tracker = Tracker(params)
    _artefacts(params, "v1")
    _validated(params, map50=0.8)
    tracker.log_step(TASK, "validate")
    promoted = run_cli(
        "promote", "traffic", "--params", str(tmp_path / "params.yaml"), cwd=tmp_path, timeout=300
    )
    assert promoted.returncode == 0, promoted.stderr
    assert json.loads(promoted.stdout)["decision"] == "promoted"

    _artefacts(params, "v2")
    _validated(params, map50=0.9, failed_gate="map50_drop_onnx")
    tracker.log_step(TASK, "validate")
    blocked = run_cli(
        "promote", "traffic", "--params", str(tmp_path / "params.yaml"), cwd=tmp_path, timeout=300
    )
    assert blocked.returncode == 1
    assert "blocked" in blocked.stderr and "map50_drop_onnx" in blocked.stderr
    assert _alias(MlflowClient(tracker.uri), "onnx", ALIAS_CHAMPION) == "1"
