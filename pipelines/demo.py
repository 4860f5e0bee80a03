"""``make demo``: materialise the whole asset graph on ``params.yaml`` in one Dagster run.

Prints one progress line as each asset starts and ends, then a summary table of assets,
key figures and gates, and the command that opens the UI. The run is recorded in the
instance under ``DAGSTER_HOME`` (the Makefile sets it), so ``make ui`` shows it afterwards.

    python -m pipelines.demo [--params params.yaml] [--set traffic.train.epochs=2 ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from dagster import DagsterEventType, DagsterInstance, EventLogEntry
from tqdm import tqdm

from ops.config import DEFAULT_PARAMS_PATH

log = logging.getLogger(__name__)

UI_COMMAND = "make ui    # Dagster webserver + daemon on http://127.0.0.1:3000"
POLL_S = 1.0
_WATCHED = {
    DagsterEventType.STEP_START,
    DagsterEventType.STEP_SUCCESS,
    DagsterEventType.STEP_FAILURE,
    DagsterEventType.STEP_SKIPPED,
    DagsterEventType.ASSET_MATERIALIZATION,
    DagsterEventType.ASSET_CHECK_EVALUATION,
}

# What the summary shows per stage of every task: (metadata key, label); a task's steps module
# adds its own figures (SUMMARY_FIELDS). Missing keys are left out.
COMMON_SUMMARY_FIELDS: dict[str, Sequence[tuple[str, str]]] = {
    "int8": (("onnx_int8_bytes", "bytes"), ("size_vs_fp32", "size vs fp32")),
    "tensorrt": (("status", "status"), ("fp16_status", "fp16"), ("int8_status", "int8")),
    "release": (("decision", "decision"), ("mlflow_release_run", "MLflow run")),
}


def summary_fields(task: str, stage: str) -> Sequence[tuple[str, str]]:
    from ops.tasks import TASKS, task_steps

    if task not in TASKS:
        return COMMON_SUMMARY_FIELDS.get(stage, ())
    return task_steps(task).SUMMARY_FIELDS.get(stage, COMMON_SUMMARY_FIELDS.get(stage, ()))


@dataclass
class AssetRow:
    key: str
    status: str = "not run"
    seconds: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckRow:
    asset: str
    name: str
    passed: bool
    metadata: dict[str, Any]


@dataclass
class RunSummary:
    run_id: str
    success: bool
    seconds: float
    assets: list[AssetRow]
    checks: list[CheckRow]
    errors: list[str]


def _step_asset(step_key: str | None) -> str:
    """``traffic__model`` (the step) -> ``traffic/model`` (the asset)."""
    return (step_key or "?").replace("__", "/")


def _value(value: Any) -> Any:
    return getattr(value, "value", value)


class ProgressWatcher(threading.Thread):
    """Reads the run's events from the instance while it executes and prints a line per asset."""

    def __init__(
        self, instance: DagsterInstance, run_id: str, keys: Sequence[str], echo: Callable[[str], None]
    ):
        super().__init__(daemon=True)
        self.instance, self.run_id, self.keys, self.echo = instance, run_id, list(keys), echo
        self.seen = 0
        self.started: dict[str, float] = {}
        self.stop_event = threading.Event()

    def _line(self, key: str, text: str) -> None:
        index = self.keys.index(key) + 1 if key in self.keys else 0
        self.echo(f"==> [{index}/{len(self.keys)}] {key}: {text}")

    def poll(self) -> None:
        entries = self.instance.all_logs(self.run_id, of_type=_WATCHED)
        for entry in entries[self.seen :]:
            self.handle(entry)
        self.seen = len(entries)

    def handle(self, entry: EventLogEntry) -> None:
        event = entry.dagster_event
        if event is None:
            return
        key = _step_asset(event.step_key)
        kind = event.event_type
        if kind == DagsterEventType.STEP_START:
            self.started[key] = entry.timestamp
            self._line(key, "started")
        elif kind == DagsterEventType.STEP_SUCCESS:
            self._line(key, f"done in {entry.timestamp - self.started.get(key, entry.timestamp):.0f} s")
        elif kind == DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            message = error.message.strip().splitlines()[0] if error else "failed"
            self._line(key, f"FAILED: {message}")
        elif kind == DagsterEventType.STEP_SKIPPED:
            self._line(key, "skipped (an upstream asset or blocking check failed)")
        elif kind == DagsterEventType.ASSET_CHECK_EVALUATION:
            data = event.asset_check_evaluation_data
            status = _value(data.metadata.get("status")) or ("passed" if data.passed else "failed")
            self._line(data.asset_key.to_user_string(), f"check {data.check_name}: {status}")

    def run(self) -> None:
        while not self.stop_event.wait(POLL_S):
            self.poll()

    def finish(self) -> None:
        self.stop_event.set()
        self.join()
        self.poll()


def run_graph(
    instance: DagsterInstance,
    run_config: Mapping[str, Any],
    echo: Callable[[str], None] = print,
    tags: Mapping[str, str] | None = None,
) -> RunSummary:
    """Materialise every asset of the code location in one run; report progress through ``echo``."""
    from pipelines.definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()
    keys = [key.to_user_string() for key in defs.resolve_asset_graph().toposorted_asset_keys]
    run_id = str(uuid.uuid4())
    watcher = ProgressWatcher(instance, run_id, keys, echo)
    started = time.monotonic()
    watcher.start()
    try:
        result = job.execute_in_process(
            run_config=dict(run_config),
            instance=instance,
            run_id=run_id,
            raise_on_error=False,
            tags=dict(tags or {}),
        )
    finally:
        watcher.finish()
    return collect(instance, run_id, keys, result.success, time.monotonic() - started)


def collect(
    instance: DagsterInstance, run_id: str, keys: Sequence[str], success: bool, seconds: float
) -> RunSummary:
    """The run's outcome per asset and per check, read back from the event log."""
    rows = {key: AssetRow(key) for key in keys}
    checks, errors, started = [], [], {}
    for entry in instance.all_logs(run_id, of_type=_WATCHED):
        event = entry.dagster_event
        key = _step_asset(event.step_key)
        row = rows.get(key)
        kind = event.event_type
        if kind == DagsterEventType.STEP_START:
            started[key] = entry.timestamp
        elif kind == DagsterEventType.STEP_SUCCESS and row:
            row.seconds = entry.timestamp - started.get(key, entry.timestamp)
        elif kind == DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            errors.append(f"{key}: {error.message.strip() if error else 'failed'}")
            if row:
                row.status = "FAILED"
                row.seconds = entry.timestamp - started.get(key, entry.timestamp)
        elif kind == DagsterEventType.STEP_SKIPPED and row:
            row.status = "skipped"
        elif kind == DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.event_specific_data.materialization
            row = rows.get(materialization.asset_key.to_user_string())
            if row:
                row.metadata = {k: _value(v) for k, v in materialization.metadata.items()}
                if row.status == "not run":
                    row.status = "materialised"
        elif kind == DagsterEventType.ASSET_CHECK_EVALUATION:
            data = event.asset_check_evaluation_data
            checks.append(
                CheckRow(
                    data.asset_key.to_user_string(),
                    data.check_name,
                    data.passed,
                    {k: _value(v) for k, v in data.metadata.items()},
                )
            )
    return RunSummary(run_id, success, seconds, list(rows.values()), checks, errors)


def _fmt(value: Any, width: int = 60) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and value >= 1 << 20:
        return f"{value / (1 << 20):.1f} MiB"
    text = str(value)
    if len(text) == 64:  # a hash: the short form is enough to compare
        return text[:12]
    return text if len(text) <= width else text[: width - 3] + "..."


def _check_status(check: CheckRow) -> str:
    status = str(check.metadata.get("status") or ("passed" if check.passed else "failed"))
    return status if check.passed else status.upper()


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=False))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_summary(summary: RunSummary) -> str:
    """The table ``make demo`` ends with: assets with their figures, then every gate."""
    asset_rows = []
    for row in summary.assets:
        task, _, stage = row.key.rpartition("/")
        figures = [
            f"{label} {_fmt(row.metadata[name])}"
            for name, label in summary_fields(task, stage)
            if name in row.metadata
        ]
        seconds = f"{row.seconds:.0f} s" if row.seconds is not None else ""
        asset_rows.append([row.key, row.status, seconds, ", ".join(figures)])
    check_rows = [
        [
            f"{c.asset}:{c.name}",
            _check_status(c),
            _fmt(c.metadata["value"]) if "value" in c.metadata else "",
            str(c.metadata.get("rule", "")),
            str(c.metadata.get("note", "")),
        ]
        for c in summary.checks
    ]
    parts = [
        _table(["asset", "status", "time", "figures"], asset_rows),
        "",
        _table(["check", "status", "value", "rule", "note"], check_rows) if check_rows else "no checks ran",
        "",
        f"run {summary.run_id}: {'succeeded' if summary.success else 'FAILED'} in {summary.seconds:.0f} s",
    ]
    parts += [f"  error: {e.splitlines()[0]}" for e in summary.errors]
    return "\n".join(parts)


class _DropRunPrefix(logging.Filter):
    """Dagster prefixes the library's lines with job, run id and step; the progress lines say that."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _RUN_PREFIX.sub("", record.getMessage()), ()
        return True


_RUN_PREFIX = re.compile(r"^\S+ - [0-9a-f-]{36} - \S+ - ")


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--params", default=str(DEFAULT_PARAMS_PATH), help="params file (default params.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_override,
        default=[],
        metavar="KEY=VALUE",
        help="override one value for this run, e.g. --set traffic.train.epochs=2; repeatable",
    )
    args = parser.parse_args(argv)
    # the library's progress (epochs, metrics, gates) at INFO; other libraries only when they warn
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("ops", "pipelines"):
        logging.getLogger(name).setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropRunPrefix())
    if os.environ.get("DAGSTER_HOME"):
        instance = DagsterInstance.get()
    else:
        log.warning("DAGSTER_HOME is not set: this run is not kept for the UI (make demo sets it)")
        instance = DagsterInstance.ephemeral()
    run_config = {
        "resources": {"params": {"config": {"path": args.params, "overrides": dict(args.overrides)}}},
        # the progress lines replace Dagster's own event stream on the console; the library's
        # warnings already reach it through Python's logging, so Dagster shows errors only
        "loggers": {"console": {"config": {"log_level": "ERROR"}}},
    }
    # tqdm.write keeps a progress line from landing in the middle of a step's progress bar
    summary = run_graph(instance, run_config, echo=tqdm.write, tags={"visionforge/source": "demo"})
    print("\n" + format_summary(summary), flush=True)
    print(f"\nOpen the UI to see every asset, its plots and checks:\n  {UI_COMMAND}", flush=True)
    return 0 if summary.success else 1


if __name__ == "__main__":
    sys.exit(main())
