"""The fault-injection harness (``make faults``) against the real pipeline: a kill at every step
is survived, the invariant checks catch each kind of damage they guard against (a full disk's
and a dead service's included), and bad requests to the harness are refused. ``make faults``
runs the full campaign: the kills, a full disk at every step, the services killed and stalled."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch
from mlflow import MlflowClient

from benchmarks.faults import SECRETS, STEPS, Campaign, HarnessError, KillPoint, main, summarise
from benchmarks.service_faults import ServiceCampaign, ServiceFault
from ops.layout import TaskLayout
from ops.tracking import registered_model_name, tracking_uri
from tests.services import dead_pid

TASK = "sidd"


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campaign]:
    workdir = tmp_path_factory.mktemp("faults")
    campaign = Campaign(workdir, TASK)
    campaign.reference()
    yield campaign
    shutil.rmtree(workdir, ignore_errors=True)


def test_the_reference_passes_kill_points_in_every_writing_step(campaign):
    passed = {step: {name for name, _, _ in campaign.references[step].passes} for step in STEPS}
    assert "dataset:swap" in passed["ingest"]
    assert {"write:last.pt", "write:model.pt"} <= passed["train"]
    assert "write:model.onnx" in passed["export"]
    assert any(name.startswith("mlflow:registering") for name in passed["export"])
    assert any(name.startswith("mlflow:moving champion") for name in passed["promote"])
    assert passed["push"] == set()  # DVC's own code: killed after a delay instead
    assert campaign.violations("push") == []


def test_the_checks_catch_every_kind_of_damage(campaign):
    run = campaign.run_dir
    layout = TaskLayout.for_task(campaign.params(), TASK)
    leftover = layout.validation.parent / f".{layout.validation.name}.{dead_pid()}-0123abcd.tmp"
    leftover.write_text("{")
    metrics = layout.metrics("onnx")
    metrics.write_text(metrics.read_text()[:10])

    uri = tracking_uri(campaign.params())
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = registered_model_name(TASK, "onnx")
    champion = client.get_model_version_by_alias(name, "champion")
    Path(unquote(urlparse(champion.source).path)).write_bytes(b"not the model")
    unvalidated = client.create_model_version(name, champion.source, tags={"sha256": "0" * 64})
    client.set_registered_model_alias(name, "candidate", unvalidated.version)
    remote_object = next(p for p in (run / "dvc-storage").rglob("*") if p.is_file())
    remote_object.write_bytes(b"truncated")
    (run / "artifacts" / "notes.txt").write_text(f"key={SECRETS['AWS_SECRET_ACCESS_KEY']}")

    found = "\n".join(campaign.violations("push"))
    assert f"a killed writer's leftover remains: {leftover.relative_to(run)}" in found
    assert f"truncated or corrupt JSON: {metrics.relative_to(run)}" in found
    assert f"{name} v{champion.version}'s file does not match its sha256 tag" in found
    assert f"{name}@candidate points at v{unvalidated.version}, whose validation did not pass" in found
    assert "does not hash to its name" in found
    assert f"AWS_SECRET_ACCESS_KEY appears in {run / 'artifacts' / 'notes.txt'}" in found
    assert "push's outputs differ" not in found  # the remote still holds the same objects


def test_a_kill_at_every_step_is_survived(campaign):
    """One landed kill per step: a drawn delay may outlast its step on a busy machine, so each
    step takes its draws in turn until one kill lands."""
    plan = campaign.plan(4 * len(STEPS), seed=1)
    trials = []
    for step in STEPS:
        for point in (p for p in plan if p.step == step):
            trials.append(campaign.trial(point))
            if trials[-1].killed:
                break
    rows = {row["step"]: row for row in summarise(STEPS, trials)}
    problems = [v for t in trials for v in t.violations]
    assert problems == []
    assert all(row["fault"] == "kill" for row in rows.values())
    assert all(row["faults"] == 1 and row["recovered"] == 1 for row in rows.values()), rows


def test_a_killed_training_resumes_to_the_uninterrupted_weights(campaign):
    trial = campaign.trial(KillPoint("train", "write:last.pt", 2))
    assert trial.killed and trial.rerun_exit == 0 and trial.violations == []
    log = (campaign.workdir / "logs" / "train.log").read_text()
    assert "resuming from" in log


def test_bad_requests_to_the_harness_are_refused(campaign, tmp_path, capsys):
    with pytest.raises(HarnessError, match="unknown step.*bogus.*the steps are ingest"):
        Campaign(tmp_path, TASK, ("ingest", "bogus"))
    with pytest.raises(HarnessError, match="no step among .* passes write:nothing@1"):
        campaign.plan(3, seed=0, point="write:nothing@1")
    with pytest.raises(HarnessError, match="passes write:last.pt@99"):
        campaign.plan(1, seed=0, point="write:last.pt@99")
    assert main(["--steps", "bogus", "--workdir", str(tmp_path / "w")]) == 2
    assert "unknown step(s) bogus" in capsys.readouterr().err


def test_the_full_disk_checks_catch_a_traceback_a_silent_failure_and_a_half_written_file(campaign):
    path = "/run/artifacts/sidd/onnx/model.onnx"
    ours = f"visionforge export: error: no space left on the device writing {path}: it needs more than 1 MiB"
    dvcs = "ERROR: failed to transfer 'c4' - [Errno 28] No space left on device\nERROR: failed to push data"
    assert Campaign.full_disk_error("export", 2, "progress\n" + ours) == []
    assert Campaign.full_disk_error("push", 1, dvcs) == []
    traceback = "Traceback (most recent call last):\n  File x\nOSError: [Errno 28] No space left on device"
    assert "printed a traceback" in Campaign.full_disk_error("export", 1, traceback)[0]
    assert "ended without an error" in Campaign.full_disk_error("export", 1, "epoch 2 done\n")[0]
    advice = "Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!"
    index_full = f"ERROR: unexpected error - database or disk is full\n\n{advice}\n"
    assert Campaign.full_disk_error("push", 255, index_full) == []
    vague = "visionforge export: error: could not write the model"
    assert "did not say that the disk is full" in Campaign.full_disk_error("export", 2, vague)[0]
    assert "died of signal 9" in Campaign.full_disk_error("export", -9, "")[0]

    campaign.restore("train")
    layout = TaskLayout.for_task(campaign.params(), TASK)
    layout.onnx.parent.mkdir(parents=True, exist_ok=True)
    layout.onnx.write_bytes(b"\x08\x07half an ONNX model")
    earlier = {"epoch": 0, "model_state": {"w": torch.zeros(2)}}
    layout.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save(earlier, layout.checkpoint)  # complete on its own: an earlier epoch's checkpoint
    found = campaign.half_written("export")
    assert found == [f"a half-written file looks complete: {layout.onnx.relative_to(campaign.run_dir)}"]


def test_the_service_checks_want_one_error_naming_the_service_and_the_timeout(tmp_path):
    served = ServiceCampaign(tmp_path, TASK, STEPS)  # no server starts until its reference runs
    mlflow = served.services.mlflow_uri
    killed = ServiceFault("export", "mlflow", "killed", nth=3)
    named = f"visionforge export: error: MLflow at {mlflow}: registering sidd-denoiser-onnx failed: refused"
    assert served.service_error(killed, 2, "working\n" + named, 12.0) == []
    traceback = "Traceback (most recent call last):"
    assert "printed a traceback" in served.service_error(killed, 1, traceback, 3)[0]
    assert "does not name" in served.service_error(killed, 2, "visionforge export: error: failed", 3)[0]
    stalled = ServiceFault("push", "s3", "stalled")
    endpoint = served.services.s3_endpoint
    dvc_timeout = f"ERROR: failed to push data to the cloud - Read timeout on endpoint URL: {endpoint}/b"
    assert served.service_error(stalled, 1, dvc_timeout, 40.0) == []
    advice = "Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!"
    assert served.service_error(stalled, 255, f"{dvc_timeout}\n\n{advice}\n", 300.0) == []
    refused = f"ERROR: failed to push data to the cloud - Could not connect to {endpoint}"
    assert "does not name the timeout" in served.service_error(stalled, 1, refused, 40.0)[0]
    assert "took 900 s to fail" in served.service_error(stalled, 1, dvc_timeout, 900.0)[0]
