"""S3 through a real S3-compatible server (nanio, which checks request signatures) on 127.0.0.1:
boto3 round trips, bad credentials and a missing bucket, DVC push/pull, and an MLflow server
process keeping its artefacts in the bucket. Secrets must not leak into any output."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ops.config import Params, S3Config, load_params
from ops.errors import StorageError, VersioningError
from ops.storage import S3Store, dvc_remote, redact
from ops.versioning import configure_remote, pull, push, run_dvc
from tests.conftest import tiny_params_dict, write_params
from tests.services import free_port, start_mlflow_server, start_nanio, stop_group

ACCESS_KEY = "vfaccess" + uuid.uuid4().hex[:8]
SECRET_KEY = "vfsecret" + uuid.uuid4().hex
BUCKET = "visionforge-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Config]:
    """nanio serving one bucket on a free port of 127.0.0.1, started from the registry package."""
    data = tmp_path_factory.mktemp("nanio")
    process, endpoint = start_nanio(data, BUCKET, ACCESS_KEY, SECRET_KEY, data.parent / "nanio.log")
    try:
        yield S3Config(bucket=BUCKET, prefix="team/vf", endpoint_url=endpoint, region="us-east-1")
    finally:
        stop_group(process)


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}


def _s3_params(tmp_path: Path, s3: S3Config) -> Params:
    raw = tiny_params_dict(tmp_path)
    raw["storage"] = {"remote": "s3", "local_dir": ".dvc-storage", "s3": s3.model_dump()}
    return load_params(write_params(tmp_path, raw))


def test_redact_masks_secrets_of_the_environment_and_url_passwords(credentials):
    text = f"key {ACCESS_KEY} secret {SECRET_KEY} at http://user:pw@host:5000/x"
    assert redact(text) == "key *** secret *** at http://***@host:5000/x"


def test_boto3_round_trip_with_multipart(s3, credentials, tmp_path, caplog):
    store = S3Store(s3)
    store.check()
    small = tmp_path / "model.onnx"
    small.write_bytes(b"onnx" * 1000)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 << 20))  # above boto3's 8 MiB multipart threshold
    with caplog.at_level(logging.DEBUG, logger="ops"):
        assert store.upload(small, "models", "model.onnx") == f"s3://{BUCKET}/team/vf/models/model.onnx"
        store.upload(big, "models", "big.bin")
    assert sorted(store.list("models")) == ["team/vf/models/big.bin", "team/vf/models/model.onnx"]
    assert store.download(tmp_path / "back" / "big.bin", "models", "big.bin").read_bytes() == big.read_bytes()
    assert (
        store.download(tmp_path / "back" / "model.onnx", "models", "model.onnx").read_bytes()
        == small.read_bytes()
    )
    with pytest.raises(StorageError, match="no such object"):
        store.download(tmp_path / "back" / "absent", "models", "absent")
    assert not (tmp_path / "back" / "absent").exists()
    assert SECRET_KEY not in caplog.text and ACCESS_KEY not in caplog.text


def test_a_wrong_secret_is_refused_with_a_clear_error_that_prints_no_secret(s3, credentials, monkeypatch):
    wrong = "wrongsecret" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    with pytest.raises(StorageError, match=rf"bucket '{BUCKET}'.*refused the credentials") as info:
        S3Store(s3).check()
    assert wrong not in str(info.value) and SECRET_KEY not in str(info.value)
    with pytest.raises(StorageError, match="refused the credentials"):
        S3Store(s3).upload(Path(__file__), "x.py")


def test_a_missing_bucket_is_named(s3, credentials):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket'.*does not exist"):
        S3Store(s3.model_copy(update={"bucket": "no-such-bucket"})).check()


@pytest.mark.slow
def test_dvc_pushes_to_and_pulls_from_the_bucket(s3, credentials, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    params = _s3_params(repo, s3)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    run_dvc(["init", "--quiet"], repo)
    assert configure_remote(repo, params) == "s3"
    config = (repo / ".dvc" / "config").read_text()
    assert dvc_remote(params.storage).url in config and s3.endpoint_url in config
    assert SECRET_KEY not in config and ACCESS_KEY not in config
    data = repo / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "a.jpg").write_bytes(b"\xff\xd8a" * 100)
    (data / "labels.json").write_text('{"a": 1}')
    run_dvc(["add", "data"], repo)
    push(repo)
    assert len(S3Store(s3).list("dvc")) == 3  # two files and the directory listing
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(data)
    pull(repo)
    assert (data / "images" / "a.jpg").read_bytes() == b"\xff\xd8a" * 100

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrongsecret" + uuid.uuid4().hex)
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(data)
    with pytest.raises(VersioningError, match="dvc pull") as info:
        pull(repo)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(info.value)


@pytest.mark.slow
def test_an_mlflow_server_keeps_registered_artefacts_in_the_bucket(
    s3, credentials, tmp_path, monkeypatch, caplog, mlflow_template_db
):
    """The one test against a real `mlflow server` process: runs, registry and aliases through
    HTTP, artefacts proxied by the server into S3; no credential in any tag, param or log line."""
    from mlflow import MlflowClient

    from ops.tracking import Tracker
    from tests.ops.test_tracking import _artefacts, _dataset, _validated

    shutil.copyfile(mlflow_template_db, tmp_path / "server.db")  # migrated already: starts sooner
    port = free_port()
    server = start_mlflow_server(
        f"sqlite:///{tmp_path / 'server.db'}",
        f"s3://{BUCKET}/team/vf/mlflow",
        {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url, "AWS_DEFAULT_REGION": s3.region},
        tmp_path / "mlflow-server.log",
        tmp_path,
        port,
    )
    try:
        raw = yaml.safe_load(write_params(tmp_path, tiny_params_dict(tmp_path)).read_text())
        raw["tracking"]["uri"] = f"http://127.0.0.1:{port}"
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")):
            monkeypatch.setenv(name, value)  # what Tracker would set for the process, undone after
        params = load_params(write_params(tmp_path, raw))
        _dataset(params)
        _artefacts(params, "server")
        _validated(params, map50=0.8)
        tracker = Tracker(params)
        with caplog.at_level(logging.DEBUG):
            export = tracker.log_step("traffic", "export", pipeline_run="server-run")
            tracker.log_step("traffic", "validate", pipeline_run="server-run")
            decision = tracker.promote("traffic", pipeline_run="server-run")
        assert decision.decision == "promoted"
        client = MlflowClient(f"http://127.0.0.1:{port}")
        champion = client.get_model_version_by_alias("traffic-detector-onnx", "champion")
        assert str(champion.version) == export.registered["onnx"].version
        keys = S3Store(s3).list("mlflow")
        assert any(k.endswith("/onnx/model.onnx") for k in keys), keys
        assert any(k.endswith("/decision.json") for k in keys)

        texts = [caplog.text]
        for run in client.search_runs([export.experiment_id]):
            texts += [*run.data.tags.values(), *run.data.params.values()]
        for version in client.search_model_versions("name = 'traffic-detector-onnx'"):
            texts += [*version.tags.values(), version.source]
        assert not any(secret in text for text in texts for secret in (SECRET_KEY, ACCESS_KEY))
    finally:
        stop_group(server)


def test_the_embedded_store_keeps_artefacts_in_the_bucket_when_storage_is_s3(
    s3, credentials, tmp_path, monkeypatch, tracked_params
):
    from mlflow import MlflowClient

    from ops.tracking import Tracker
    from tests.ops.test_tracking import _artefacts, _dataset

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3.endpoint_url)  # Tracker sets it; undone after
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3.region)
    params = tracked_params.model_copy(
        update={"storage": tracked_params.storage.model_copy(update={"remote": "s3", "s3": s3})}
    )
    _dataset(params)
    _artefacts(params, "s3")
    tracker = Tracker(params)
    record = tracker.log_step("traffic", "export")
    location = MlflowClient(tracker.uri).get_experiment(record.experiment_id).artifact_location
    assert location == f"s3://{BUCKET}/team/vf/mlflow/visionforge-traffic"
    assert any(
        key.endswith(f"{record.run_id}/artifacts/onnx/model.onnx") for key in S3Store(s3).list("mlflow")
    )


def test_an_unreachable_endpoint_is_one_clear_error(credentials):
    cfg = S3Config(
        bucket=BUCKET, prefix="", endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1"
    )
    start = time.monotonic()
    with pytest.raises(StorageError, match=rf"cannot reach bucket '{BUCKET}' at http://127.0.0.1"):
        S3Store(cfg, max_attempts=2, timeout_s=1).check()
    assert time.monotonic() - start < 30
