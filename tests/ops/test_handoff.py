"""Steps in separate working directories (as Kubeflow's pods are) hand files over through a real
S3-protocol server on 127.0.0.1 (nanio, which checks request signatures)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.config import load_params
from ops.handoff import Handoff, step_files
from tests.conftest import run_cli, tiny_params_dict, write_params
from tests.services import start_nanio, stop_group

pytestmark = pytest.mark.slow

ACCESS_KEY = "vfaccess" + uuid.uuid4().hex[:8]
SECRET_KEY = "vfsecret" + uuid.uuid4().hex
BUCKET = "visionforge-runs"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("nanio")
    process, url = start_nanio(data / "data", BUCKET, ACCESS_KEY, SECRET_KEY, data / "nanio.log")
    try:
        yield url
    finally:
        stop_group(process)


@pytest.fixture
def pods(tmp_path, endpoint, mlflow_template_db, monkeypatch) -> dict[str, Path]:
    """Three empty working directories with the same params (paths relative, as in the image)."""
    raw = tiny_params_dict(tmp_path)
    raw["project"] = {"data_dir": "data", "artifacts_dir": "artifacts"}
    raw["sidd"]["dataset"]["root"] = "data/sidd"
    raw["sidd"]["train"]["epochs"] = 1
    raw["storage"] = {
        "remote": "s3",
        "local_dir": ".dvc-storage",
        "s3": {"bucket": BUCKET, "prefix": "team", "endpoint_url": endpoint, "region": "us-east-1"},
    }
    shutil.copyfile(mlflow_template_db, tmp_path / "mlruns.db")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    pods = {}
    for name in ("ingest", "train", "export"):
        pods[name] = tmp_path / name
        pods[name].mkdir()
        write_params(pods[name], raw)
    return pods


def _step(pod: Path, step: str, run: str):
    return run_cli(step, "sidd", "--pipeline-run", run, "--params", "params.yaml", cwd=pod)


def test_each_pod_starts_empty_and_reads_what_the_earlier_pods_wrote(pods):
    run = "run-" + uuid.uuid4().hex[:8]
    ingest = _step(pods["ingest"], "ingest", run)
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    assert not (pods["train"] / "data").exists()

    train = _step(pods["train"], "train", run)
    assert train.returncode == 0, train.stderr[-2000:]
    assert (pods["train"] / "data/sidd/SIDD_Small_sRGB_Only").is_dir(), "the dataset came from S3"
    outcome = json.loads(train.stdout[train.stdout.index("{\n") :])
    params = load_params(pods["train"] / "params.yaml")
    assert outcome["handed_over"] == len(
        [p for p in step_files(params, "sidd", "train").outputs if (pods["train"] / p).is_file()]
    )

    export = _step(pods["export"], "export", run)
    assert export.returncode == 0, export.stderr[-2000:]
    assert (pods["export"] / "artifacts" / "sidd" / "model" / "model.pt").read_bytes() == (
        pods["train"] / "artifacts" / "sidd" / "model" / "model.pt"
    ).read_bytes()
    assert (pods["export"] / "artifacts" / "sidd" / "onnx" / "model.onnx").is_file()
    assert not (pods["export"] / "artifacts" / "sidd" / "int8").exists(), "only the step's inputs"

    keys = Handoff(params, run).store.list("runs", run)
    assert f"team/runs/{run}/artifacts/sidd/onnx/model.onnx" in keys
    assert any(key.startswith(f"team/runs/{run}/data/sidd/SIDD_Small_sRGB_Only/") for key in keys)


def test_a_missing_input_names_the_file_and_where_it_was_looked_for(pods):
    run = "never-ingested"
    quantize = _step(pods["export"], "quantize", run)
    assert quantize.returncode == 2
    assert (
        f"sidd/quantize reads data/sidd, but nothing is at s3://{BUCKET}/team/runs/{run}/data/sidd"
        in quantize.stderr
    )
    assert not (pods["export"] / "data").exists()


def test_run_ids_and_paths_outside_the_working_directory_are_refused(pods):
    params = load_params(pods["train"] / "params.yaml")
    with pytest.raises(Exception, match="one non-empty name without '/'"):
        Handoff(params, "a/b")
    outside = load_params(pods["train"] / "params.yaml", {"sidd.dataset.root": "/srv/sidd"})
    with pytest.raises(Exception, match="only paths inside the working directory"):
        Handoff(outside, "r").pull("sidd", "train")
