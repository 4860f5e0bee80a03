"""The deployment's files checked offline: hadolint on every Dockerfile, `docker compose config`
on the compose file (the compose v2 plugin from PyPI, no engine needed), and what the files
promise each other (every variable compose needs is in .env.example, no secret is committed)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.services import BIN

DOCKER = REPO_ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
SECRETS = ("POSTGRES_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def _env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.lstrip().startswith("#")}


def _compose_config(env_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(BIN / "docker-compose"),
            "-f",
            str(COMPOSE),
            "--env-file",
            str(env_file),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("dockerfile", sorted(p.name for p in DOCKER.glob("Dockerfile*")))
def test_every_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run(
        [str(BIN / "hadolint"), str(DOCKER / dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_renders_the_whole_stack_with_a_filled_env(tmp_path):
    env = {**_env_example(), **{name: f"value-of-{name.lower()}" for name in SECRETS}}
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    result = _compose_config(env_file)
    assert result.returncode == 0, result.stderr
    import json

    config = json.loads(result.stdout)
    services = config["services"]
    assert set(services) == {
        "postgres", "s3", "create-bucket", "dagster-home", "mlflow", "code-server", "webserver", "daemon",
    }  # fmt: skip
    # start order: Dagster waits for its database and code server; MLflow for its bucket
    assert services["webserver"]["depends_on"]["code-server"]["condition"] == "service_healthy"
    assert services["daemon"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "s3", "mlflow", "code-server", "webserver"):
        assert "healthcheck" in services[name], name
    # the UIs are published on the host's loopback only, unless UI_BIND says otherwise
    published = {p["host_ip"] for name in ("webserver", "mlflow") for p in services[name]["ports"]}
    assert published == {"127.0.0.1"}
    # the run launcher mounts volumes and joins the network by these names
    instance = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    volumes = {v.split(":")[0] for v in instance["run_launcher"]["config"]["container_kwargs"]["volumes"]}
    assert volumes <= {v["name"] for v in config["volumes"].values()}
    assert config["networks"]["visionforge"]["name"] == "visionforge"
    assert services["code-server"]["environment"]["VISIONFORGE_DOCKER_NETWORK"] == "visionforge"
    # every variable the run launcher forwards is set on the processes that launch runs
    forwarded = instance["run_launcher"]["config"]["env_vars"]
    for name in forwarded:
        assert name in services["daemon"]["environment"], name
    # a run's own process loads this instance too: whatever dagster.yaml reads must reach it
    read = set(re.findall(r"\{env: ([A-Z_]+)\}", (DOCKER / "dagster.yaml").read_text()))
    assert read <= set(forwarded), read - set(forwarded)


def test_a_missing_secret_names_the_setting_to_fix(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_EXAMPLE.read_text())  # copied but not filled in
    result = _compose_config(env_file)
    assert result.returncode != 0
    for name in SECRETS:
        assert f"required variable {name} is missing a value: set {name} in docker/.env" in result.stderr


def test_env_example_lists_every_variable_and_commits_no_secret():
    settings = "\n".join(
        line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    required = set(re.findall(r"\$\{([A-Z_]+)", settings))
    example = _env_example()
    assert required <= set(example), required - set(example)
    assert all(example[name] == "" for name in SECRETS), "a secret has a value in .env.example"
    assert "/docker/.env" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def test_the_helm_values_launch_runs_as_kubernetes_jobs_with_the_same_queue():
    values = yaml.safe_load((DOCKER / "helm-values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"][:2] == ["--module-name", "pipelines.definitions"]
    assert values["postgresql"]["enabled"] is False  # an existing PostgreSQL, as in compose
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    compose_queue = yaml.safe_load((DOCKER / "dagster.yaml").read_text())["run_coordinator"]["config"]
    assert queue["maxConcurrentRuns"] == compose_queue["max_concurrent_runs"]
    assert queue["tagConcurrencyLimits"][0]["key"] == compose_queue["tag_concurrency_limits"][0]["key"]
