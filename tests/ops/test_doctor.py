"""`visionforge doctor` against real systems: the embedded default, an unreachable MLflow server,
an unwritable DVC remote, and a real S3-compatible server (nanio) with good and bad settings."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import tiny_params_dict, write_params
from tests.services import free_port, start_nanio, stop_group

ACCESS_KEY = "vfaccess" + uuid.uuid4().hex[:8]
SECRET_KEY = "vfsecret" + uuid.uuid4().hex
BUCKET = "doctor-bucket"


def _doctor(workdir: Path, env: dict[str, str], *args: str) -> tuple[int, dict[str, dict]]:
    result = subprocess.run(
        [str(Path(os.sys.executable).parent / "visionforge"), "doctor", "--json", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    checks = {check["system"]: check for check in json.loads(result.stdout)}
    return result.returncode, checks


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DAGSTER_HOME")}
    return {**env, **extra}


def test_the_embedded_default_is_healthy_and_printed_one_line_per_system(tmp_path):
    write_params(tmp_path, tiny_params_dict(tmp_path))
    (tmp_path / "dagster_home").mkdir()
    result = subprocess.run(
        [str(Path(os.sys.executable).parent / "visionforge"), "doctor"],
        cwd=tmp_path,
        env=_env(DAGSTER_HOME=str(tmp_path / "dagster_home")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["OK", "mlflow"], ["OK", "s3"], ["OK", "dvc"], ["OK", "dagster"], ["OK", "code"]
    ]  # fmt: skip
    assert "embedded store readable, writable" in lines[0]
    assert f"SQLite in {tmp_path / 'dagster_home'}" in lines[3]


def test_each_broken_system_is_one_failed_line_naming_the_fix(tmp_path):
    raw = tiny_params_dict(tmp_path)
    raw["tracking"].update(connect_retries=1, connect_timeout_s=2)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the DVC remote should be")
    raw["storage"]["local_dir"] = str(blocker / "remote")
    write_params(tmp_path, raw)
    code, checks = _doctor(tmp_path, _env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}"))
    assert code == 1
    assert checks["mlflow"]["status"] == "fail"
    assert "unreachable" in checks["mlflow"]["detail"] and "MLFLOW_TRACKING_URI" in checks["mlflow"]["detail"]
    assert checks["dvc"]["status"] == "fail" and "storage.local_dir" in checks["dvc"]["detail"]
    assert checks["dagster"]["status"] == "warn" and "DAGSTER_HOME" in checks["dagster"]["detail"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """nanio's URL and the directory it keeps the buckets in."""
    data = tmp_path_factory.mktemp("doctor-s3")
    process, endpoint = start_nanio(data / "data", BUCKET, ACCESS_KEY, SECRET_KEY, data / "nanio.log")
    try:
        yield endpoint, data / "data"
    finally:
        stop_group(process)


def _s3_workdir(tmp_path: Path, endpoint: str, bucket: str = BUCKET) -> Path:
    tmp_path.mkdir(exist_ok=True)
    raw = tiny_params_dict(tmp_path)
    raw["storage"] = {
        "remote": "s3",
        "local_dir": ".dvc-storage",
        "s3": {"bucket": bucket, "prefix": "team", "endpoint_url": endpoint, "region": "us-east-1"},
    }
    raw["tracking"].update(enabled=False)
    write_params(tmp_path, raw)
    return tmp_path


def test_s3_and_the_dvc_remote_in_it_are_written_with_good_credentials(tmp_path, s3):
    endpoint, buckets = s3
    env = _env(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    code, checks = _doctor(_s3_workdir(tmp_path, endpoint), env)
    assert checks["s3"]["status"] == "ok", checks["s3"]
    assert checks["s3"]["detail"] == "bucket reachable, authenticated, writable"
    assert checks["dvc"]["status"] == "ok" and f"s3://{BUCKET}/team/dvc" in checks["dvc"]["target"]
    assert checks["mlflow"]["status"] == "warn"  # tracking switched off is said, not failed
    assert code == 0
    assert not [p for p in buckets.rglob("*") if p.is_file()], "a probe object was left behind"


def test_a_wrong_secret_and_a_missing_bucket_name_their_settings_and_print_no_secret(tmp_path, s3):
    s3_endpoint, _ = s3
    wrong = "wrongsecret" + uuid.uuid4().hex
    env = _env(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=wrong)
    code, checks = _doctor(_s3_workdir(tmp_path / "a", s3_endpoint), env)
    assert code == 1
    assert "refused the credentials" in checks["s3"]["detail"]
    assert "AWS_SECRET_ACCESS_KEY" in checks["s3"]["detail"]
    assert wrong not in json.dumps(checks) and ACCESS_KEY not in json.dumps(checks)

    env = _env(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    code, checks = _doctor(_s3_workdir(tmp_path / "b", s3_endpoint, bucket="no-such-bucket"), env)
    assert code == 1
    assert "does not exist (create it, or fix storage.s3.bucket)" in checks["s3"]["detail"]
