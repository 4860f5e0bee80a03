"""Training on a tiny generated dataset: checkpoints, exact resume, config mismatch, corruption."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ops.config import Params
from ops.detection.training import load_detector, train_detector
from ops.errors import CheckpointError
from ops.train import load_checkpoint


def _train(params: Params, dataset: Path, out_dir: Path, **kwargs):
    return train_detector(dataset, params.traffic.model, params.traffic.train, out_dir, **kwargs)


def test_training_writes_model_checkpoint_history_and_curves(tiny_params, tiny_dataset, tmp_path):
    result = _train(tiny_params, tiny_dataset, tmp_path / "model")
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert all(row["loss"] > 0 for row in result.history)
    assert result.device.startswith("cpu")
    assert result.curves_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = load_checkpoint(result.checkpoint_path)
    assert state["epoch"] == 2 and {"optimizer_state", "scheduler_state"} <= state.keys()
    bundle = load_detector(result.model_path, tiny_params.traffic.model)
    assert bundle.class_names == ["car", "truck", "bus", "pedestrian"]
    assert not list((tmp_path / "model").rglob("*.tmp"))


def test_interrupted_training_resumes_exactly(tiny_params, tiny_dataset, tmp_path):
    """1 epoch, a crash, then --resume gives the same weights as 2 uninterrupted epochs."""
    straight = _train(tiny_params, tiny_dataset, tmp_path / "straight")

    class Interrupted(RuntimeError):
        pass

    def crash_after_first_epoch(epoch: int) -> None:
        if epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        _train(tiny_params, tiny_dataset, tmp_path / "resumed", after_epoch=crash_after_first_epoch)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "resumed" / "model.pt").exists()

    resumed = _train(tiny_params, tiny_dataset, tmp_path / "resumed", resume=True)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    for resumed_row, straight_row in zip(resumed.history, straight.history, strict=True):
        assert resumed_row == pytest.approx(straight_row)
    a = torch.load(straight.model_path, weights_only=True)["model_state"]
    b = torch.load(resumed.model_path, weights_only=True)["model_state"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=f"parameter {name} differs after resume")


def test_resume_without_checkpoint_is_a_clear_error(tiny_params, tiny_dataset, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        _train(tiny_params, tiny_dataset, tmp_path / "none", resume=True)


def test_checkpoint_from_another_model_config_is_refused_by_key(tiny_params, tiny_dataset, tmp_path):
    result = _train(tiny_params, tiny_dataset, tmp_path / "model")
    wider = tiny_params.traffic.model.model_copy(update={"width_mult": 0.5})
    with pytest.raises(CheckpointError, match=r"different model config(.|\n)*width_mult"):
        load_detector(result.model_path, wider)
    wider_params = tiny_params.model_copy(
        update={"traffic": tiny_params.traffic.model_copy(update={"model": wider})}
    )
    with pytest.raises(CheckpointError, match="width_mult"):
        _train(wider_params, tiny_dataset, tmp_path / "model", resume=True)


def test_truncated_or_foreign_checkpoint_is_never_loaded(tiny_params, tiny_dataset, tmp_path):
    result = _train(tiny_params, tiny_dataset, tmp_path / "model")
    broken = tmp_path / "broken.pt"
    data = result.checkpoint_path.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checkpoint(broken)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a visionforge checkpoint"):
        load_detector(foreign)
    shutil.copy(broken, result.checkpoint_path)
    with pytest.raises(CheckpointError, match="corrupt"):
        _train(tiny_params, tiny_dataset, tmp_path / "model", resume=True)
