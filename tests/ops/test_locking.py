"""The per-task writer lock against real processes: the CLI, a Dagster materialisation, a holder
killed with SIGKILL, and a writer that waits."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from dagster import DagsterEventType, materialize

from assets.factory import build_task_assets
from assets.resources import ParamsResource, TrackingResource
from ops.config import load_params
from ops.locking import TaskLockedError, lock_path, task_lock
from tests.conftest import REPO_ROOT, run_cli, tiny_params_dict, write_params

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ops.config import load_params
    from ops.locking import task_lock

    params_path, task, hold_s, done = sys.argv[1], sys.argv[2], float(sys.argv[3]), Path(sys.argv[4])
    with task_lock(load_params(params_path), task, "a holding script"):
        print("held", flush=True)
        time.sleep(hold_s)
        done.write_text("released")
    """
)


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    return write_params(tmp_path, tiny_params_dict(tmp_path))


def _hold(params_file: Path, task: str, hold_s: float) -> tuple[subprocess.Popen, Path]:
    """Another process holding ``task``'s lock for ``hold_s``; returns once it holds it."""
    done = params_file.parent / f"released-{task}"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(params_file), task, str(hold_s), str(done)],
        cwd=params_file.parent,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "held"
    return process, done


def test_a_cli_step_beside_a_writer_fails_at_once_naming_it(params_file):
    with task_lock(load_params(params_file), "sidd", "visionforge train sidd"):
        started = time.monotonic()
        done = run_cli("validate", "sidd", "--params", str(params_file), cwd=params_file.parent)
        took = time.monotonic() - started
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("visionforge validate: error: task sidd is busy: visionforge train sidd (pid ")
    assert f"(pid {os.getpid()} on " in error and str(lock_path(load_params(params_file), "sidd")) in error
    assert "Traceback" not in done.stderr
    assert took < 60  # it did not wait for the holder (the command's own start-up is most of it)


def test_a_dagster_materialisation_beside_a_cli_step_fails_naming_it(params_file):
    holder, _ = _hold(params_file, "sidd", 120)
    try:
        result = materialize(
            [a for a in build_task_assets("sidd") if a.key.path[-1] == "dataset"],
            resources={
                "params": ParamsResource(path=str(params_file)),
                "tracking": TrackingResource(),
            },
            raise_on_error=False,
        )
    finally:
        holder.kill()
        holder.wait()
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.cause.message  # the step's own exception
    assert "TaskLockedError: task sidd is busy: a holding script (pid " in message
    assert f"(pid {holder.pid} on " in message


def test_a_waiting_writer_gets_the_lock_once_the_holder_is_done(params_file):
    holder, done = _hold(params_file, "sidd", 1.5)
    with task_lock(load_params(params_file), "sidd", "the waiter", wait_s=60):
        assert done.read_text() == "released"  # never both at once
    assert holder.wait(timeout=30) == 0


def test_a_bounded_wait_ends_in_the_error_that_names_the_holder(params_file):
    holder, _ = _hold(params_file, "sidd", 120)
    try:
        with pytest.raises(TaskLockedError, match=r"busy after waiting 1 s: a holding script \(pid "):
            with task_lock(load_params(params_file), "sidd", "the waiter", wait_s=1):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holders_lock_is_taken_over_saying_so(params_file, caplog):
    holder, done = _hold(params_file, "sidd", 120)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    path = lock_path(load_params(params_file), "sidd")
    assert path.is_file()  # what the killed holder left
    with caplog.at_level(logging.WARNING, logger="ops.locking"):
        with task_lock(load_params(params_file), "sidd", "the next writer"):
            pass
    assert not done.exists()
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("took over the lock of sidd left by a holding script (pid ")
    assert f"(pid {holder.pid} on " in warning and "ended without releasing it" in warning
    assert not path.exists()  # released cleanly this time


def test_tasks_do_not_wait_on_each_other_and_a_holder_may_take_its_lock_again(params_file):
    params = load_params(params_file)
    with task_lock(params, "sidd", "one"):
        with task_lock(params, "gopro", "another task"):
            pass
        with task_lock(params, "sidd", "the same process, nested"):
            pass
        holder_view = subprocess.run(
            [sys.executable, "-c", HOLD, str(params_file), "sidd", "0", str(params_file.parent / "x")],
            cwd=params_file.parent,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
        )
        assert holder_view.returncode == 1 and "task sidd is busy: one (pid" in holder_view.stderr
    assert not lock_path(params, "sidd").exists()
