"""Failpoints kill the process where they say, and atomic writes clean up after a killed writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from ops.failpoints import KILL_ENV, TRACE_ENV
from ops.io import temp_name, write_json
from tests.conftest import REPO_ROOT
from tests.services import dead_pid

PROGRAM = """
from ops.failpoints import failpoint
for i in range(3):
    failpoint("write:a")
    print("passed", i, flush=True)
failpoint("mlflow:b")
"""


def _run(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_failpoint_kills_at_its_nth_pass_and_not_before(tmp_path):
    done = _run({KILL_ENV: "write:a@2"})
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.split("\n")[:-1] == ["passed 0"]
    assert _run({KILL_ENV: "write:a"}).stdout == ""


def test_unset_or_unmatched_failpoints_change_nothing_and_a_trace_lists_every_pass(tmp_path):
    assert _run({}).returncode == 0
    trace = tmp_path / "trace.jsonl"
    done = _run({KILL_ENV: "write:zzz", TRACE_ENV: str(trace)})
    assert done.returncode == 0 and done.stdout.count("passed") == 3
    names = [json.loads(line)["name"] for line in trace.read_text().splitlines()]
    assert names == ["write:a"] * 3 + ["mlflow:b"]


def test_a_killed_writer_leaves_a_temp_file_the_next_writer_removes(tmp_path):
    target = tmp_path / "metrics.json"
    program = f"from ops.io import write_json; write_json({str(target)!r}, {{'a': 1}})"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), KILL_ENV: "write:metrics.json"}
    killed = subprocess.run([sys.executable, "-c", program], env=env, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert not target.exists()
    (leftover,) = tmp_path.glob(".metrics.json.*.tmp")
    assert json.loads(leftover.read_text()) == {"a": 1}  # complete, never published

    live = tmp_path / temp_name("metrics.json")  # this process's own: a writer still at work
    live.write_text("in progress")
    write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert not leftover.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["metrics.json", live.name])


def test_a_killed_generator_leaves_directories_the_next_generation_removes(tmp_path):
    from ops.data.writing import sibling_dir

    root = tmp_path / "sidd"
    dead = tmp_path / f".sidd.tmp-{dead_pid()}-0123abcd.tmp"
    dead.mkdir()
    (dead / "half.png").write_bytes(b"\x89PNG")
    fresh = sibling_dir(root, "tmp")
    assert not dead.exists() and fresh.is_dir() and str(os.getpid()) in fresh.name
