"""Faults the pipeline must survive: SIGKILL each step of a tiny pipeline at seeded moments, run
each on a disk that fills part-way, and (``--services``, :mod:`benchmarks.service_faults`) kill
and stall its MLflow and S3 servers; run the step again and check that nothing was lost, left
half-written or promoted unvalidated.

    python -m benchmarks.faults [--task sidd] [--kills 50] [--disk-full 2] [--services] [--seed 0]
        [--steps ingest train ...] [--point NAME[@N]] [--workdir build/faults/work]
        [--out build/faults.json]

A reference run takes the steps in order (``ingest`` ... ``promote``, then ``push`` of the data and
artefacts to the local remote, each a ``visionforge`` command), in one directory, with MLflow
(SQLite store), DVC and git there. Before each step the directory is copied aside; the step runs
with ``VISIONFORGE_FAILPOINT_TRACE`` set, so the reference learns which kill points
(:mod:`ops.failpoints`) the step passes and when, and what the step's outputs are.

Each kill restores the copy from before its step, starts the step in its own process group,
and kills the whole group: at a failpoint (the N-th pass of a named point: a file written but not
yet renamed, a registry call returned and the next not made) or after a seeded delay within the
step's working time. Then the step runs again, as a user would after a crash (``train`` with
``--resume`` once a checkpoint exists), and the invariants are checked:

- the re-run succeeds;
- the step's outputs equal the reference's, byte for byte (the generated data, the weights after
  ``--resume``, the ONNX models), or for ``validate`` and ``promote`` in what they decide;
- no file a killed writer left behind (``.<name>.<pid>-<random>.tmp``) remains;
- every JSON file parses;
- every registered model version's file exists in the artefact store and its sha256 is its tag;
- ``candidate`` and ``champion`` point only at versions whose validation passed;
- every object in the DVC remote hashes to its name;
- no credential from the steps' environment appears in any file they wrote, their logs included.

The table (step, kills, recovered, violations) is printed and written as JSON; the exit status
is 1 when any invariant was violated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ops.failpoints import KILL_ENV, TRACE_ENV, parse_failpoint
from ops.io import sha256_file, temp_writer, write_json

if TYPE_CHECKING:
    from benchmarks.service_faults import ServiceFault

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = ("ingest", "train", "export", "quantize", "validate", "promote", "push")
STEP_TIMEOUT_S = 600.0
# Credentials in every step's environment, as a deployment has them: none may reach a file.
SECRETS = {
    "AWS_ACCESS_KEY_ID": "VFFAULTKEY" + secrets.token_hex(6).upper(),
    "AWS_SECRET_ACCESS_KEY": "vf-fault-secret-" + secrets.token_hex(16),
    "MLFLOW_TRACKING_PASSWORD": "vf-fault-password-" + secrets.token_hex(8),
}
ALIASES = ("candidate", "champion")


class HarnessError(Exception):
    """The campaign cannot run as asked (an unknown step, a point no step passes, a failed reference)."""


@dataclass(frozen=True)
class KillPoint:
    """Where a step is killed: the ``nth`` pass of ``failpoint``, or ``delay_s`` after it starts."""

    step: str
    failpoint: str | None = None
    nth: int = 1
    delay_s: float | None = None

    def describe(self) -> str:
        if self.failpoint is not None:
            return f"{self.failpoint}@{self.nth}"
        return f"after {self.delay_s:.2f} s"


@dataclass(frozen=True)
class DiskFull:
    """The step runs on a disk with room for ``room`` of what its uninterrupted run wrote."""

    step: str
    room: float

    def describe(self) -> str:
        return f"disk full at {self.room:.0%} of its writing"


@dataclass
class Trial:
    point: KillPoint | DiskFull | ServiceFault
    killed: bool  # the fault landed: a kill before the step finished, a disk that filled
    rerun_exit: int | None = None
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class StepReference:
    """What the uninterrupted step did: its kill points, working time and outputs."""

    passes: list[tuple[str, int, float]]  # (failpoint, nth pass, seconds after the start)
    seconds: float
    fingerprint: dict[str, Any]
    outputs: dict[str, str]  # sha256 of every file under data/ and artifacts/ after the step
    written_bytes: int  # how much the run directory grew


def _disk_usage(root: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*"))


def _loads(path: Path) -> bool:
    """Whether a file that neither run left is complete: it parses as what its name says."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml"):
            yaml.safe_load(path.read_text())
        elif path.suffix == ".pt":
            import torch

            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".onnx":
            import onnx

            onnx.checker.check_model(onnx.load(str(path)))
        elif path.suffix in (".png", ".jpg", ".jpeg"):
            from PIL import Image

            with Image.open(path) as image:
                image.load()
    except Exception:
        return False
    return True


def _tree_hashes(root: Path) -> dict[str, str]:
    if root.is_file():
        return {root.name: sha256_file(root)}
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _weights(path: Path) -> dict[str, str]:
    """{parameter: sha256 of its values}: equal weights, whatever pickling order the file has."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)["model_state"]
    return {name: hashlib.sha256(t.numpy().tobytes()).hexdigest() for name, t in state.items()}


class Campaign:
    """One task's pipeline in ``workdir/run``, its reference, and kills against it."""

    def __init__(self, workdir: Path, task: str, steps: tuple[str, ...] = STEPS) -> None:
        unknown = [s for s in steps if s not in STEPS]
        if unknown:
            raise HarnessError(f"unknown step(s) {', '.join(unknown)}: the steps are {', '.join(STEPS)}")
        self.workdir = workdir.resolve()
        self.run_dir = self.workdir / "run"
        self.task = task
        self.steps = steps
        self.references: dict[str, StepReference] = {}

    # --- the pipeline ------------------------------------------------------------------------

    @property
    def params_path(self) -> Path:
        return self.run_dir / "params.yaml"

    def params(self) -> Any:
        from ops.config import load_params

        return load_params(self.params_path)

    def layout(self) -> Any:
        from ops.layout import TaskLayout

        return TaskLayout.for_task(self.params(), self.task)

    def command(self, step: str, rerun: bool = False) -> list[str]:
        task = [] if step == "push" else [self.task]  # `visionforge push` is the whole repository's
        command = [sys.executable, "-m", "ops.cli", step, *task, "--params", str(self.params_path)]
        if step == "train" and rerun and (self.layout().model_dir / "checkpoints" / "last.pt").is_file():
            command.append("--resume")
        return command

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        from ops.versioning import dvc_env

        env = {k: v for k, v in dvc_env().items() if k not in ("MLFLOW_TRACKING_URI", KILL_ENV, TRACE_ENV)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return {**env, **SECRETS, **(extra or {})}

    def start(
        self, step: str, extra_env: dict[str, str] | None = None, rerun: bool = False
    ) -> subprocess.Popen:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{step}.log", "ab") as output:  # the child keeps its own copy
            return subprocess.Popen(
                self.command(step, rerun),
                cwd=self.run_dir,
                env=self.environment(extra_env),
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a kill takes the step's whole process group, as a pod's would
            )

    @staticmethod
    def finish(process: subprocess.Popen, timeout: float = STEP_TIMEOUT_S) -> int:
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        try:  # whatever the step started (loader workers, a generator pool) dies with it
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if code is None:
            process.wait()
            raise HarnessError(f"{process.args} did not finish within {timeout:.0f} s")
        return code

    def run_step(self, step: str, rerun: bool = False) -> int:
        return self.finish(self.start(step, rerun=rerun))

    def outputs(self, root: Path | None = None) -> dict[str, str]:
        """sha256 of every file the pipeline keeps under data/ and artifacts/ of ``root`` (the run)."""
        root = root or self.run_dir
        return {
            f"{top}/{name}": digest
            for top in ("data", "artifacts")
            if (root / top).is_dir()
            for name, digest in _tree_hashes(root / top).items()
        }

    def params_dict(self) -> dict[str, Any]:
        """The tiny configuration, everything under the run directory (its DVC remote included)."""
        from tests.conftest import tiny_params_dict

        return tiny_params_dict(self.run_dir)

    def setup(self) -> None:
        """A fresh directory: tiny params, git, DVC with the local remote."""
        from ops.versioning import configure_remote, run_dvc

        shutil.rmtree(self.workdir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        self.params_path.write_text(yaml.safe_dump(self.params_dict(), sort_keys=False))
        subprocess.run(["git", "init", "-q"], cwd=self.run_dir, check=True)
        run_dvc(["init", "--quiet"], self.run_dir)
        configure_remote(self.run_dir, self.params(), local=True)
        # DVC remembers what the remote holds in its site cache (/var/tmp/dvc by default, keyed
        # by the repository's path). Kept outside, it would outlive each restore of the remote:
        # a re-run then skipped objects DVC believed uploaded (seen in the campaign).
        run_dvc(
            ["config", "--local", "core.site_cache_dir", str(self.run_dir / ".dvc" / "site-cache")],
            self.run_dir,
        )

    def snapshot(self, step: str) -> Path:
        return self.workdir / "snapshots" / step

    def restore(self, step: str) -> None:
        shutil.rmtree(self.run_dir)
        shutil.copytree(self.snapshot(step), self.run_dir, symlinks=True)

    # --- the reference -----------------------------------------------------------------------

    def reference(self) -> None:
        """Run every step once, uninterrupted, recording kill points and outputs."""
        self.setup()
        for step in STEPS:
            if step == "push":  # what `push` uploads: the data and everything the steps wrote
                from ops.versioning import run_dvc

                run_dvc(["add", "--quiet", "data", "artifacts"], self.run_dir)
            shutil.copytree(self.run_dir, self.snapshot(step), symlinks=True)
            before_bytes = _disk_usage(self.run_dir)
            trace = self.workdir / "traces" / f"{step}.jsonl"
            trace.parent.mkdir(parents=True, exist_ok=True)
            started = time.time()
            process = self.start(step, {TRACE_ENV: str(trace)})
            code = self.finish(process)
            seconds = time.time() - started
            if code != 0:
                raise HarnessError(
                    f"the reference run's {step} failed (exit {code}): see {self.workdir / 'logs' / step}.log"
                )
            counts: dict[str, int] = {}
            passes = []
            for line in trace.read_text().splitlines() if trace.is_file() else []:
                entry = json.loads(line)
                counts[entry["name"]] = counts.get(entry["name"], 0) + 1
                passes.append((entry["name"], counts[entry["name"]], entry["t"] - started))
            self.references[step] = StepReference(
                passes,
                seconds,
                self.fingerprint(step),
                self.outputs(),
                max(_disk_usage(self.run_dir) - before_bytes, 0),
            )

    # --- what a step leaves ----------------------------------------------------------------

    def fingerprint(self, step: str, registry: dict[str, Any] | None = None) -> dict[str, Any]:
        """The step's outputs in a form two correct runs agree on."""
        params = self.params()
        layout = self.layout()
        if step == "ingest":
            return _tree_hashes(Path(getattr(params, self.task).dataset.root))
        if step == "train":
            return _weights(layout.weights) | {
                "history": json.loads((layout.model_dir / "history.json").read_text())
            }
        if step == "export":
            return _tree_hashes(layout.onnx)
        if step == "quantize":
            return _tree_hashes(layout.onnx_int8)
        if step == "validate":
            report = json.loads(layout.validation.read_text())
            return {"passed": report["passed"], "gates": {g["name"]: g["passed"] for g in report["gates"]}}
        if step == "promote":
            return self.aliases(registry if registry is not None else self.registry())
        return {"remote": sorted(self.remote_objects())}

    def remote_objects(self) -> dict[str, Path]:
        """The DVC remote's objects. DVC uploads into ``.<random>.tmp`` beside an object and
        renames; a killed push leaves that hidden file, which DVC never reads as an object
        and does not remove either (seen in this campaign): it is not counted as one."""
        remote = self.remote_dir
        return (
            {
                p.relative_to(remote).as_posix(): p
                for p in remote.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(remote).parts)
            }
            if remote.is_dir()
            else {}
        )

    @property
    def remote_dir(self) -> Path:
        """Where the DVC remote's objects are files."""
        return self.run_dir / "dvc-storage"

    def artefact_file(self, source: str) -> Path:
        """The file a registered version's source URI names."""
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(source).path))

    def registry(self) -> dict[str, Any]:
        """Every registered model's aliases and versions (source, tags), read by MLflow in a fresh
        process: a client here would keep the SQLite file that the last restore replaced open."""
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.faults", "--registry-of", str(self.params_path)],
            cwd=REPO_ROOT,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise HarnessError(f"reading the registry failed: {done.stderr.strip()[-2000:]}")
        return json.loads(done.stdout)

    @staticmethod
    def aliases(registry: dict[str, Any]) -> dict[str, dict[str, str]]:
        """{registered model: {alias: the sha256 of the version it names}}."""
        return {
            name: {
                alias: model["versions"][v]["tags"].get("sha256", "?")
                for alias, v in model["aliases"].items()
            }
            for name, model in registry.items()
            if model["aliases"]
        }

    def violations(self, step: str) -> list[str]:
        """Every invariant the directory breaks now that ``step`` ran to the end, each named with where."""
        registry = self.registry()
        found = self.integrity_violations(registry)
        expected = self.references[step].fingerprint
        actual = self.fingerprint(step, registry)
        if actual != expected:
            differing = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
            found.append(
                f"{step}'s outputs differ from the uninterrupted run's: {', '.join(differing)[:300]}"
            )
        return found

    def half_written(self, step: str) -> list[str]:
        """After ``step`` failed: every file under data/ and artifacts/ is as before the step, as
        the uninterrupted step left it, or complete on its own (a checkpoint of an earlier epoch)."""
        before = self.outputs(self.snapshot(step))
        after = self.references[step].outputs
        found = []
        for name, digest in self.outputs().items():
            if digest not in (before.get(name), after.get(name)) and not _loads(self.run_dir / name):
                found.append(f"a half-written file looks complete: {name}")
        return found

    def integrity_violations(self, registry: dict[str, Any]) -> list[str]:
        """What must hold whatever happened to a step: no leftovers, JSON that parses, a sound
        registry and DVC remote, no credential in any file."""
        found: list[str] = []
        for path in sorted(self.run_dir.rglob("*")):
            inside = path.relative_to(self.run_dir).parts
            if inside[0] in (".git", ".dvc"):
                continue
            if temp_writer(path.name) is not None:
                found.append(f"a killed writer's leftover remains: {path.relative_to(self.run_dir)}")
            elif path.suffix == ".json" and path.is_file():
                try:
                    json.loads(path.read_text())
                except ValueError:
                    found.append(f"truncated or corrupt JSON: {path.relative_to(self.run_dir)}")
        found += self.registry_violations(registry)
        found += self.secret_leaks()
        for name, path in self.remote_objects().items():
            digest = hashlib.md5(path.read_bytes()).hexdigest()  # DVC names objects by their md5
            if name.replace("/", "").removeprefix("filesmd5").removesuffix(".dir") != digest:
                found.append(f"DVC remote object {name} does not hash to its name (md5 {digest})")
        return found

    def secret_leaks(self) -> list[str]:
        """Files of the run (logs, the MLflow store and artefacts, DVC's config) holding a credential."""
        found = []
        for path in sorted([*self.run_dir.rglob("*"), *(self.workdir / "logs").glob("*")]):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                found += [
                    f"{name} appears in {path}" for name, value in SECRETS.items() if value.encode() in data
                ]
        return found

    def registry_violations(self, registry: dict[str, Any]) -> list[str]:
        found = []
        for name, model in registry.items():
            for number, version in model["versions"].items():
                local = self.artefact_file(version["source"])
                if not local.is_file():
                    found.append(f"{name} v{number} points at a missing file: {version['source']}")
                elif sha256_file(local) != version["tags"].get("sha256"):
                    found.append(f"{name} v{number}'s file does not match its sha256 tag: {local}")
            for alias, number in model["aliases"].items():
                if alias in ALIASES and model["versions"][number]["tags"].get("validation.passed") != "true":
                    found.append(f"{name}@{alias} points at v{number}, whose validation did not pass")
        return found

    # --- kills -------------------------------------------------------------------------------

    def plan(self, kills: int, seed: int, point: str | None = None) -> list[KillPoint]:
        """``kills`` kill points spread over the steps in turn, drawn with ``seed``: half at a
        failpoint the step passes (where it passes any), half after a delay within its work.
        With ``point`` (``NAME[@N]``), every kill is at that pass of that point."""
        rng = random.Random(seed)
        if point is not None:
            name, nth = parse_failpoint(point)
            for step in self.steps:
                if any(p[:2] == (name, nth) for p in self.references[step].passes):
                    return [KillPoint(step, name, nth)] * kills
            raise HarnessError(f"no step among {', '.join(self.steps)} passes {name}@{nth} (see --list)")
        planned = []
        for index in range(kills):
            step = self.steps[index % len(self.steps)]
            reference = self.references[step]
            # the work runs from the first point passed to the last; before, the program imports
            if reference.passes:
                begin, end = reference.passes[0][2], reference.passes[-1][2]
            else:
                begin, end = 0.3 * reference.seconds, 0.9 * reference.seconds
            if reference.passes and rng.random() < 0.5:
                # a kind of point (write, dataset, mlflow) first, then a point, then one of its
                # passes: 39 version tags and 30 MLflow calls must not crowd out one rename
                kind = rng.choice(sorted({p[0].split(":")[0] for p in reference.passes}))
                name = rng.choice(sorted({p[0] for p in reference.passes if p[0].startswith(kind + ":")}))
                nth = rng.choice([p[1] for p in reference.passes if p[0] == name])
                planned.append(KillPoint(step, name, nth))
            else:
                planned.append(KillPoint(step, delay_s=round(rng.uniform(begin, end), 3)))
        return planned

    def trial(self, point: KillPoint) -> Trial:
        began = time.time()
        self.restore(point.step)
        if point.failpoint is not None:
            process = self.start(point.step, {KILL_ENV: f"{point.failpoint}@{point.nth}"})
            code = self.finish(process)
        else:
            process = self.start(point.step)
            try:
                process.wait(timeout=point.delay_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            code = self.finish(process)
        result = Trial(point, killed=code == -signal.SIGKILL)
        if not result.killed:
            result.seconds = round(time.time() - began, 1)
            return result  # finished before the kill: nothing to recover from
        self.recover(result, point.step, "after the kill")
        result.seconds = round(time.time() - began, 1)
        return result

    def recover(self, result: Trial, step: str, after: str) -> None:
        """Run ``step`` again, as a user would ``after`` the fault; then check the invariants."""
        result.rerun_exit = self.run_step(step, rerun=True)
        if result.rerun_exit != 0:
            result.violations.append(
                f"the re-run of {step} {after} failed (exit {result.rerun_exit}): "
                f"see {self.workdir / 'logs' / step}.log"
            )
        else:
            result.violations += self.violations(step)

    def output_since(self, step: str, offset: int) -> str:
        """What ``step`` printed to its log after ``offset``."""
        with (self.workdir / "logs" / f"{step}.log").open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")

    def log_size(self, step: str) -> int:
        log = self.workdir / "logs" / f"{step}.log"
        return log.stat().st_size if log.is_file() else 0

    # --- a full disk ---------------------------------------------------------------------------

    def plan_disk_full(self, per_step: int, seed: int) -> list[DiskFull]:
        """``per_step`` full disks for every step, each leaving room for a seeded share of what
        the step wrote (its database pages and temporary files included)."""
        rng = random.Random(seed)
        return [
            DiskFull(step, round(rng.uniform(0.0, 0.9), 3)) for step in self.steps for _ in range(per_step)
        ]

    def disk_full_trial(self, fault: DiskFull) -> Trial:
        """Run the step with the run directory on a tmpfs that fills part-way through its writing;
        check the one error it gives and what it left, then free the space and run it again."""
        from tests.services import Tmpfs

        began = time.time()
        self.restore(fault.step)
        reference = self.references[fault.step]
        held = self.workdir / "held"
        shutil.rmtree(held, ignore_errors=True)
        self.run_dir.rename(held)
        disk = Tmpfs(self.run_dir, 2 * _disk_usage(held) + 4 * reference.written_bytes + (64 << 20))
        disk.mount()
        result = Trial(fault, killed=False)
        try:
            shutil.copytree(held, self.run_dir, symlinks=True, dirs_exist_ok=True)
            shutil.rmtree(held)
            disk.resize(disk.used_bytes() + int(fault.room * reference.written_bytes))
            offset = self.log_size(fault.step)
            code = self.run_step(fault.step)
            if code != 0:  # the disk filled (a step that fit finished: nothing to recover from)
                result.killed = True
                output = self.output_since(fault.step, offset)
                result.violations += self.full_disk_error(fault.step, code, output)
                result.violations += self.half_written(fault.step)
                result.violations += self.integrity_violations(self.registry())
        finally:
            shutil.copytree(self.run_dir, held, symlinks=True)
            disk.unmount()
            self.run_dir.rmdir()
            held.rename(self.run_dir)
        if result.killed:
            self.recover(result, fault.step, "after freeing space")
        result.seconds = round(time.time() - began, 1)
        return result

    @staticmethod
    def full_disk_error(step: str, code: int, output: str) -> list[str]:
        """A step that ran out of space ends with an error line, says which file found no space,
        and prints no traceback. (``visionforge push`` passes on DVC's output: one ``ERROR:`` line
        per file it could not upload, then its summary, DVC's own format.)"""
        lines = [line for line in output.splitlines() if line.strip()]
        error = error_line(output)
        if code < 0:
            return [f"{step} on a full disk died of signal {-code}"]
        if "Traceback (most recent call last)" in output:
            return [f"{step} on a full disk printed a traceback instead of one error: {error[:200]!r}"]
        if not error:
            return [f"{step} on a full disk ended without an error: {(lines or [''])[-1][:200]!r}"]
        if not any(re.search(r"no space left|disk is full", line, re.IGNORECASE) for line in lines):
            return [f"{step} on a full disk did not say that the disk is full: {error[:200]!r}"]
        return []


def error_line(output: str) -> str:
    """The last error line a step printed: ``visionforge <step>: error: …`` or DVC's ``ERROR: …``
    (after which DVC may print a line of advice); empty when there is none."""
    errors = [
        line for line in output.splitlines() if re.match(r"(visionforge [\w-]+: error: |ERROR: )", line)
    ]
    return errors[-1] if errors else ""


def registry_of(params_path: Path) -> dict[str, Any]:
    """{model: {"aliases": {alias: version}, "versions": {version: {"source", "tags"}}}}."""
    from mlflow import MlflowClient

    from ops.config import load_params
    from ops.tracking import tracking_uri

    uri = tracking_uri(load_params(params_path))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {
        model.name: {
            "aliases": {alias: str(v) for alias, v in model.aliases.items()},
            "versions": {
                str(v.version): {"source": v.source, "tags": dict(v.tags)}
                for v in client.search_model_versions(f"name = '{model.name}'")
            },
        }
        for model in client.search_registered_models()
    }


def fault_kind(point: KillPoint | DiskFull | ServiceFault) -> str:
    if isinstance(point, KillPoint):
        return "kill"
    if isinstance(point, DiskFull):
        return "disk full"
    return f"{point.service} {point.how}"


def summarise(steps: tuple[str, ...], trials: list[Trial]) -> list[dict[str, Any]]:
    """One row per step and kind of fault that was tried on it."""
    kinds = list(dict.fromkeys(fault_kind(t.point) for t in trials))
    rows = []
    for step in steps:
        for kind in kinds:
            mine = [t for t in trials if t.point.step == step and fault_kind(t.point) == kind]
            if not mine:
                continue
            landed = [t for t in mine if t.killed]
            rows.append(
                {
                    "step": step,
                    "fault": kind,
                    "faults": len(landed),
                    "recovered": sum(1 for t in landed if not t.violations),
                    "violations": sum(len(t.violations) for t in landed),
                    "missed": len(mine) - len(landed),  # the step finished before the fault hit
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| step | fault | injected | recovered | invariant violations |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['step']} | {r['fault']} | {r['faults']} | {r['recovered']} | {r['violations']} |")
    total = {k: sum(r[k] for r in rows) for k in ("faults", "recovered", "violations")}
    lines.append(
        f"| **all** | | **{total['faults']}** | **{total['recovered']}** | **{total['violations']}** |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--task", default="sidd", help="the task whose pipeline is killed (default: %(default)s)"
    )
    parser.add_argument(
        "--kills",
        type=int,
        default=50,
        help="kills that land, spread over the steps in turn (default: %(default)s)",
    )
    parser.add_argument(
        "--disk-full",
        type=int,
        default=2,
        metavar="N",
        help="full disks per step, each filling at a seeded share of the step's writing; they need "
        "root to mount a tmpfs and are skipped, saying why, without it (default: %(default)s)",
    )
    parser.add_argument(
        "--services",
        action="store_true",
        help="also kill, stop and stall the services: the pipeline again with an MLflow server and "
        "an S3 server (nanio) on 127.0.0.1",
    )
    parser.add_argument("--seed", type=int, default=0, help="draws the faults (default: %(default)s)")
    parser.add_argument(
        "--steps", nargs="+", default=list(STEPS), metavar="STEP", help=f"of {', '.join(STEPS)}"
    )
    parser.add_argument("--point", metavar="NAME[@N]", help="kill only at this failpoint (see --list)")
    parser.add_argument("--list", action="store_true", help="print each step's failpoints and stop")
    parser.add_argument("--workdir", type=Path, default=Path("build/faults/work"))
    parser.add_argument("--out", type=Path, default=Path("build/faults.json"))
    parser.add_argument("--registry-of", type=Path, metavar="PARAMS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.registry_of is not None:  # the harness's own fresh-process registry reader
        print(json.dumps(registry_of(args.registry_of)))
        return 0
    try:
        campaign = Campaign(args.workdir, args.task, tuple(args.steps))
        print(f"reference run of {args.task} in {campaign.run_dir} ...", flush=True)
        campaign.reference()
        if args.list:
            for step in campaign.steps:
                print(f"{step} ({campaign.references[step].seconds:.1f} s):")
                for name, nth, at in campaign.references[step].passes:
                    print(f"  {name}@{nth}  at {at:.2f} s")
            return 0
        # a delay can outlast the step: such draws kill nothing, so draw until --kills have landed
        plan = campaign.plan(2 * args.kills, args.seed, args.point)
    except HarnessError as exc:
        print(f"faults: error: {exc}", file=sys.stderr)
        return 2
    trials: list[Trial] = []

    def report(trial: Trial, landed: int, wanted: int) -> None:
        missed = {"kill": "finished before the kill", "disk full": "the step fit"}.get(
            fault_kind(trial.point), "finished before the fault hit"
        )
        state = (
            missed
            if not trial.killed
            else ("recovered" if not trial.violations else "VIOLATED: " + "; ".join(trial.violations))
        )
        verb = {"kill": "killed", "disk full": "on a"}.get(fault_kind(trial.point), "with")
        print(
            f"[{landed}/{wanted}] {trial.point.step} {verb} {trial.point.describe()}: {state} "
            f"({trial.seconds} s)",
            flush=True,
        )

    for point in plan:
        if sum(t.killed for t in trials) == args.kills:
            break
        trials.append(campaign.trial(point))
        report(trials[-1], sum(t.killed for t in trials), args.kills)
    skipped = None
    if args.disk_full > 0 and args.point is None:
        from tests.services import tmpfs_unavailable

        skipped = tmpfs_unavailable()
        if skipped is not None:
            print(f"full-disk faults skipped: {skipped}", flush=True)
        else:
            disks = campaign.plan_disk_full(args.disk_full, args.seed)
            for number, fault in enumerate(disks, 1):
                trials.append(campaign.disk_full_trial(fault))
                report(trials[-1], number, len(disks))
    if args.services and args.point is None:
        from benchmarks.service_faults import ServiceCampaign

        served = ServiceCampaign(
            args.workdir.parent / f"{args.workdir.name}-services", args.task, campaign.steps
        )
        try:
            print(
                f"reference run of {args.task} with an MLflow server and S3 in {served.run_dir} ...",
                flush=True,
            )
            served.reference()
            faults = served.plan_services(args.seed)
            for number, fault in enumerate(faults, 1):
                trials.append(served.service_trial(fault))
                report(trials[-1], number, len(faults))
        except HarnessError as exc:
            print(f"faults: error: {exc}", file=sys.stderr)
            return 2
        finally:
            served.close()
    rows = summarise(campaign.steps, trials)
    write_json(
        args.out,
        {
            "task": args.task,
            "seed": args.seed,
            "summary": rows,
            "disk_full_skipped": skipped,
            "trials": [asdict(t) | {"fault": fault_kind(t.point)} for t in trials],
        },
    )
    print()
    print(table(rows))
    print(f"\nwritten: {args.out}")
    return 1 if any(r["violations"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
