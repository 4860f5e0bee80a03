"""Deterministic paths of every artefact, shared by the CLI, DVC stages and Dagster assets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ops.config import Params


@dataclass(frozen=True)
class TaskLayout:
    """Where one task's inputs and outputs live (``data/<task>``, ``artifacts/<task>/...``)."""

    dataset: Path
    root: Path

    @classmethod
    def for_task(cls, params: Params, task: str) -> TaskLayout:
        task_cfg = getattr(params, task)
        return cls(dataset=task_cfg.dataset.root, root=params.task_dir(task))

    @property
    def dataset_report(self) -> Path:
        return self.root / "dataset"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def weights(self) -> Path:
        return self.model_dir / "model.pt"

    @property
    def checkpoint(self) -> Path:
        return self.model_dir / "checkpoints" / "last.pt"

    def metrics(self, backend: str) -> Path:
        return self.root / "metrics" / f"{backend}.json"

    def evaluation(self, backend: str) -> Path:
        return self.root / "eval" / backend

    @property
    def onnx_dir(self) -> Path:
        return self.root / "onnx"

    @property
    def onnx(self) -> Path:
        return self.onnx_dir / "model.onnx"

    @property
    def program(self) -> Path:
        return self.onnx_dir / "model.pt2"

    @property
    def parity(self) -> Path:
        return self.onnx_dir / "parity.json"

    @property
    def int8_dir(self) -> Path:
        return self.root / "int8"

    @property
    def onnx_int8(self) -> Path:
        return self.int8_dir / "model_int8.onnx"

    @property
    def quantization_report(self) -> Path:
        return self.int8_dir / "quantization.json"

    @property
    def tensorrt_dir(self) -> Path:
        return self.root / "tensorrt"

    def engine(self, precision: str) -> Path:
        return self.tensorrt_dir / f"model_{precision}.engine"

    @property
    def tensorrt_report(self) -> Path:
        return self.tensorrt_dir / "build.json"

    @property
    def benchmark_dir(self) -> Path:
        return self.root / "benchmark"

    @property
    def validation(self) -> Path:
        return self.root / "validation" / "gates.json"

    @property
    def pruned_dir(self) -> Path:
        return self.root / "pruned"
