"""MLflow tracking and model registry: the only module that imports mlflow.

What lands where:

- one experiment per task (``<tracking.experiment_prefix><task>``);
- one parent run per pipeline run (a Dagster run id, or ``VISIONFORGE_PIPELINE_RUN`` for the
  CLI and ``dvc repro``), with a nested run per step: the step's params (the keys its DVC stage
  depends on, see :mod:`ops.stages`), its metrics (per epoch for training), its files and plots;
- one registered model per task and format (``traffic-detector-onnx-int8``), created through
  ``MlflowClient.create_model_version`` (``mlflow.register_model("runs:/...")`` needs a logged
  model, which a plain ONNX file is not). Every version carries the lineage as tags: data
  version (DVC hash), git commit, params digest, artefact sha256; validation adds its metrics
  and gate results. A file whose sha256 is already registered is not registered again;
- promotion moves aliases, never stages (deprecated since MLflow 2.9): ``candidate`` on the
  validated versions, ``champion`` only when every gate passed and the candidate is not worse
  than the champion beyond ``<task>.release.tolerance``. All checks run before any alias
  moves, and aliases moved before a failure are put back, so a failure midway moves none.

Embedded default: a SQLite store and an artefact directory in the project (``tracking.store``,
``tracking.artifacts``). ``MLFLOW_TRACKING_URI`` (or ``tracking.uri``) points at a server
instead; an unreachable server is one clear error after ``tracking.connect_retries`` attempts.
``tracking.enabled: false`` is an explicit offline mode: each step warns that nothing is
recorded, nothing is queued, and promotion refuses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ops.config import Params
from ops.errors import TrackingError, VisionForgeError
from ops.failpoints import failpoint
from ops.io import sha256_file
from ops.layout import TaskLayout
from ops.stages import CPU_BACKENDS, Stage, deployable_artefacts, stage
from ops.storage import mlflow_artifact_location, mlflow_environment, redact
from ops.tasks import task_spec
from ops.versioning import dataset_version, git_commit

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

PIPELINE_RUN_ENV = "VISIONFORGE_PIPELINE_RUN"
ALIAS_CANDIDATE = "candidate"
ALIAS_CHAMPION = "champion"

# Run tags
TAG_TASK = "visionforge.task"
TAG_STEP = "visionforge.step"
TAG_ROLE = "visionforge.role"  # pipeline | step | release
TAG_PIPELINE_RUN = "visionforge.pipeline_run"
# Lineage tags, on runs and on model versions alike
TAG_DATA_VERSION = "data_version"
TAG_GIT_COMMIT = "git_commit"
TAG_PARAMS_DIGEST = "params_digest"
TAG_SHA256 = "sha256"
TAG_FORMAT = "format"
# Validation and release tags on model versions
TAG_VALIDATED = "validation.passed"
TAG_VALIDATION_RUN = "validation.run_id"
TAG_DECISION = "release.decision"
TAG_REASONS = "release.reasons"
TAG_RELEASE_RUN = "release.run_id"
TAG_CPU_SERVING = "serving.cpu"  # + ".<height>x<width>": the format a CPU deployment of that size runs

_MLFLOW_TAG_MAX = 5000  # MLflow's limit on a model version tag value
_BATCH = 100  # params per log_batch call (MLflow's limit; metrics allow 1000)
_SAFE_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


_DRIVER_ERROR = re.compile(r"\(\w+(\.\w+)*\) ")


def _one_line(message: str) -> str:
    """The line of an MLflow error that says what happened. A SQL store's error is SQLAlchemy's:
    notes ("(raised as a result of Query-invoked autoflush; ...)", "[SQL: ...]", "(Background on
    this error at: ...)") around the line naming the driver's error,
    "(sqlite3.OperationalError) database or disk is full"."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return next((line for line in lines if _DRIVER_ERROR.match(line)), lines[0] if lines else "")


def registered_model_name(task: str, fmt: str) -> str:
    """One registered model per task and format, e.g. ``traffic-detector-onnx-int8``."""
    return f"{task}-{task_spec(task).model_noun}-{fmt}"


def tracking_uri(params: Params) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri``, else the embedded SQLite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri
    if uri:
        return uri
    return f"sqlite:///{Path(params.tracking.store).resolve()}"


def params_digest(params: Params, task: str) -> str:
    """SHA-256 of the task's parameters (canonical JSON): equal digests, equal configuration."""
    section = getattr(params, task).model_dump(mode="json")
    return hashlib.sha256(json.dumps(section, sort_keys=True).encode()).hexdigest()


def new_pipeline_run_key() -> str:
    """A pipeline run key for a CLI call that is not part of a larger run."""
    return f"cli-{uuid.uuid4().hex[:12]}"


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def _section(params: Params, dotted: str) -> Any:
    node: Any = params.model_dump(mode="json")
    for part in dotted.split("."):
        node = node[part]
    return node


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


@dataclass(frozen=True)
class Registration:
    """A registered artefact: its model name and version; ``created`` false when its sha256 was
    already registered (the existing version is returned, completed if a registration was cut short)."""

    format: str
    name: str
    version: str
    sha256: str
    created: bool


@dataclass
class StepLog:
    """What one step's MLflow run recorded."""

    run_id: str
    experiment_id: str
    pipeline_run_id: str
    tracking_uri: str
    registered: dict[str, Registration] = field(default_factory=dict)


@dataclass
class PromotionDecision:
    """The release decision: ``promoted`` (champion moved), ``kept`` (candidate set, the champion
    stays: the candidate is worse beyond the tolerance), ``unchanged`` (the candidate already is
    the champion) or ``blocked`` (a gate failed or a version was never validated: no alias moved)."""

    task: str
    decision: str
    reasons: list[str]
    candidates: dict[str, str]
    champions_before: dict[str, str | None]
    champions_after: dict[str, str | None]
    run_id: str | None = None
    # deployment size -> the faster CPU format there (from the benchmark of these very files)
    cpu_serving: dict[str, str] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Tracker:
    """MLflow for one configuration: logs steps, registers artefacts, promotes releases."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.enabled = params.tracking.enabled
        self.uri = tracking_uri(params)
        self._experiments: dict[str, str] = {}
        self._artifact_uris: dict[str, str] = {}  # run id -> where its artefacts go
        self._lineage: dict[str, dict[str, str]] = {}  # per public call: the data does not change meanwhile
        if not self.enabled:
            self.client: MlflowClient | None = None
            return
        for name, value in mlflow_environment(params.storage).items():
            os.environ.setdefault(name, value)
        if self.is_server:
            # MLflow's own retries default to 7 with exponential backoff (minutes): bound them
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(params.tracking.connect_retries - 1))
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(params.tracking.connect_timeout_s)))
            self.check_reachable()
        elif self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # --- connection ----------------------------------------------------------------------------

    @property
    def is_server(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    @property
    def safe_uri(self) -> str:
        """The URI as it may be shown: any ``user:password@`` masked."""
        return redact(self.uri)

    def check_reachable(self) -> None:
        """Raise :class:`TrackingError` unless the server answers ``/health`` within the configured
        attempts (backing off 1 s, 2 s, ...)."""
        cfg = self.params.tracking
        url = self.uri.rstrip("/") + "/health"
        last = ""
        for attempt in range(cfg.connect_retries):
            try:
                with urllib.request.urlopen(url, timeout=cfg.connect_timeout_s) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            if attempt + 1 < cfg.connect_retries:
                time.sleep(2**attempt)
        raise TrackingError(
            f"MLflow tracking server {self.safe_uri} unreachable after {cfg.connect_retries} attempts "
            f"({redact(last)}). Start it, point MLFLOW_TRACKING_URI elsewhere, or set "
            "tracking.enabled: false to run offline (nothing is recorded)."
        )

    def check_access(self) -> None:
        """Raise :class:`TrackingError` unless the store answers a read and accepts a write with
        this process's credentials: a tag on the ``<prefix>doctor`` experiment (made once), the
        smallest write there is."""
        client = self._require("checking access")
        self._call("listing experiments", client.search_experiments, max_results=1)
        experiment_id = self.experiment_id("doctor")
        self._call(
            "writing an experiment tag",
            client.set_experiment_tag,
            experiment_id,
            "visionforge.doctor.checked_at",
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )

    def _require(self, what: str) -> MlflowClient:
        if self.client is None:
            raise TrackingError(f"{what} needs the MLflow registry, but tracking.enabled is false")
        return self.client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """An MLflow call whose failure becomes one clear :class:`TrackingError`."""
        from mlflow.exceptions import MlflowException

        try:
            result = fn(*args, **kwargs)
        except (MlflowException, OSError) as exc:  # connection errors are requests/urllib3 OSErrors
            reason = _one_line(redact(str(exc))) or type(exc).__name__
            raise TrackingError(f"MLflow at {self.safe_uri}: {what} failed: {reason}") from None
        except Exception as exc:
            # with storage on S3 the client uploads artefacts itself, and boto3's errors are its own
            if type(exc).__module__.split(".")[0] not in ("botocore", "boto3", "s3transfer"):
                raise
            from ops.storage import storage_error

            reason = str(storage_error(exc, self.params.storage.s3, "storing the artefact"))
            raise TrackingError(f"MLflow at {self.safe_uri}: {what} failed: {reason}") from None
        failpoint(f"mlflow:{what}")
        return result

    # --- experiments and runs ------------------------------------------------------------------

    def experiment_name(self, task: str) -> str:
        return f"{self.params.tracking.experiment_prefix}{task}"

    def experiment_id(self, task: str) -> str:
        """The task's experiment, created on first use (artefacts in the project directory, or
        on S3 when storage is S3; a server decides for itself)."""
        if task in self._experiments:
            return self._experiments[task]
        client = self._require("tracking")
        name = self.experiment_name(task)
        experiment = self._call("looking up the experiment", client.get_experiment_by_name, name)
        if experiment is None:
            location = mlflow_artifact_location(self.params.storage, name)
            if location is None and not self.is_server:
                location = (Path(self.params.tracking.artifacts).resolve() / name).as_uri()
            try:
                experiment_id = client.create_experiment(name, artifact_location=location)
            except Exception:  # created meanwhile by a parallel step: use that one
                experiment = self._call("looking up the experiment", client.get_experiment_by_name, name)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        else:
            if experiment.lifecycle_stage == "deleted":
                self._call("restoring the experiment", client.restore_experiment, experiment.experiment_id)
            experiment_id = experiment.experiment_id
        self._experiments[task] = experiment_id
        return experiment_id

    def lineage_tags(self, task: str) -> dict[str, str]:
        """Data version (DVC hash), git commit, params digest: what any result is a function of.

        Computed once per public call (hashing the dataset and asking git cost a moment)."""
        if task not in self._lineage:
            root = TaskLayout.for_task(self.params, task).dataset
            self._lineage[task] = {
                TAG_DATA_VERSION: dataset_version(root) if Path(root).exists() else "missing",
                TAG_GIT_COMMIT: git_commit(),
                TAG_PARAMS_DIGEST: params_digest(self.params, task),
            }
        return dict(self._lineage[task])

    def pipeline_run_id(self, task: str, key: str) -> str:
        """The parent run of pipeline run ``key``, created on first use."""
        client = self._require("tracking")
        if not _SAFE_KEY.fullmatch(key):
            key = hashlib.sha256(key.encode()).hexdigest()[:32]
        experiment_id = self.experiment_id(task)
        query = f"tags.`{TAG_PIPELINE_RUN}` = '{key}' and tags.`{TAG_ROLE}` = 'pipeline'"

        def find() -> list[Any]:
            return self._call(
                "searching runs",
                client.search_runs,
                [experiment_id],
                filter_string=query,
                order_by=["attributes.start_time ASC"],
                max_results=5,
            )

        found = find()
        if found:
            return found[0].info.run_id
        run = self._call(
            "creating the pipeline run",
            client.create_run,
            experiment_id,
            run_name=f"{task} pipeline {key}",
            tags={TAG_TASK: task, TAG_ROLE: "pipeline", TAG_PIPELINE_RUN: key},
        )
        oldest = find()[0].info.run_id  # two steps starting at once: keep the older parent
        if oldest != run.info.run_id:
            self._call("removing a duplicate pipeline run", client.delete_run, run.info.run_id)
        return oldest

    def _start_child(self, task: str, name: str, role: str, pipeline_run: str | None) -> tuple[str, str]:
        client = self._require("tracking")
        parent = self.pipeline_run_id(task, pipeline_run or new_pipeline_run_key())
        tags = {
            "mlflow.parentRunId": parent,
            TAG_TASK: task,
            TAG_STEP: name,
            TAG_ROLE: role,
            **self.lineage_tags(task),
        }
        run = self._call(
            f"starting the {name} run", client.create_run, self.experiment_id(task), run_name=name, tags=tags
        )
        return run.info.run_id, parent

    def _finish(self, run_id: str, parent: str, status: str) -> None:
        client = self._require("tracking")
        self._call("closing the run", client.set_terminated, run_id, status)
        self._call("closing the pipeline run", client.set_terminated, parent, status)

    def _finish_failed(self, run_id: str, parent: str, what: str) -> None:
        """Mark a failed step's runs FAILED if the server can still be reached. The step's own
        error is the one raised: when the server died, a second error from closing the run
        would only hide where the first happened."""
        try:
            self._finish(run_id, parent, "FAILED")
        except TrackingError as exc:
            log.warning("%s: its MLflow run stays RUNNING: %s", what, exc)

    def _log_params(self, run_id: str, values: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        client = self._require("tracking")
        items = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in values.items()]
        for i in range(0, len(items), _BATCH):
            self._call("logging params", client.log_batch, run_id, params=items[i : i + _BATCH])

    def _log_metrics(self, run_id: str, values: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        client = self._require("tracking")
        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(items), 10 * _BATCH):
            self._call("logging metrics", client.log_batch, run_id, metrics=items[i : i + 10 * _BATCH])

    def _log_file(self, run_id: str, path: Path, task: str) -> str:
        """Log ``path`` (a file or directory) under its path inside the task's directory."""
        root = TaskLayout.for_task(self.params, task).root
        try:
            relative = Path(path).resolve().relative_to(Path(root).resolve())
        except ValueError:
            relative = Path(Path(path).name)
        if Path(path).is_dir():
            self._log_artifact(f"logging {path}", run_id, Path(path), relative.as_posix())
            return relative.as_posix()
        parent = relative.parent.as_posix()
        self._log_artifact(f"logging {path}", run_id, Path(path), None if parent == "." else parent)
        return relative.as_posix()

    def _artifact_uri(self, run_id: str) -> str:
        """Where ``run_id`` keeps its artefacts (read once per run)."""
        if run_id not in self._artifact_uris:
            client = self._require("tracking")
            self._artifact_uris[run_id] = self._call(
                "reading the run", client.get_run, run_id
            ).info.artifact_uri
        return self._artifact_uris[run_id]

    def _log_artifact(self, what: str, run_id: str, path: Path, artifact_path: str | None) -> None:
        """Log a file, or a directory's files, as artefacts of ``run_id`` under ``artifact_path``.

        When the run keeps its artefacts in the configured bucket (``storage.remote: s3``), they
        are uploaded by :class:`ops.storage.S3Store`, whose timeouts and retries are bounded.
        MLflow's own S3 client has botocore's defaults, 60 s per read and five attempts per
        request, so a stalled S3 server would hang a step for many minutes (measured by
        ``make faults``). MLflow keeps no list of a run's artefacts: a file under the run's
        artefact URI is an artefact, whoever put it there.
        """
        client = self._require("tracking")
        uri = self._artifact_uri(run_id)
        storage = self.params.storage
        bucket, _, base = uri.removeprefix("s3://").partition("/")
        if not uri.startswith("s3://") or storage.remote != "s3" or bucket != storage.s3.bucket:
            log_fn = client.log_artifacts if path.is_dir() else client.log_artifact
            self._call(what, log_fn, run_id, str(path), artifact_path)
            return
        from ops.storage import S3Store

        store = S3Store(storage.s3)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            inside = file.name if file == path else file.relative_to(path).as_posix()
            key = "/".join(part.strip("/") for part in (base, artifact_path or "", inside) if part)
            try:
                store.upload_key(file, key)
            except VisionForgeError as exc:
                raise TrackingError(f"MLflow at {self.safe_uri}: {what} failed: {exc}") from None
        failpoint(f"mlflow:{what}")

    # --- steps ---------------------------------------------------------------------------------

    def log_step(self, task: str, step_name: str, pipeline_run: str | None = None) -> StepLog | None:
        """Record step ``step_name`` of ``task`` as a nested run and register what it made.

        Everything is read back from the files the step wrote (see :mod:`ops.stages`), so the
        CLI, DVC stages and Dagster assets record a step identically. Offline: warns, returns ``None``.
        """
        if not self.enabled:
            log.warning(
                "tracking is off (tracking.enabled: false): %s/%s is not recorded in MLflow", task, step_name
            )
            return None
        self._lineage.clear()
        spec = stage(self.params, task, step_name)
        run_id, parent = self._start_child(task, step_name, "step", pipeline_run)
        try:
            result = StepLog(run_id, self.experiment_id(task), parent, self.safe_uri)
            logged = self._record_stage(run_id, task, spec)
            for fmt, path in spec.registers:
                if Path(path).is_file():
                    result.registered[fmt] = self.register(
                        task, fmt, path, run_id, logged_as=logged.get(Path(path).resolve())
                    )
            if step_name == "validate":
                result.registered.update(self.record_validation(task, run_id))
        except BaseException:
            self._finish_failed(run_id, parent, f"{task}/{step_name}")
            raise
        self._finish(run_id, parent, "FINISHED")
        log.info("MLflow: %s/%s recorded as run %s (%s)", task, step_name, run_id, self.safe_uri)
        return result

    def _record_stage(self, run_id: str, task: str, spec: Stage) -> dict[Path, str]:
        """Log a stage's params, metrics, series and files; return {file: its artefact path}."""
        dataset_root = Path(TaskLayout.for_task(self.params, task).dataset).resolve()
        values: dict[str, Any] = {}
        for key in spec.params:
            section = _section(self.params, key)
            if isinstance(section, Mapping):
                values.update(_flatten(section, f"{key}."))
            else:
                values[key] = section
        self._log_params(run_id, values)
        metrics: dict[str, float] = {}
        for path in spec.metrics:
            if Path(path).is_file():
                data = json.loads(Path(path).read_text())
                if isinstance(data, Mapping):
                    for key, value in _flatten(data, f"{Path(path).stem}."):
                        number = _number(value)
                        if number is not None:
                            metrics[key] = number
        if metrics:
            self._log_metrics(run_id, metrics)
        for plot in spec.plots:
            if plot.is_series and Path(plot.path).is_file():
                rows = json.loads(Path(plot.path).read_text())
                for row in rows if isinstance(rows, list) else []:
                    numbers = {k: _number(v) for k, v in row.items() if k != plot.x}
                    self._log_metrics(
                        run_id, {k: v for k, v in numbers.items() if v is not None}, step=int(row[plot.x])
                    )
        logged: dict[Path, str] = {}
        for path in (*spec.outs, *spec.metrics, *(p.path for p in spec.plots)):
            path = Path(path)
            if path.resolve() == dataset_root or not path.exists():
                continue  # the dataset is DVC's to store; its hash is the data_version tag
            logged[path.resolve()] = self._log_file(run_id, path, task)
        return logged

    # --- registry ------------------------------------------------------------------------------

    def find_version(self, task: str, fmt: str, sha256: str) -> ModelVersion | None:
        """The version of ``task``/``fmt`` registered for this exact file, if any."""
        client = self._require("the registry")
        name = registered_model_name(task, fmt)
        found = self._call(
            "searching model versions",
            client.search_model_versions,
            f"name = '{name}' and tags.{TAG_SHA256} = '{sha256}'",
        )
        return min(found, key=lambda v: int(v.version)) if found else None

    def _ensure_model(self, task: str, fmt: str) -> str:
        from mlflow.exceptions import MlflowException

        client = self._require("the registry")
        name = registered_model_name(task, fmt)
        try:
            client.get_registered_model(name)
        except MlflowException:
            try:
                client.create_registered_model(
                    name,
                    tags={"task": task, TAG_FORMAT: fmt},
                    description=f"{task} {task_spec(task).model_noun} as {fmt}; "
                    f"aliases: {ALIAS_CANDIDATE}, {ALIAS_CHAMPION}",
                )
            except MlflowException:  # created meanwhile by a parallel step
                self._call("looking up the registered model", client.get_registered_model, name)
        return name

    def register(
        self, task: str, fmt: str, path: Path | str, run_id: str, logged_as: str | None = None
    ) -> Registration:
        """Register ``path`` as a version of ``<task>-detector-<fmt>`` unless its sha256 already is.

        The version's source is the copy logged in ``run_id`` as ``logged_as`` (logged here under
        ``registered/<fmt>/`` when not given).
        A version found by sha256 gets any lineage tag it lacks: a registration cut short between
        creating the version and tagging it is completed by running it again.
        """
        client = self._require("the registry")
        path = Path(path)
        if not path.is_file():
            raise TrackingError(f"cannot register {fmt}: {path} does not exist")
        digest = sha256_file(path)
        name = self._ensure_model(task, fmt)
        tags = {
            **self.lineage_tags(task),
            TAG_SHA256: digest,
            TAG_FORMAT: fmt,
            "path": str(path),
            "size_bytes": str(path.stat().st_size),
        }
        existing = self.find_version(task, fmt, digest)
        if existing is not None:
            for key, value in tags.items():
                if key not in existing.tags:
                    self._call(
                        "tagging a version", client.set_model_version_tag, name, existing.version, key, value
                    )
            log.info("MLflow: %s v%s already holds %s (sha256 %s)", name, existing.version, path, digest[:12])
            return Registration(fmt, name, str(existing.version), digest, created=False)
        artefact = logged_as
        if artefact is None:
            artefact = f"registered/{fmt}/{path.name}"
            self._log_artifact(f"logging {path}", run_id, path, f"registered/{fmt}")
        version = self._call(
            f"registering {name}",
            client.create_model_version,
            name,
            f"{self._artifact_uri(run_id)}/{artefact}",
            run_id=run_id,
            tags=tags,
            description=f"{path.name} (sha256 {digest[:12]})",
        )
        log.info("MLflow: registered %s as %s v%s", path, name, version.version)
        return Registration(fmt, name, str(version.version), digest, created=True)

    def current_versions(self, task: str, run_id: str) -> dict[str, Registration]:
        """Registrations of every deployable artefact on disk (registering any that is not yet)."""
        return {
            fmt: self.register(task, fmt, path, run_id)
            for fmt, path in deployable_artefacts(self.params, task).items()
            if Path(path).is_file()
        }

    def record_validation(self, task: str, run_id: str) -> dict[str, Registration]:
        """Tag the versions of the artefacts on disk with the validation report's metrics and gates."""
        client = self._require("the registry")
        report = TaskLayout.for_task(self.params, task).validation
        if not report.is_file():
            raise TrackingError(f"no validation report at {report}: run `visionforge validate {task}` first")
        summary = json.loads(report.read_text())
        gates = {g["name"]: g for g in summary["gates"]}
        gate_metrics = {f"gate.{n}": float(g["value"]) for n, g in gates.items() if g["value"] is not None}
        gate_metrics["gates_passed"] = float(bool(summary["passed"]))
        self._log_metrics(run_id, gate_metrics)
        self._call(
            "tagging the run", client.set_tag, run_id, TAG_VALIDATED, str(bool(summary["passed"])).lower()
        )
        registrations = self.current_versions(task, run_id)
        common = {
            TAG_VALIDATED: str(bool(summary["passed"])).lower(),
            TAG_VALIDATION_RUN: run_id,
            **{f"gate.{n}": _gate_status(g) for n, g in gates.items()},
            "gates.failed": ", ".join(n for n, g in gates.items() if not g["passed"]) or "none",
        }
        for fmt, reg in registrations.items():
            tags = dict(common)
            for metric, value in summary["metrics"].get(fmt, {}).items():
                tags[f"metric.{metric}"] = repr(float(value))
            for key, value in tags.items():
                self._call(
                    "tagging a version",
                    client.set_model_version_tag,
                    reg.name,
                    reg.version,
                    key,
                    value[:_MLFLOW_TAG_MAX],
                )
        return registrations

    # --- promotion -----------------------------------------------------------------------------

    def alias_version(self, task: str, fmt: str, alias: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        client = self._require("the registry")
        try:
            return client.get_model_version_by_alias(registered_model_name(task, fmt), alias)
        except MlflowException as exc:
            if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
                return None
            raise TrackingError(
                f"MLflow at {self.safe_uri}: reading alias {alias}: {redact(str(exc))}"
            ) from None

    def promote(self, task: str, pipeline_run: str | None = None) -> PromotionDecision:
        """Set ``candidate`` on the validated versions of the artefacts on disk and move ``champion``
        when every gate passed and no format's metric is below its champion's beyond the tolerance.

        Phase 1 registers/looks up every version (completing interrupted registrations); phase 2
        decides from the versions' tags; only phase 3 moves aliases, restoring the previous ones
        if it fails. The decision and its reasons are tagged on the versions and the release run.
        """
        client = self._require("promotion")
        self._lineage.clear()
        cfg = getattr(self.params, task).release
        artefacts = {f: p for f, p in deployable_artefacts(self.params, task).items() if Path(p).is_file()}
        missing = [f for f in CPU_BACKENDS if f not in artefacts]
        if missing:
            raise TrackingError(
                f"cannot release {task}: no {', '.join(missing)} artefact on disk (run the pipeline first)"
            )
        run_id, parent = self._start_child(task, "release", "release", pipeline_run)
        try:
            decision = self._promote(client, task, cfg.metric, cfg.tolerance, run_id)
        except BaseException as exc:
            try:  # the release run says why it failed, when the server can still be reached
                client.set_tag(run_id, TAG_DECISION, "error")
                client.set_tag(run_id, TAG_REASONS, redact(str(exc))[:_MLFLOW_TAG_MAX])
            except Exception:
                pass  # _finish_failed says so
            self._finish_failed(run_id, parent, f"release {task}")
            raise
        self._finish(run_id, parent, "FINISHED")
        log.info("release %s: %s (%s)", task, decision.decision, "; ".join(decision.reasons))
        return decision

    def _promote(
        self, client: MlflowClient, task: str, metric: str, tolerance: float, run_id: str
    ) -> PromotionDecision:
        # phase 1: every version exists and is read; nothing moves yet
        registrations = self.current_versions(task, run_id)
        versions = {
            fmt: self._call("reading a version", client.get_model_version, reg.name, reg.version)
            for fmt, reg in registrations.items()
        }
        champions = {fmt: self.alias_version(task, fmt, ALIAS_CHAMPION) for fmt in versions}
        candidates_before = {fmt: self.alias_version(task, fmt, ALIAS_CANDIDATE) for fmt in versions}
        # phase 2: decide from the tags
        reasons: list[str] = []
        blocked = False
        validation_runs = {v.tags.get(TAG_VALIDATION_RUN) for v in versions.values()}
        for version in versions.values():
            label = f"{version.name} v{version.version}"
            if TAG_VALIDATED not in version.tags:
                blocked = True
                reasons.append(f"{label} was never validated: run `visionforge validate {task}`")
            elif version.tags[TAG_VALIDATED] != "true":
                blocked = True
                reasons.append(f"{label}: gates failed: {version.tags.get('gates.failed', '?')}")
        if not blocked and len(validation_runs) > 1:
            blocked = True
            reasons.append("the artefacts were validated in different runs: validate them together again")
        worse = False
        unchanged = True
        if not blocked:
            reasons.append("all gates passed")
            for fmt, version in versions.items():
                champion = champions[fmt]
                if champion is None:
                    unchanged = False
                    reasons.append(f"{fmt}: no champion yet")
                    continue
                if str(champion.version) == str(version.version):
                    reasons.append(f"{fmt}: v{version.version} already champion")
                    continue
                unchanged = False
                ours = _float(version.tags.get(f"metric.{metric}"))
                theirs = _float(champion.tags.get(f"metric.{metric}"))
                if ours is None or theirs is None:
                    reasons.append(
                        f"{fmt}: no recorded {metric} to compare with champion v{champion.version}"
                    )
                elif ours < theirs - tolerance:
                    worse = True
                    reasons.append(
                        f"{fmt}: {metric} {ours:.4f} is below champion v{champion.version}'s {theirs:.4f} "
                        f"by more than {tolerance}"
                    )
                else:
                    reasons.append(
                        f"{fmt}: {metric} {ours:.4f} vs champion v{champion.version}'s {theirs:.4f} "
                        f"(tolerance {tolerance})"
                    )
        serving: dict[str, str] = {}
        if not blocked:
            serving, serving_reasons = self._cpu_serving(task, versions)
            reasons += serving_reasons
        if blocked:
            outcome = "blocked"
        elif worse:
            outcome = "kept"
        elif unchanged:
            outcome = "unchanged"
        else:
            outcome = "promoted"
        # phase 3: move aliases, all or none
        if not blocked:
            moves = [(fmt, ALIAS_CANDIDATE) for fmt in versions]
            if outcome == "promoted":
                moves += [(fmt, ALIAS_CHAMPION) for fmt in versions]
            before = {(f, ALIAS_CANDIDATE): candidates_before[f] for f in versions}
            before.update({(f, ALIAS_CHAMPION): champions[f] for f in versions})
            done: list[tuple[str, str]] = []
            try:
                for fmt, alias in moves:
                    version = versions[fmt]
                    client.set_registered_model_alias(version.name, alias, version.version)
                    done.append((fmt, alias))
                    failpoint(f"mlflow:moving {alias} of {fmt}")
            except Exception as exc:
                unrestored = self._restore_aliases(client, task, done, before)
                state = (
                    f"could not restore {', '.join(unrestored)}: each names a validated version; run the "
                    "release again"
                    if unrestored
                    else "previous aliases restored"
                )
                raise TrackingError(
                    f"release {task}: moving aliases failed ({state}): {_one_line(redact(str(exc)))}"
                ) from None
        after = {
            fmt: str(versions[fmt].version) if outcome == "promoted" else (str(c.version) if c else None)
            for fmt, c in champions.items()
        }
        decision = PromotionDecision(
            task=task,
            decision=outcome,
            reasons=reasons,
            candidates={fmt: str(v.version) for fmt, v in versions.items()},
            champions_before={fmt: (str(c.version) if c else None) for fmt, c in champions.items()},
            champions_after=after,
            run_id=run_id,
            cpu_serving=serving,
        )
        # phase 4: record
        text = "; ".join(reasons)[:_MLFLOW_TAG_MAX]
        for version in versions.values():
            for key, value in ((TAG_DECISION, outcome), (TAG_REASONS, text), (TAG_RELEASE_RUN, run_id)):
                self._call(
                    "tagging a version",
                    client.set_model_version_tag,
                    version.name,
                    version.version,
                    key,
                    value,
                )
        self._call("tagging the release run", client.set_tag, run_id, TAG_DECISION, outcome)
        self._call("tagging the release run", client.set_tag, run_id, TAG_REASONS, text)
        for size, fmt in serving.items():
            self._call("tagging the release run", client.set_tag, run_id, f"{TAG_CPU_SERVING}.{size}", fmt)
        self._log_params(run_id, {"metric": metric, "tolerance": tolerance})
        with tempfile.TemporaryDirectory(prefix="release-") as tmp:
            path = Path(tmp) / "decision.json"
            path.write_text(json.dumps(decision.to_dict(), indent=2))
            self._log_artifact("logging the decision", run_id, path, None)
        return decision

    def _cpu_serving(
        self, task: str, versions: Mapping[str, ModelVersion]
    ) -> tuple[dict[str, str], list[str]]:
        """The faster CPU format per benchmarked size (``visionforge benchmark``'s ``cpu_serving``),
        when the benchmark measured exactly the files being released; the reasons either way."""
        report_path = TaskLayout.for_task(self.params, task).benchmark_dir / "trained" / "benchmark.json"
        rerun = f"run `visionforge benchmark {task}`"
        if not report_path.is_file():
            return {}, [f"no CPU serving format chosen: these artefacts were never benchmarked ({rerun})"]
        try:
            choices = json.loads(report_path.read_text()).get("cpu_serving", [])
            stale = {
                fmt
                for choice in choices
                for fmt, digest in choice["sha256"].items()
                if fmt not in versions or versions[fmt].tags.get(TAG_SHA256) != digest
            }
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            return {}, [f"no CPU serving format chosen: {report_path} is unreadable ({exc}; {rerun})"]
        if not choices or stale:
            what = f"of other {', '.join(sorted(stale))} files" if stale else "without a CPU choice"
            return {}, [f"no CPU serving format chosen: the last benchmark was {what} ({rerun})"]
        serving = {choice["size"]: choice["format"] for choice in choices}
        return serving, [f"CPU serving at {c['size']}: {c['format']}, {c['reason']}" for c in choices]

    def _restore_aliases(
        self,
        client: MlflowClient,
        task: str,
        done: list[tuple[str, str]],
        before: Mapping[tuple[str, str], ModelVersion | None],
    ) -> list[str]:
        """Put the moved aliases back; the ``<alias> of <model>`` that could not be (the server is
        gone, say)."""
        unrestored = []
        for fmt, alias in reversed(done):
            previous = before[(fmt, alias)]
            name = registered_model_name(task, fmt)
            try:
                if previous is None:
                    client.delete_registered_model_alias(name, alias)
                else:
                    client.set_registered_model_alias(name, alias, previous.version)
            except Exception as exc:  # keep restoring the others; the release's error names these
                log.error("could not restore alias %s of %s: %s", alias, name, _one_line(redact(str(exc))))
                unrestored.append(f"{alias} of {name}")
        return unrestored


def _gate_status(gate: Mapping[str, Any]) -> str:
    if gate.get("skipped"):
        return "skipped"
    status = "passed" if gate["passed"] else "failed"
    return f"{status} ({gate['value']} {gate['comparison']} {gate['threshold']})"


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    """``python -m ops.tracking uri [--params FILE]``: the tracking URI (for ``make ui``)."""
    import argparse
    import sys

    from ops.config import DEFAULT_PARAMS_PATH, load_params

    parser = argparse.ArgumentParser(prog="python -m ops.tracking")
    parser.add_argument("command", choices=("uri",))
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_PATH)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except VisionForgeError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    sys.stdout.write(tracking_uri(params) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
