"""The deployed configuration (docker/), run as processes on 127.0.0.1 with real components.

A PostgreSQL 15 cluster started here holds Dagster's storage and MLflow's backend store; nanio
stands in for the S3 service; the MLflow server keeps its artefacts in the bucket. Dagster runs
as the compose file lays it out: a code server, the webserver and the daemon, three processes
reading docker/dagster.yaml and docker/workspace.yaml. Two changes, both because this is one
machine without Docker: the run launcher is Dagster's default (runs are subprocesses of the
code server), and runs started by the schedule are held in the queue (they would compete for
the 2 cores; their ticks are what is checked).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from assets.factory import STAGES
from pipelines.automation import TASK_TAG
from tests.conftest import REPO_ROOT, tiny_params_dict, write_params
from tests.services import (
    BIN,
    PostgresServer,
    free_port,
    postgres_bin,
    start_nanio,
    stop_group,
    wait_for_http,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        postgres_bin() is None, reason="Debian's PostgreSQL 15 (postgresql-15) is not installed"
    ),
]

TASK = "sidd"
BUCKET = "visionforge"
LOCATION = "visionforge"
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
FIGURES = REPO_ROOT / "build" / "stack-test.json"
# What psycopg2 says of a connection the server closed while it sat in a pool
STALE_CONNECTION = ("closed the connection", "terminating connection", "connection already closed")


@dataclass
class Stack:
    workdir: Path
    env: dict[str, str]
    postgres: PostgresServer
    webserver_port: int
    mlflow_url: str
    s3_endpoint: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("a")
        self.processes[name] = subprocess.Popen(
            argv, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self.processes[name]

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            stop_group(process)

    def start_daemon(self) -> None:
        self.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"])

    def client(self):
        from dagster_graphql import DagsterGraphQLClient

        return DagsterGraphQLClient("127.0.0.1", port_number=self.webserver_port, timeout=60)

    def sql(self, query: str, *args: object) -> list[tuple]:
        import psycopg2

        conn = psycopg2.connect(self.postgres.url("dagster"))
        try:
            with conn.cursor() as cursor:
                cursor.execute(query, args)
                return cursor.fetchall()
        finally:
            conn.close()

    def run_status(self, run_id: str) -> str:
        rows = self.sql("SELECT status FROM runs WHERE run_id = %s", run_id)
        return rows[0][0] if rows else "ABSENT"

    def wait_for_status(self, run_id: str, wanted: set[str], timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        status = "ABSENT"
        while time.monotonic() < deadline:
            try:
                status = self.run_status(run_id)
            except Exception:  # PostgreSQL restarting: ask again
                status = "UNREACHABLE"
            if status in wanted:
                return status
            time.sleep(1)
        raise AssertionError(f"run {run_id} still {status} after {timeout_s} s (logs in {self.workdir})")

    def stop_all(self) -> None:
        for name in ("daemon", "webserver", "code-server", "mlflow", "nanio"):
            self.stop(name)
        self.postgres.remove()


def _deployed_dagster_yaml() -> dict:
    """docker/dagster.yaml with the default run launcher and scheduled runs held in the queue."""
    instance = yaml.safe_load((REPO_ROOT / "docker" / "dagster.yaml").read_text())
    del instance["run_launcher"]
    limits = instance["run_coordinator"]["config"]["tag_concurrency_limits"]
    limits.append({"key": "dagster/schedule_name", "limit": 0})
    return instance


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    postgres = PostgresServer(user="visionforge", password="pg-" + uuid.uuid4().hex)
    access_key, secret_key = "vfaccess" + uuid.uuid4().hex[:8], "vfsecret" + uuid.uuid4().hex
    started_at = time.monotonic()
    postgres.init()
    postgres.start()
    postgres.create_database("dagster")
    postgres.create_database("mlflow")
    nanio, s3_endpoint = start_nanio(workdir / "s3", BUCKET, access_key, secret_key, workdir / "nanio.log")

    write_params(workdir, tiny_params_dict(workdir))
    overlay = yaml.safe_load((REPO_ROOT / "docker" / "params.deploy.yaml").read_text())
    overlay["storage"]["s3"]["endpoint_url"] = s3_endpoint
    (workdir / "params.deploy.yaml").write_text(yaml.safe_dump(overlay))
    home = workdir / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(_deployed_dagster_yaml()))
    shutil.copy(REPO_ROOT / "docker" / "workspace.yaml", workdir / "workspace.yaml")

    mlflow_port, code_port, web_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        **postgres.dagster_env(),
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "VISIONFORGE_PARAMS_OVERLAY": str(workdir / "params.deploy.yaml"),
        "VISIONFORGE_CODE_SERVER_HOST": "127.0.0.1",
        "VISIONFORGE_CODE_SERVER_PORT": str(code_port),
        # a tick every minute and a sensor evaluation every 5 s, so both happen during the test
        "VISIONFORGE_RETRAIN_CRON": "* * * * *",
        "VISIONFORGE_SENSOR_INTERVAL_S": "5",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # GenAI job runner: idle processes
        "PYTHONPATH": str(REPO_ROOT),
    }
    env.pop("MLFLOW_TRACKING_USERNAME", None)
    stack = Stack(
        workdir, env, postgres, web_port, env["MLFLOW_TRACKING_URI"], s3_endpoint, started_at=started_at
    )
    stack.processes["nanio"] = nanio
    try:
        mlflow = stack.start(
            "mlflow",
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
                "--backend-store-uri",
                postgres.url("mlflow", driver="psycopg2"),
                "--serve-artifacts",
                "--artifacts-destination",
                f"s3://{BUCKET}/mlflow",
            ],
        )
        code_server = stack.start(
            "code-server",
            [
                str(BIN / "dagster"),
                "code-server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(code_port),
                "--module-name",
                "pipelines.definitions",
                "--location-name",
                LOCATION,
            ],
        )
        webserver = stack.start(
            "webserver",
            [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(web_port), "-w", "workspace.yaml"],
        )
        stack.start_daemon()
        wait_for_http(f"{stack.mlflow_url}/health", mlflow, 240)
        wait_for_http(f"http://127.0.0.1:{web_port}/server_info", webserver, 240)
        deadline = time.monotonic() + 240
        while True:
            status = _location_status(stack)
            if status == "LOADED" or time.monotonic() > deadline or code_server.poll() is not None:
                break
            time.sleep(1)
        assert status == "LOADED", f"code location {LOCATION}: {status} (see {workdir}/code-server.log)"
        stack.figures["stack_ready_s"] = round(time.monotonic() - started_at, 1)
        yield stack
    finally:
        stack.stop_all()
        FIGURES.parent.mkdir(exist_ok=True)
        FIGURES.write_text(json.dumps(stack.figures, indent=2) + "\n")
        print(f"\nstack figures ({FIGURES}): {json.dumps(stack.figures)}")


def _location_status(stack: Stack) -> str:
    query = (
        "{ workspaceOrError { ... on Workspace { locationEntries {"
        " name loadStatus locationOrLoadError { __typename } } } } }"
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.webserver_port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            data = json.load(response)["data"]
    except OSError as exc:  # the webserver is still loading
        return f"not answering ({type(exc).__name__})"
    entries = {e["name"]: e for e in data["workspaceOrError"]["locationEntries"]}
    entry = entries.get(LOCATION)
    if entry is None:
        return "absent"
    if entry["loadStatus"] != "LOADED":
        return entry["loadStatus"]
    return "LOADED" if entry["locationOrLoadError"]["__typename"] == "RepositoryLocation" else "load error"


# Steps in the run's own process: the deployment's default starts one process per step, which
# costs an import of torch and Dagster each on these 2 cores and tests nothing more here.
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}


def _submit(stack: Stack, job: str, **kwargs) -> str:
    return stack.client().submit_job_execution(
        job,
        repository_location_name=LOCATION,
        repository_name="__repository__",
        run_config=IN_PROCESS,
        **kwargs,
    )


def test_a_graphql_run_materialises_the_chain_into_postgres_mlflow_and_s3_across_a_daemon_restart(stack):
    launched = time.monotonic()
    run_id = _submit(
        stack, "__ASSET_JOB", asset_selection=[[TASK, stage] for stage in STAGES], tags={TASK_TAG: TASK}
    )
    # The queue is drained by the daemon: the run starts only once it dequeues it.
    stack.wait_for_status(run_id, {"STARTED", *TERMINAL}, 120)
    stack.stop("daemon")  # SIGTERM to its process group, SIGKILL for what is left
    time.sleep(2)
    stack.start_daemon()
    assert stack.wait_for_status(run_id, TERMINAL, 900) == "SUCCESS", f"see {stack.workdir}"
    stack.figures["launch_to_materialised_chain_s"] = round(time.monotonic() - launched, 1)
    stack.figures["start_to_materialised_chain_s"] = round(time.monotonic() - stack.started_at, 1)

    # One run, not lost and not duplicated by the restarted daemon; its events are rows here.
    assert stack.sql("SELECT count(*) FROM runs WHERE run_id = %s", run_id) == [(1,)]
    materialised = stack.sql(
        "SELECT DISTINCT asset_key FROM event_logs "
        "WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
        run_id,
    )
    assert {json.loads(key)[1] for (key,) in materialised} == set(STAGES)
    assert stack.sql(
        "SELECT count(*) FROM runs WHERE pipeline_name = '__ASSET_JOB' AND run_id <> %s", run_id
    ) == [(0,)]

    # The registry is the server's (PostgreSQL), its files are in the bucket.
    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow_url)
    versions = [v for model in client.search_registered_models() for v in model.latest_versions or []]
    assert versions, "nothing registered on the MLflow server"
    champions = [
        model.name for model in client.search_registered_models() if "champion" in (model.aliases or {})
    ]
    assert f"{TASK}-denoiser-onnx" in champions, champions
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=stack.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=stack.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=stack.env["AWS_SECRET_ACCESS_KEY"],
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="mlflow/").get("Contents", [])]
    assert any(key.endswith(".onnx") for key in keys), keys
    stack.figures["objects_in_bucket"] = len(keys)


def test_doctor_finds_every_system_of_the_stack_reachable_authenticated_and_writable(stack):
    result = subprocess.run(
        [str(BIN / "visionforge"), "doctor"], cwd=stack.workdir, env=stack.env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["OK", "mlflow"], ["OK", "s3"], ["OK", "dvc"], ["OK", "dagster"], ["OK", "code"]
    ]  # fmt: skip
    assert "server reachable, authenticated, writable" in lines[0]
    assert f"postgresql+psycopg2://***@127.0.0.1:{stack.postgres.port}/dagster" in lines[3]
    for secret in (
        stack.postgres.password,
        stack.env["AWS_SECRET_ACCESS_KEY"],
        stack.env["AWS_ACCESS_KEY_ID"],
    ):
        assert secret not in result.stdout + result.stderr


def test_the_daemon_recorded_schedule_ticks_and_sensor_evaluations(stack):
    held_runs = (
        "SELECT r.run_id, r.status FROM runs r JOIN run_tags t ON t.run_id = r.run_id "
        "WHERE t.key = 'dagster/schedule_name'"
    )
    deadline = time.monotonic() + 90  # the cron ticks on the minute
    while time.monotonic() < deadline:
        kinds = dict(stack.sql("SELECT type, count(*) FROM job_ticks GROUP BY type"))
        scheduled = stack.sql(held_runs)
        if kinds.get("SENSOR") and any(status == "QUEUED" for _, status in scheduled):
            break
        time.sleep(2)
    assert kinds.get("SCHEDULE") and kinds.get("SENSOR"), kinds
    stack.figures["ticks"] = kinds
    # A tick creates its runs (NOT_STARTED) and puts them in the queue (QUEUED), where this
    # test's instance holds them: none ever started.
    assert {status for _, status in scheduled} <= {"NOT_STARTED", "QUEUED"}, scheduled
    queued = [run_id for run_id, status in scheduled if status == "QUEUED"]
    assert queued, scheduled
    for run_id in queued:
        stack.client().terminate_run(run_id)
    for run_id in queued:
        stack.wait_for_status(run_id, {"CANCELED"}, 60)


def test_a_postgres_restart_mid_run_ends_the_run_and_the_next_run_succeeds(stack):
    from dagster_graphql import DagsterGraphQLClientError

    run_id = _submit(stack, f"release_{TASK}")
    stack.wait_for_status(run_id, {"STARTED", *TERMINAL}, 120)
    time.sleep(1)
    stack.postgres.stop()
    time.sleep(5)
    stack.postgres.start()
    outcome = stack.wait_for_status(run_id, TERMINAL, 600)
    stack.figures["postgres_restart_run"] = outcome
    # Whatever the run made of the outage, it ended: nothing is left STARTED, nothing duplicated.
    assert stack.sql("SELECT count(*) FROM runs WHERE status IN ('STARTED', 'STARTING')") == [(0,)]
    assert stack.sql("SELECT count(*) FROM runs WHERE run_id = %s", run_id) == [(1,)]

    # The webserver keeps one pooled connection per storage without a liveness check, so its
    # first queries after the restart meet the closed connection; SQLAlchemy then drops it.
    stale = []
    for _attempt in range(5):  # one stale connection per storage at most
        try:
            next_run = _submit(stack, f"release_{TASK}")
            break
        except DagsterGraphQLClientError as exc:
            assert any(sign in str(exc) for sign in STALE_CONNECTION), exc
            stale.append(str(exc).splitlines()[0])
    else:
        raise AssertionError(f"the webserver did not recover from the restart: {stale}")
    stack.figures["webserver_requests_refused_after_restart"] = len(stale)
    assert stack.wait_for_status(next_run, TERMINAL, 600) == "SUCCESS", f"see {stack.workdir}"


def test_no_secret_is_in_any_event_run_tag_or_log_line(stack):
    secrets = (stack.postgres.password, stack.env["AWS_SECRET_ACCESS_KEY"], stack.env["AWS_ACCESS_KEY_ID"])
    for secret in secrets:
        pattern = f"%{secret}%"
        assert stack.sql("SELECT count(*) FROM event_logs WHERE event LIKE %s", pattern) == [(0,)]
        assert stack.sql("SELECT count(*) FROM run_tags WHERE value LIKE %s", pattern) == [(0,)]
        assert stack.sql("SELECT count(*) FROM runs WHERE run_body LIKE %s", pattern) == [(0,)]
    logs = list(stack.workdir.glob("*.log")) + list(stack.workdir.glob("dagster_home/**/*"))
    for path in (p for p in logs if p.is_file()):
        text = path.read_text(errors="replace")
        assert not any(secret in text for secret in secrets), f"a secret in {path}"


def test_stopping_the_stack_leaves_nothing_running(stack):
    processes = list(stack.processes.values())
    postgres = stack.postgres.process
    stack.stop_all()
    for process in [*processes, postgres]:
        assert process.poll() is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)  # no member of its group survives (run workers included)
