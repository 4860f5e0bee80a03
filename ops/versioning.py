"""DVC: the only module that drives it, always through the ``dvc`` executable.

DVC lives in its own environment (``.venv-dvc``; its antlr4 pin breaks Dagster's selection
parser) and is linked into ``.venv/bin``, so it is run as a program, never imported (push and
pull run :mod:`ops.dvc_transfer` with DVC's own interpreter).

- ``dvc.yaml`` is rendered from :func:`ops.stages.task_stages`: one stage per step, each
  calling the ``visionforge`` CLI, paths templated from ``params.yaml`` so they are the paths
  the assets write (``${project.artifacts_dir}``, ``${traffic.dataset.root}``).
- :func:`dataset_version` is DVC's hash of the dataset directory (``<md5>.dir``, what
  ``dvc.lock`` records). It is the Dagster data version of the dataset asset and an MLflow tag,
  so data lineage is one value everywhere. It is computed here with DVC's algorithm (no DVC
  process per sensor tick); a test checks it against the hash DVC itself records.
- :func:`dataset_status` reports a dataset changed on disk without ``dvc commit``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ops.config import Params
from ops.errors import VersioningError
from ops.layout import TaskLayout
from ops.stages import task_stages
from ops.storage import dvc_remote, redact
from ops.tasks import task_names

log = logging.getLogger(__name__)

TASKS = task_names()
# Paths in dvc.yaml are templated from params.yaml, so moving a directory there needs no edit here.
_TEMPLATED = {"artifacts_dir": "${project.artifacts_dir}", "root": "${%s.dataset.root}"}
# DVC never looks inside these (its default ignore list).
_DVC_IGNORED_DIRS = {".git", ".hg", ".dvc"}
_CHUNK = 1 << 20
DVC_TIMEOUT_S = 3600.0  # a whole `dvc repro` of the demo; status and config calls take seconds


def dvc_executable() -> str:
    """The ``dvc`` program: beside this interpreter (``.venv/bin/dvc``), else on ``PATH``."""
    beside = Path(sys.executable).parent / "dvc"
    if beside.exists():
        return str(beside)
    found = shutil.which("dvc")
    if found is None:
        raise VersioningError(
            "the dvc executable was not found: run `make setup` (DVC lives in .venv-dvc and is "
            "linked as .venv/bin/dvc)"
        )
    return found


def dvc_python() -> str:
    """The interpreter DVC runs in: the one its ``dvc`` script names (``.venv-dvc/bin/python``)."""
    script = Path(dvc_executable()).resolve()
    with script.open("rb") as handle:
        first = handle.readline(4096).decode(errors="replace")
    interpreter = first.removeprefix("#!").strip().split(" ")[0] if first.startswith("#!") else ""
    if not interpreter or not Path(interpreter).is_file():
        raise VersioningError(
            f"cannot tell which Python DVC runs in: {script} does not start with a #! line naming "
            "an interpreter (install DVC with pip, as `make setup` does)"
        )
    return interpreter


def dvc_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment DVC runs in: ours, with analytics off (no network calls at exit), and the
    directory of this interpreter first on ``PATH`` so stage commands find ``visionforge``."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", **(extra or {})}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_dvc(
    args: Sequence[str],
    repo: Path | str = ".",
    env: dict[str, str] | None = None,
    timeout: float = DVC_TIMEOUT_S,
    fresh_transfer_index: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``dvc <args>`` in ``repo``; failing, raise :class:`VersioningError` with its redacted output.

    ``fresh_transfer_index`` (push, pull, fetch): drop DVC's cached list of what to transfer first,
    which a killed transfer can leave incomplete (:mod:`ops.dvc_transfer` says how).
    """
    if fresh_transfer_index:
        command = [dvc_python(), str(Path(__file__).with_name("dvc_transfer.py")), *args]
    else:
        command = [dvc_executable(), *args]
    try:
        done = subprocess.run(
            command,
            cwd=repo,
            env=dvc_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise VersioningError(f"`dvc {' '.join(args)}` in {repo} took longer than {timeout:.0f} s") from None
    if done.returncode != 0:
        output = redact((done.stderr or "") + (done.stdout or "")).strip()
        raise VersioningError(f"`dvc {' '.join(args)}` failed in {repo} (exit {done.returncode}):\n{output}")
    log.debug("dvc %s: %s", " ".join(args), redact(done.stdout).strip())
    return done


# --- dvc.yaml --------------------------------------------------------------------------------


def _templated_params(params: Params, task: str) -> Params:
    """``params`` with the directories replaced by DVC template expressions."""
    task_cfg = getattr(params, task)
    dataset = task_cfg.dataset.model_copy(update={"root": Path(_TEMPLATED["root"] % task)})
    return params.model_copy(
        update={
            "project": params.project.model_copy(update={"artifacts_dir": Path(_TEMPLATED["artifacts_dir"])}),
            task: task_cfg.model_copy(update={"dataset": dataset}),
        }
    )


def dvc_stages(params: Params, task: str) -> dict[str, Any]:
    """The ``stages:`` entries of ``task`` (stage names prefixed by the task when there are several)."""
    templated = _templated_params(params, task)
    stages: dict[str, Any] = {}
    for step in task_stages(templated, task):
        if not step.in_dvc:
            continue
        entry: dict[str, Any] = {"cmd": f"visionforge {step.name} {task}", "desc": step.description}
        entry["params"] = list(step.params)
        if step.deps:
            entry["deps"] = [str(p) for p in step.deps]
        if step.outs:
            entry["outs"] = [str(p) for p in step.outs]
        if step.metrics:
            entry["metrics"] = [str(p) for p in step.metrics]
        if step.plots:
            entry["plots"] = [
                {str(plot.path): {"x": plot.x, "y": plot.y, "title": plot.title}}
                if plot.is_series
                else {str(plot.path): {"title": plot.title}}
                for plot in step.plots
            ]
        stages[step.name if len(TASKS) == 1 else f"{task}-{step.name}"] = entry
    return stages


def render_dvc_yaml(params: Params, tasks: Sequence[str] = TASKS) -> str:
    """The text of ``dvc.yaml`` for ``tasks``: what ``make dvc-yaml`` writes and a test compares."""
    stages: dict[str, Any] = {}
    for task in tasks:
        stages.update(dvc_stages(params, task))
    header = (
        "# Rendered by `python -m ops.versioning render` from each task's stage table (stages() in its\n"
        "# steps module, see ops/tasks.py): edit that table, not this.\n"
        "# One stage per step, each calling the visionforge CLI; paths and params from params.yaml.\n"
        "# `visionforge evaluate` is no stage: validate scores PyTorch too, into the same files.\n"
    )
    return header + yaml.safe_dump({"stages": stages}, sort_keys=False, width=110)


def write_dvc_yaml(params: Params, path: Path | str = "dvc.yaml") -> Path:
    from ops.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(render_dvc_yaml(params))
    return Path(path)


# --- repository ------------------------------------------------------------------------------


def init_repo(repo: Path | str, params: Params) -> None:
    """``dvc init`` (when ``.dvc/`` is absent), analytics off, and the default remote from params."""
    repo = Path(repo)
    if not (repo / ".dvc").is_dir():
        run_dvc(["init", "--quiet"], repo)
    run_dvc(["config", "core.analytics", "false"], repo)
    configure_remote(repo, params)


def configure_remote(repo: Path | str, params: Params, local: bool = False) -> str:
    """Make ``storage.remote`` DVC's default remote (idempotent); return its name.

    Only the URL and options (endpoint, region) are written; credentials stay in the
    environment. ``local`` writes to ``.dvc/config.local`` (this machine only) instead of the
    committed ``.dvc/config``.
    """
    spec = dvc_remote(params.storage)
    scope = ["--local"] if local else []
    # a relative directory is taken from the repository root (DVC's cwd here); DVC stores it
    # relative to its config file itself
    run_dvc(["remote", "add", *scope, "--force", "--default", spec.name, spec.url], repo)
    for option, value in spec.options.items():
        run_dvc(["remote", "modify", *scope, spec.name, option, value], repo)
    log.info("DVC default remote: %s -> %s", spec.name, redact(spec.url))
    return spec.name


def repro(repo: Path | str, *targets: str, env: dict[str, str] | None = None) -> list[str]:
    """``dvc repro``; return the names of the stages that ran (empty when everything was up to date)."""
    done = run_dvc(["repro", *targets], repo, env=env)
    ran = []
    for line in done.stdout.splitlines():
        if line.startswith("Running stage '"):
            ran.append(line.split("'")[1])
    return ran


def changed_stages(repo: Path | str, env: dict[str, str] | None = None) -> list[str]:
    """Stages ``dvc status`` reports as changed (what the next ``dvc repro`` will run first)."""
    done = run_dvc(["status", "--json"], repo, env=env)
    status = json.loads(done.stdout or "{}")
    return [name.split(":")[-1] for name in status]


def _transfer(
    verb: str, repo: Path | str, targets: Sequence[str], remote: str | None, env: dict[str, str] | None
) -> str:
    """``dvc push`` or ``dvc pull``, safe to run again after one that was killed (see
    :mod:`ops.dvc_transfer`); return DVC's summary line (``3 files pushed``, ``Everything is up to
    date.``)."""
    args = [verb, *(["--remote", remote] if remote else []), *targets]
    done = run_dvc(args, repo, env=env, fresh_transfer_index=True)
    return (done.stdout.strip().splitlines() or [""])[-1]


def push(
    repo: Path | str, *targets: str, remote: str | None = None, env: dict[str, str] | None = None
) -> str:
    return _transfer("push", repo, targets, remote, env)


def pull(
    repo: Path | str, *targets: str, remote: str | None = None, env: dict[str, str] | None = None
) -> str:
    return _transfer("pull", repo, targets, remote, env)


# --- data version ----------------------------------------------------------------------------


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_version(path: Path | str) -> str:
    """DVC's hash of a directory (``<md5>.dir``) or file (``<md5>``): the dataset's data version.

    DVC 3 hashes a directory as the MD5 of the JSON list of ``{"md5", "relpath"}`` of its
    files, sorted by path; names and bytes count, modification times do not, so regenerating
    identical data keeps the version. This is the value ``dvc.lock`` records for the output.
    """
    path = Path(path)
    if path.is_file():
        return _file_md5(path)
    if not path.is_dir():
        raise VersioningError(f"no dataset at {path}: nothing to version")
    entries = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d not in _DVC_IGNORED_DIRS]
        for name in filenames:
            file = Path(dirpath) / name
            if file.is_file():
                entries.append({"md5": _file_md5(file), "relpath": file.relative_to(path).as_posix()})
    entries.sort(key=lambda entry: entry["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(listing, usedforsecurity=False).hexdigest() + ".dir"


def recorded_version(repo: Path | str, path: Path | str) -> str | None:
    """The hash ``dvc.lock`` in ``repo`` records for output ``path``; ``None`` if it records none."""
    repo = Path(repo)
    lock = repo / "dvc.lock"
    if not lock.is_file():
        return None
    try:
        data = yaml.safe_load(lock.read_text()) or {}
    except yaml.YAMLError as exc:
        raise VersioningError(f"{lock} is not valid YAML: {exc}") from None
    target = Path(os.path.normpath(path))
    if target.is_absolute():
        try:
            target = target.resolve().relative_to(repo.resolve())
        except ValueError:
            return None
    for stage in (data.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if Path(os.path.normpath(out.get("path", ""))) == target:
                return out.get("md5")
    return None


@dataclass(frozen=True)
class DatasetStatus:
    """The dataset's data version and whether DVC has it: ``committed`` (dvc.lock records this
    very hash), ``modified`` (dvc.lock records another: changed on disk without ``dvc commit``),
    ``untracked`` (no dvc.lock entry) or ``missing`` (no dataset on disk)."""

    path: Path
    version: str | None
    recorded: str | None
    state: str

    def describe(self) -> str:
        if self.state == "modified":
            return (
                f"{self.path} changed on disk since DVC recorded it (dvc.lock: {self.recorded}, now "
                f"{self.version}): run `dvc commit` to record it or `dvc checkout` to restore it"
            )
        if self.state == "untracked":
            return f"{self.path} is not recorded in dvc.lock yet (data version {self.version}): `dvc repro`"
        if self.state == "missing":
            return f"no dataset at {self.path}"
        return f"{self.path} matches dvc.lock (data version {self.version})"


def dataset_status(params: Params, task: str, repo: Path | str = ".") -> DatasetStatus:
    """Compare the dataset on disk with what ``dvc.lock`` recorded for it."""
    root = TaskLayout.for_task(params, task).dataset
    if not Path(root).is_dir():
        return DatasetStatus(Path(root), None, recorded_version(repo, root), "missing")
    version = dataset_version(root)
    recorded = recorded_version(repo, root)
    if recorded is None:
        state = "untracked"
    else:
        state = "committed" if recorded == version else "modified"
    return DatasetStatus(Path(root), version, recorded, state)


# --- code version ----------------------------------------------------------------------------


def git_commit(repo: Path | str = ".") -> str:
    """``HEAD``'s commit, with ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ops.versioning render [--params FILE] [--out dvc.yaml]``: rewrite dvc.yaml."""
    import argparse

    from ops.config import DEFAULT_PARAMS_PATH, load_params

    parser = argparse.ArgumentParser(prog="python -m ops.versioning")
    parser.add_argument("command", choices=("render",))
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_PATH)
    parser.add_argument("--out", type=Path, default=Path("dvc.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log.info("wrote %s", write_dvc_yaml(load_params(args.params), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
