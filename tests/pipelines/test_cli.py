"""`dagster asset materialize` with a string selection, as a user types it.

The selection parser is what breaks when DVC's antlr4 pin shares Dagster's environment
(DESIGN.md, "Facts"), so this runs the real CLI of the project's environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from tests.conftest import REPO_ROOT, tiny_params_dict, write_params

pytestmark = pytest.mark.slow

DAGSTER = Path(sys.executable).parent / "dagster"


def _dagster(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [str(DAGSTER), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def test_string_selection_materialises_dataset_and_its_children(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    write_params(tmp_path, tiny_params_dict(tmp_path))  # params.yaml in the working directory
    config = {"resources": {"params": {"config": {"epochs": 1}}}}
    done = _dagster(
        "asset", "materialize", "-m", "pipelines.definitions",
        "--select", "traffic/dataset+",
        "--config-json", json.dumps(config),
        cwd=tmp_path, home=home,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "artifacts" / "traffic" / "model" / "model.pt").is_file()
    assert not (tmp_path / "artifacts" / "traffic" / "onnx").exists()  # `+` is one level down
    with DagsterInstance.from_config(str(home)) as instance:
        dataset = instance.get_latest_materialization_event(AssetKey(["traffic", "dataset"]))
        model = instance.get_latest_materialization_event(AssetKey(["traffic", "model"]))
        assert dataset is not None and model is not None
        assert model.asset_materialization.metadata["epochs"].value == 1
        assert instance.get_latest_materialization_event(AssetKey(["traffic", "onnx"])) is None


def test_an_unknown_run_config_key_is_refused_before_the_run(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    write_params(tmp_path, tiny_params_dict(tmp_path))
    config = {"resources": {"params": {"config": {"epoch": 1}}}}
    done = _dagster(
        "asset", "materialize", "-m", "pipelines.definitions",
        "--select", "traffic/dataset",
        "--config-json", json.dumps(config),
        cwd=tmp_path, home=home,
    )  # fmt: skip
    assert done.returncode != 0
    assert "epoch" in done.stdout + done.stderr
    assert not (tmp_path / "data").exists()  # nothing ran
