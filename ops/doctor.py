"""``visionforge doctor``: is each system the pipeline writes to reachable, does it accept this
environment's credentials, and can it be written? One line per system, with the fix when not.

The checks write the smallest thing each system has (an experiment tag, a probe object that is
deleted again, a file in the DVC remote, a key in Dagster's key-value store), because reachable
and readable says little about a deployment whose credentials may be read-only. Dagster's
instance is checked in a child process (``python -m pipelines.doctor``): this library never
imports Dagster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ops.config import Params
from ops.errors import VisionForgeError
from ops.storage import DVC_SUBDIR, S3Store, dvc_remote, redact, s3_url
from ops.versioning import dvc_executable

Status = Literal["ok", "warn", "fail"]
PROBE_NAME = ".visionforge-doctor"
# Dagster imports in a few seconds; a PostgreSQL that does not answer is retried by Dagster
# for a few more. Past this, the check itself has failed.
DAGSTER_CHECK_TIMEOUT_S = 120


@dataclass(frozen=True)
class Check:
    """One system's verdict. ``target`` says where (never a secret); ``detail`` what was found,
    and for a failure, the fix."""

    system: str
    target: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{self.status.upper():<4} {self.system:<7} {self.target}: {self.detail}"


def _failed(system: str, target: str, error: Exception | str) -> Check:
    return Check(system, target, "fail", redact(str(error)))


def check_mlflow(params: Params) -> Check:
    from ops.tracking import Tracker, tracking_uri

    target = redact(tracking_uri(params))
    if not params.tracking.enabled:
        return Check(
            "mlflow", target, "warn", "tracking.enabled is false: nothing is recorded, promotion refuses"
        )
    try:
        tracker = Tracker(params)  # a server is asked for /health first (bounded retries)
    except VisionForgeError as exc:
        return _failed("mlflow", target, exc)
    try:
        tracker.check_access()
    except VisionForgeError as exc:
        message = str(exc)
        if any(code in message for code in ("401", "403", "UNAUTHENTICATED", "PERMISSION_DENIED")):
            message += " -> fix: MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN"
        return _failed("mlflow", target, message)
    if tracker.is_server:
        return Check("mlflow", target, "ok", "server reachable, authenticated, writable")
    return Check("mlflow", target, "ok", "embedded store readable, writable")


def _probe_bucket(store: S3Store, *parts: str) -> None:
    """Upload and delete one small object under ``parts``: raises :class:`StorageError` if either fails."""
    with tempfile.TemporaryDirectory() as scratch:
        probe = Path(scratch) / PROBE_NAME
        probe.write_text(f"visionforge doctor {uuid.uuid4()}\n")
        store.upload(probe, *parts, PROBE_NAME)
    store.delete(*parts, PROBE_NAME)


def check_s3(params: Params) -> Check:
    storage = params.storage
    if storage.remote != "s3":
        return Check("s3", "(none)", "ok", "not used (storage.remote: local)")
    target = f"{s3_url(storage.s3)} at {storage.s3.endpoint_url or 'AWS S3'}"
    try:
        store = S3Store(storage.s3, max_attempts=2, timeout_s=params.tracking.connect_timeout_s)
        store.check()
        _probe_bucket(store)
    except VisionForgeError as exc:
        return _failed("s3", target, exc)
    return Check("s3", target, "ok", "bucket reachable, authenticated, writable")


def check_dvc(params: Params) -> Check:
    remote = dvc_remote(params.storage)
    target = f"remote {remote.name!r} {remote.url}"
    try:
        dvc_executable()
    except VisionForgeError as exc:
        return _failed("dvc", target, exc)
    if params.storage.remote == "s3":
        try:
            _probe_bucket(S3Store(params.storage.s3, max_attempts=2), DVC_SUBDIR)
        except VisionForgeError as exc:
            return _failed("dvc", target, exc)
        return Check("dvc", target, "ok", "remote writable with this environment's S3 credentials")
    directory = Path(remote.url)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f"{PROBE_NAME}-{os.getpid()}"
        probe.write_text("probe\n")
        probe.unlink()
    except OSError as exc:
        return _failed("dvc", target, f"cannot write {directory}: {exc.strerror} -> fix: storage.local_dir")
    return Check("dvc", target, "ok", "directory remote writable")


def check_dagster() -> list[Check]:
    """Dagster's instance (``DAGSTER_HOME``) and the code location, checked by
    :mod:`pipelines.doctor` in a child process."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pipelines.doctor"],
            capture_output=True,
            text=True,
            timeout=DAGSTER_CHECK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return [
            _failed(
                "dagster", os.environ.get("DAGSTER_HOME", "-"), f"no answer in {DAGSTER_CHECK_TIMEOUT_S} s"
            )
        ]
    lines = result.stdout.strip().splitlines()
    try:
        return [Check(**check) for check in json.loads(lines[-1])]
    except (IndexError, json.JSONDecodeError, TypeError):
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return [_failed("dagster", os.environ.get("DAGSTER_HOME", "-"), f"the check crashed: {tail}")]


def run_checks(params: Params) -> list[Check]:
    return [check_mlflow(params), check_s3(params), check_dvc(params), *check_dagster()]


def as_json(checks: list[Check]) -> str:
    return json.dumps([asdict(check) for check in checks], indent=2)
