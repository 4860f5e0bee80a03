"""Dead and slow services: the kill-anywhere campaign's pipeline against a real MLflow server
(its artefacts proxied into the bucket) and a real S3-compatible server (nanio, checking
signatures) on 127.0.0.1. The harness kills the MLflow server at a seeded MLflow call of a step,
takes S3 down before or during a step, or puts a server in its place that accepts connections
and never answers. Each step must fail with one error that names the service (and the timeout,
for a stall) in bounded time, leave the registry and the remote sound, and succeed when it runs
again with the service back, with the uninterrupted run's outputs.

The servers' state (the MLflow database, the bucket's files) lives in the run directory, so
restoring a step's snapshot restores it too; the servers are stopped around every restore.
``python -m benchmarks.faults --services`` runs these faults (``make faults`` does).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.faults import SECRETS, STEP_TIMEOUT_S, Campaign, Trial, error_line
from ops.failpoints import TRACE_ENV
from tests.services import free_port, start_mlflow_server, start_nanio, stop_group

BUCKET = "visionforge-faults"
PREFIX = "faults"
REGION = "us-east-1"
# A stalled S3 must fail the step within this. Our own S3 client (ops.storage) gives up after
# 3 attempts of 10 s; MLflow's request timeout times its retries bounds a stalled server's
# proxying. `dvc push` takes longest: s3fs retries 5 times botocore's 5 attempts of the remote's
# 10 s read timeout, about 300 s (measured), and says "Read timeout on endpoint URL".
STALL_BOUND_S = 400.0
MLFLOW_STEPS = ("train", "export", "validate", "promote")


@dataclass(frozen=True)
class ServiceFault:
    """``service`` (mlflow | s3) is ``how`` (killed | down | stalled) during ``step``: killed once
    the step made its ``nth`` MLflow call (MLflow) or its ``nth`` upload (S3, from the server's
    access log); down from its start; stalled: a server that accepts connections and never
    answers in its place."""

    step: str
    service: str
    how: str
    nth: int = 0

    def describe(self) -> str:
        if self.how == "killed":
            what = "MLflow call" if self.service == "mlflow" else "upload"
            return f"{self.service} killed at its {what} {self.nth}"
        return f"{self.service} {self.how}"


def _mlflow_calls(trace: Path) -> int:
    """MLflow calls the step has made so far, from its failpoint trace."""
    return sum(1 for line in trace.read_text().splitlines() if '"mlflow:' in line) if trace.is_file() else 0


def _uploads(access_log: Path) -> int:
    """PUT requests in nanio's access log so far."""
    return access_log.read_text(errors="replace").count('"PUT ') if access_log.is_file() else 0


class Stall:
    """A TCP server that accepts every connection, reads what it is sent and never answers."""

    def __init__(self, port: int) -> None:
        self.server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.server.settimeout(0.2)
        self.connections: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            self.connections.append(connection)  # kept open, never read from or answered

    def close(self) -> None:
        self.stopping.set()
        self.thread.join()
        for connection in self.connections:
            connection.close()
        self.server.close()


class Services:
    """The MLflow server and nanio, on ports fixed for the campaign (the params name them)."""

    def __init__(self, state: Path, logs: Path) -> None:
        self.state = state
        self.logs = logs
        self.mlflow_port = free_port()
        self.s3_port = free_port()
        self.mlflow: subprocess.Popen | None = None
        self.s3: subprocess.Popen | None = None
        self.stall: Stall | None = None

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def bucket_dir(self) -> Path:
        return self.state / "s3" / BUCKET

    def start_s3(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.s3, _ = start_nanio(
            self.state / "s3",
            BUCKET,
            SECRETS["AWS_ACCESS_KEY_ID"],
            SECRETS["AWS_SECRET_ACCESS_KEY"],
            self.logs / "nanio.log",
            port=self.s3_port,
        )

    def stop_s3(self) -> None:
        if self.s3 is not None:
            stop_group(self.s3, ((signal.SIGKILL, 10),))
            self.s3 = None
        if self.stall is not None:
            self.stall.close()
            self.stall = None

    def stall_s3(self) -> None:
        self.stop_s3()
        self.stall = Stall(self.s3_port)

    def start_mlflow(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        self.mlflow = start_mlflow_server(
            f"sqlite:///{self.state / 'mlflow.db'}",
            f"s3://{BUCKET}/{PREFIX}/mlflow",
            {
                **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))},
                **SECRETS,
                "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
                "AWS_DEFAULT_REGION": REGION,
            },
            self.logs / "mlflow-server.log",
            self.state,
            self.mlflow_port,
        )

    def kill_mlflow(self) -> None:
        if self.mlflow is not None:
            stop_group(self.mlflow, ((signal.SIGKILL, 10),))
            self.mlflow = None

    def start(self) -> None:
        if self.s3 is None:
            self.stop_s3()  # a stall in its place
            self.start_s3()
        if self.mlflow is None:
            self.start_mlflow()

    def stop(self) -> None:
        self.kill_mlflow()
        self.stop_s3()


class ServiceCampaign(Campaign):
    """The kill-anywhere campaign's pipeline with MLflow and DVC's remote behind real servers."""

    def __init__(self, workdir: Path, task: str, steps: tuple[str, ...]) -> None:
        super().__init__(workdir, task, steps)
        self.services = Services(self.run_dir / ".services", self.workdir / "logs")

    def params_dict(self) -> dict[str, Any]:
        raw = super().params_dict()
        raw["tracking"]["uri"] = self.services.mlflow_uri
        raw["storage"] = {
            "remote": "s3",
            "local_dir": "dvc-storage",
            "s3": {
                "bucket": BUCKET,
                "prefix": PREFIX,
                "endpoint_url": self.services.s3_endpoint,
                "region": REGION,
            },
        }
        return raw

    def setup(self) -> None:
        self.services.stop()
        super().setup()
        self.services.start()

    def restore(self, step: str) -> None:
        self.services.stop()
        super().restore(step)
        self.services.start()

    def close(self) -> None:
        self.services.stop()

    @property
    def remote_dir(self) -> Path:
        return self.services.bucket_dir / PREFIX / "dvc"

    def artefact_file(self, source: str) -> Path:
        """The bucket's file behind a version's source: ``s3://<bucket>/<key>`` (the tracker puts
        artefacts in the bucket itself when storage is S3), or ``mlflow-artifacts:/<path>`` (the
        server's default, ``<prefix>/mlflow/<path>`` of the bucket)."""
        if source.startswith("s3://"):
            bucket, _, key = source.removeprefix("s3://").partition("/")
            return self.services.state / "s3" / bucket / key
        path = source.removeprefix("mlflow-artifacts:").lstrip("/")
        return self.services.bucket_dir / PREFIX / "mlflow" / path

    # --- faults ------------------------------------------------------------------------------

    def plan_services(self, seed: int) -> list[ServiceFault]:
        """The MLflow server killed at a seeded call of every step that records; S3 down, killed
        during and stalled for ``push`` and for ``export``'s artefact upload."""
        rng = random.Random(seed)
        faults = []
        for step in (s for s in MLFLOW_STEPS if s in self.steps):
            calls = [p for p in self.references[step].passes if p[0].startswith("mlflow:")]
            if calls:
                faults.append(ServiceFault(step, "mlflow", "killed", nth=rng.randint(1, len(calls))))
        for step in (s for s in ("export", "push") if s in self.steps):
            faults += [
                ServiceFault(step, "s3", "down"),
                ServiceFault(step, "s3", "killed", nth=1),  # export may upload only two files
                ServiceFault(step, "s3", "stalled"),
            ]
        return faults

    def service_trial(self, fault: ServiceFault) -> Trial:
        began = time.time()
        self.restore(fault.step)
        if fault.how == "down":
            self.services.stop_s3()
        elif fault.how == "stalled":
            self.services.stall_s3()
        trace = self.workdir / "traces" / "service-trial.jsonl"
        trace.unlink(missing_ok=True)
        offset = self.log_size(fault.step)
        access_log = self.services.logs / "nanio.log"
        uploads_before = _uploads(access_log)
        started = time.monotonic()
        process = self.start(fault.step, {TRACE_ENV: str(trace)})
        if fault.how == "killed":
            if fault.service == "s3":
                self._kill_during(process, fault, lambda: _uploads(access_log) - uploads_before)
            else:
                self._kill_during(process, fault, lambda: _mlflow_calls(trace))
        code = self.finish(process)
        seconds = time.monotonic() - started
        result = Trial(fault, killed=code != 0)  # a step that finished first missed the fault
        if result.killed:
            output = self.output_since(fault.step, offset)
            result.violations += self.service_error(fault, code, output, seconds)
            self.services.start()
            result.violations += self.integrity_violations(self.registry())
        self.services.start()
        if result.killed:
            self.recover(result, fault.step, f"with {fault.service} back")
        result.seconds = round(time.time() - began, 1)
        return result

    def _kill_during(
        self, process: subprocess.Popen, fault: ServiceFault, progress: Callable[[], int]
    ) -> None:
        """Kill the service as soon as the step has made its ``nth`` MLflow call or upload."""
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline and progress() < fault.nth:
            time.sleep(0.01)
        if process.poll() is None:
            if fault.service == "mlflow":
                self.services.kill_mlflow()
            else:
                self.services.stop_s3()

    def service_error(self, fault: ServiceFault, code: int, output: str, seconds: float) -> list[str]:
        """One error line, no traceback, naming the service (and the timeout, for a stall), in
        bounded time."""
        last = error_line(output)
        where = (
            self.services.mlflow_uri if fault.service == "mlflow" else f"127.0.0.1:{self.services.s3_port}"
        )
        found = []
        if code < 0:
            found.append(f"{fault.step} with {fault.describe()} died of signal {-code}")
        if "Traceback (most recent call last)" in output:
            found.append(f"{fault.step} with {fault.describe()} printed a traceback: {last[:200]!r}")
        elif where not in last and not (fault.service == "s3" and "MLflow at" in last):
            found.append(
                f"{fault.step} with {fault.describe()}: the error does not name {where}: {last[:300]!r}"
            )
        if fault.how == "stalled" and "timed out" not in last.lower() and "timeout" not in last.lower():
            found.append(
                f"{fault.step} with {fault.describe()}: the error does not name the timeout: {last[:300]!r}"
            )
        if seconds > STALL_BOUND_S:
            found.append(
                f"{fault.step} with {fault.describe()} took {seconds:.0f} s to fail "
                f"(bound {STALL_BOUND_S:.0f} s)"
            )
        return found
