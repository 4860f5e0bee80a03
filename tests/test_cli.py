"""The ``visionforge`` command end to end on a tiny config, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_help_explains_every_command_and_option(tmp_path):
    top = _cli("--help", cwd=tmp_path)
    assert top.returncode == 0
    for command in ("ingest", "train", "evaluate"):
        assert command in top.stdout
    train = _cli("train", "--help", cwd=tmp_path)
    for option in ("--resume", "--params", "--set"):
        assert option in train.stdout


@pytest.mark.slow
def test_ingest_train_evaluate_chain(tiny_params_file: Path):
    workdir = tiny_params_file.parent
    params = ["--params", str(tiny_params_file)]
    ingest = _cli("ingest", "traffic", *params, cwd=workdir)
    assert ingest.returncode == 0, ingest.stderr
    assert json.loads(ingest.stdout)["val"]["num_images"] == 8
    assert (workdir / "artifacts/traffic/dataset/box_sizes_train.png").is_file()

    train = _cli("train", "traffic", *params, "--set", "traffic.train.epochs=1", cwd=workdir)
    assert train.returncode == 0, train.stderr
    assert json.loads(train.stdout)["epochs"] == 1

    evaluate = _cli("evaluate", "traffic", *params, cwd=workdir)
    assert evaluate.returncode == 0, evaluate.stderr
    metrics = json.loads((workdir / "artifacts/traffic/metrics/pytorch.json").read_text())
    assert 0.0 <= metrics["map50_95"] <= metrics["map50"] <= 1.0


def test_bad_input_gives_one_clear_error_and_exit_code_2(tiny_params_file: Path):
    workdir = tiny_params_file.parent
    missing = _cli("train", "traffic", "--params", str(workdir / "missing.yaml"), cwd=workdir)
    assert missing.returncode == 2
    assert "params file not found" in missing.stderr and "Traceback" not in missing.stderr

    unknown = _cli(
        "train", "traffic", "--params", str(tiny_params_file), "--set", "traffic.train.epohcs=1", cwd=workdir
    )
    assert unknown.returncode == 2 and "unknown key 'epohcs'" in unknown.stderr

    no_data = _cli("evaluate", "traffic", "--params", str(tiny_params_file), cwd=workdir)
    assert no_data.returncode == 2 and "checkpoint not found" in no_data.stderr
