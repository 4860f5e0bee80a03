"""Shared fixtures: a tiny params file and a tiny generated dataset, built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ops.config import Params, load_params

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_params_dict(workdir: Path) -> dict:
    """The repository's params.yaml shrunk to seconds: 128 px images, few images, 2 epochs."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["project"] = {"data_dir": str(workdir / "data"), "artifacts_dir": str(workdir / "artifacts")}
    traffic = raw["traffic"]
    traffic["dataset"]["root"] = str(workdir / "data" / "traffic")
    traffic["dataset"]["generator"].update(
        num_train=16, num_val=8, image_width=128, image_height=128, max_objects=6
    )
    traffic["model"].update(input_size=128, width_mult=0.25, head_width=16)
    traffic["train"].update(epochs=2, batch_size=8, num_workers=0, device="cpu")
    traffic["evaluate"]["num_sample_images"] = 4
    sidd = raw["sidd"]
    sidd["dataset"]["root"] = str(workdir / "data" / "sidd")
    sidd["dataset"]["generator"].update(
        num_train_scenes=4,
        num_val_images=2,
        blocks_per_image=2,
        block_size=32,
        image_width=64,
        image_height=64,
    )
    sidd["model"].update(width=8, enc_blocks=[1, 1], middle_blocks=1, dec_blocks=[1, 1])
    sidd["train"].update(epochs=2, batch_size=4, crop_size=32, crops_per_epoch=16, device="cpu")
    sidd["quantize"].update(calibration_images=8, calibration_crop=32)
    sidd["export"]["parity_images"] = 4
    sidd["evaluate"]["num_sample_images"] = 2
    sidd["benchmark"].update(sizes=[[64, 64]], runs=2, warmup=1)
    gopro = raw["gopro"]
    gopro["dataset"]["root"] = str(workdir / "data" / "gopro")
    gopro["dataset"]["generator"].update(
        num_train_sequences=2,
        num_test_sequences=1,
        frames_per_sequence=2,
        image_width=64,
        image_height=36,
        blur_frames_min=3,
        blur_frames_max=5,
        moving_objects=2,
    )
    gopro["model"].update(width=8, enc_blocks=[1, 1], middle_blocks=1, dec_blocks=[1, 1])
    gopro["train"].update(epochs=2, batch_size=4, crop_size=32, crops_per_epoch=16, device="cpu")
    gopro["quantize"].update(calibration_images=8, calibration_crop=32)
    gopro["export"]["parity_images"] = 2
    gopro["evaluate"]["num_sample_images"] = 2
    gopro["benchmark"].update(sizes=[[36, 64]], runs=2, warmup=1)
    # MLflow and DVC's remote in the test's directory, never the project's
    raw["tracking"].update(uri=None, store=str(workdir / "mlruns.db"), artifacts=str(workdir / "mlartifacts"))
    raw["storage"]["local_dir"] = str(workdir / "dvc-storage")
    return raw


def write_params(workdir: Path, raw: dict) -> Path:
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``visionforge <args>`` in a subprocess, as a user runs it. An ambient
    ``MLFLOW_TRACKING_URI`` is dropped: tests track into the store their params name."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def tiny_params_file(tmp_path: Path) -> Path:
    return write_params(tmp_path, tiny_params_dict(tmp_path))


@pytest.fixture
def tiny_params(tiny_params_file: Path) -> Params:
    return load_params(tiny_params_file)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated 16/8-image traffic dataset, shared read-only by the tests."""
    from ops.detection.scenes import generate_traffic_dataset

    workdir = tmp_path_factory.mktemp("tiny")
    params = load_params(write_params(workdir, tiny_params_dict(workdir)))
    cfg = params.traffic.dataset
    return generate_traffic_dataset(cfg.root, cfg.generator, progress=False)


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, migrated once: creating one takes seconds of migrations, a copy none."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlruns.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracked_params(tmp_path: Path, mlflow_template_db: Path) -> Params:
    """Tiny params whose MLflow store (a copy of the migrated template) lives in ``tmp_path``."""
    import shutil

    shutil.copyfile(mlflow_template_db, tmp_path / "mlruns.db")
    return load_params(write_params(tmp_path, tiny_params_dict(tmp_path)))
