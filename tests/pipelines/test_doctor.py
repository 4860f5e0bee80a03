"""The Dagster check of `visionforge doctor` on the deployment's own dagster.yaml (docker/) against
a PostgreSQL 15 started here: healthy, wrong password, unreachable. No password is ever printed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.services import PostgresServer, free_port, postgres_bin

pytestmark = pytest.mark.skipif(postgres_bin() is None, reason="Debian's PostgreSQL 15 is not installed")


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(user="visionforge", password="pg-" + uuid.uuid4().hex)
    try:
        server.init()
        server.start()
        server.create_database("dagster")
        yield server
    finally:
        server.remove()


def _check(home: Path, postgres: PostgresServer, system: str = "dagster", **overrides: str) -> dict:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        **postgres.dagster_env(),
        "VISIONFORGE_DOCKER_NETWORK": "visionforge",
        **overrides,
    }
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.doctor"], env=env, capture_output=True, text=True, timeout=180
    )
    checks = {check["system"]: check for check in json.loads(result.stdout.strip().splitlines()[-1])}
    assert result.returncode == (1 if any(c["status"] == "fail" for c in checks.values()) else 0)
    check = checks[system]
    for secret in (postgres.password, overrides.get("DAGSTER_POSTGRES_PASSWORD") or postgres.password):
        assert secret not in result.stdout + result.stderr
    return check


@pytest.fixture
def home(tmp_path: Path) -> Path:
    shutil.copy(REPO_ROOT / "docker" / "dagster.yaml", tmp_path / "dagster.yaml")  # as deployed
    return tmp_path


def test_the_deployed_instance_on_postgres_is_reachable_authenticated_and_writable(home, postgres):
    check = _check(home, postgres)
    assert check["status"] == "ok", check
    code = _check(home, postgres, system="code")
    assert code["status"] == "ok" and code["detail"].startswith("loads: 21 assets, 3 schedules, 3 sensors"), (
        code
    )
    assert check["target"] == f"postgresql+psycopg2://***@127.0.0.1:{postgres.port}/dagster"


def test_a_wrong_password_names_the_credentials_to_fix(home, postgres):
    check = _check(home, postgres, DAGSTER_POSTGRES_PASSWORD="wrong-" + uuid.uuid4().hex)
    assert check["status"] == "fail"
    assert "password authentication failed" in check["detail"]
    assert "DAGSTER_POSTGRES_PASSWORD" in check["detail"]


def test_an_unreachable_postgres_names_host_and_port(home, postgres):
    check = _check(home, postgres, DAGSTER_POSTGRES_PORT=str(free_port()))
    assert check["status"] == "fail"
    assert "DAGSTER_POSTGRES_HOST / DAGSTER_POSTGRES_PORT" in check["detail"], check


def test_an_unset_variable_of_the_deployed_config_is_named(home, postgres):
    check = _check(home, postgres, DAGSTER_POSTGRES_PASSWORD="")
    assert check["status"] == "fail"
    assert check["detail"].endswith("-> fix: set DAGSTER_POSTGRES_PASSWORD"), check


def test_a_code_location_that_does_not_load_names_the_setting(home, postgres):
    check = _check(home, postgres, system="code", VISIONFORGE_RETRAIN_CRON="every monday")
    assert check["status"] == "fail"
    assert check["detail"].startswith(
        "does not load: ConfigError: VISIONFORGE_RETRAIN_CRON='every monday'"
    ), check
