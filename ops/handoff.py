"""Steps that run in separate containers (a Kubeflow pipeline's pods) hand files over through S3.

``visionforge <step> <task> --pipeline-run ID`` downloads what the step reads (its stage's
``deps`` in :mod:`ops.stages`) from ``s3://<bucket>/<prefix>/runs/ID/<path>`` before it runs,
and uploads what it wrote (``outs``, ``metrics``, ``plots``) there afterwards, so each pod starts
from an empty disk and the run's files stay together under one key prefix. The same table
renders ``dvc.yaml``, so a step reads and writes the same files on a laptop, under ``dvc repro``
and in a pod.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ops.config import Params
from ops.errors import StorageError
from ops.stages import deployable_artefacts, stage
from ops.storage import S3Store

log = logging.getLogger(__name__)

# The release reads the deployable artefacts and nothing else; it is no stage of dvc.yaml.
RELEASE_STEP = "promote"


@dataclass(frozen=True)
class StepFiles:
    inputs: tuple[Path, ...]
    outputs: tuple[Path, ...]
    inputs_required: bool = True


def step_files(params: Params, task: str, step: str) -> StepFiles:
    """What ``step`` of ``task`` reads and writes, from the stage table."""
    if step == RELEASE_STEP:
        # TensorRT engines exist only where they were built: each artefact is optional here, and
        # the release itself names the CPU formats it cannot do without.
        return StepFiles(tuple(deployable_artefacts(params, task).values()), (), inputs_required=False)
    entry = stage(params, task, step)
    plots = tuple(plot.path for plot in entry.plots)
    return StepFiles(entry.deps, (*entry.outs, *entry.metrics, *plots))


def _relative_key(path: Path) -> str:
    """The object key of a path: relative paths as they are (the repository's layout)."""
    parts = PurePosixPath(path.as_posix())
    if parts.is_absolute() or ".." in parts.parts:
        raise StorageError(f"{path}: only paths inside the working directory can be handed over")
    return str(parts)


class Handoff:
    """One pipeline run's files in S3 (``storage.s3``; credentials from the environment)."""

    def __init__(self, params: Params, run_id: str, store: S3Store | None = None) -> None:
        if not run_id or "/" in run_id:
            raise StorageError(f"--pipeline-run {run_id!r}: expected one non-empty name without '/'")
        self.params, self.run_id = params, run_id
        self.store = store or S3Store(params.storage.s3)

    def _url(self, key: str) -> str:
        return f"s3://{self.store.cfg.bucket}/{self.store.key('runs', self.run_id, key)}"

    def pull(self, task: str, step: str) -> list[Path]:
        """Download every input of ``step``; a missing input names the file and its URL."""
        files = step_files(self.params, task, step)
        fetched: list[Path] = []
        for path in files.inputs:
            key = _relative_key(path)
            prefix = self.store.key("runs", self.run_id, key)
            keys = [
                k
                for k in self.store.list("runs", self.run_id, key)
                if k == prefix or k.startswith(prefix + "/")
            ]
            if not keys and files.inputs_required:
                raise StorageError(
                    f"{task}/{step} reads {path}, but nothing is at {self._url(key)}: the step that "
                    f"writes it has not run in pipeline run {self.run_id}"
                )
            for found in keys:
                local = Path(found.removeprefix(self.store.key("runs", self.run_id) + "/"))
                self.store.download(local, "runs", self.run_id, str(local))
                fetched.append(local)
        log.info("%s/%s: %d input files from %s", task, step, len(fetched), self._url(""))
        return fetched

    def push(self, task: str, step: str) -> list[str]:
        """Upload every file ``step`` wrote (a directory output file by file)."""
        uploaded: list[str] = []
        for path in step_files(self.params, task, step).outputs:
            path = Path(path)
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            written = [file for file in files if file.is_file()]
            if not written:
                log.warning("%s/%s did not write %s; nothing to hand over", task, step, path)
            for file in written:
                uploaded.append(self.store.upload(file, "runs", self.run_id, _relative_key(file)))
        log.info("%s/%s: %d output files to %s", task, step, len(uploaded), self._url(""))
        return uploaded
