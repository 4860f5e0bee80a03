"""One inference interface for every backend: a batch of images in, raw outputs out.

A :class:`Predictor` takes the ONNX contract's input (``images``: float32 NCHW, RGB) and
returns the contract's outputs as numpy arrays. Each task family has one contract
(:class:`IOContract`): the detector's outputs are ``heatmap`` (after the sigmoid), ``wh`` and
``offset`` for a fixed, normalised square input; the restorer's is ``restored``, the same
shape as its 0..1 input, any height and width. Evaluation, validation and the benchmark only
ever see this interface, so no code special-cases a backend.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ops.errors import ExportError

log = logging.getLogger(__name__)

INPUT_NAME = "images"


@dataclass(frozen=True)
class IOContract:
    """What one family's exported models take and give: output names, and whether the input's
    height and width may vary (the batch axis always may)."""

    family: str
    output_names: tuple[str, ...]
    dynamic_spatial: bool

    def describe(self) -> str:
        return f"input {INPUT_NAME!r}; outputs {list(self.output_names)}"


DETECTOR = IOContract("detector", ("heatmap", "wh", "offset"), dynamic_spatial=False)
RESTORER = IOContract("restorer", ("restored",), dynamic_spatial=True)
OUTPUT_NAMES = DETECTOR.output_names  # the detector's, which TensorRT engines and the C++ program serve


class Predictor(Protocol):
    """A model backend; ``backend`` names it in metrics files and tables."""

    backend: str
    output_names: tuple[str, ...]

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


class TorchPredictor:
    """PyTorch eager (optionally channels-last, ``torch.compile``d, or FP16 on CUDA), no autograd."""

    def __init__(
        self,
        model: torch.nn.Module,
        backend: str = "pytorch",
        channels_last: bool = False,
        compile: bool = False,
        device: str | None = None,
        half: bool = False,
        contract: IOContract = DETECTOR,
    ) -> None:
        self.backend = backend
        self.output_names = contract.output_names
        if device is not None:
            model = model.to(device)
        if half:
            model = model.half()
        model = model.eval()
        self.device = next(model.parameters()).device
        self.dtype = torch.float16 if half else torch.float32
        self.channels_last = channels_last
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if compile else model

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        inputs = torch.from_numpy(batch).to(self.device, self.dtype)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            outputs = self.model(inputs)
        if isinstance(outputs, torch.Tensor):  # a single-output model returns its tensor
            outputs = {self.output_names[0]: outputs}
        return {name: outputs[name].float().cpu().numpy() for name in self.output_names}


def ort_session_options(threads: int | None):
    """ONNX Runtime options shared by every session: full graph optimisation, and no thread
    spinning, so a session does not keep cores busy after a call. The benchmark interleaves
    backends; with spinning on, one INT8 session measured 49 ms after another spinning session
    and 27.5 ms without spinning, i.e. the figures depended on which backend ran before."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: ORT warns about every benign optimiser choice
    return options


def tensor_shapes(model: Any, names: Sequence[str], sample: np.ndarray) -> dict[str, list[int]]:
    """The shapes the tensors ``names`` of ``model`` (an ``onnx.ModelProto``) take when it runs
    ``sample``: read from one real, unoptimised run rather than inferred, as a restorer's size
    arithmetic defeats static shape inference."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {out.name for out in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in existing)
    options = ort_session_options(threads=1)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = [out.name for out in session.get_outputs() if out.name in set(names)]
    values = session.run(wanted, {session.get_inputs()[0].name: sample})
    return {name: list(value.shape) for name, value in zip(wanted, values, strict=True)}


class OnnxRuntimePredictor:
    """An ONNX model (FP32 or QDQ INT8) in ONNX Runtime; refuses files that break the contract."""

    def __init__(
        self,
        path: Path,
        backend: str = "onnx",
        threads: int | None = None,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        contract: IOContract = DETECTOR,
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path}: ONNX model not found")
        try:
            self.session = ort.InferenceSession(
                str(path), ort_session_options(threads), providers=list(providers)
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types for bad files
            raise ExportError(f"{path}: ONNX Runtime cannot load this model ({exc})") from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or sorted(outputs) != sorted(contract.output_names):
            raise ExportError(
                f"{path}: inputs {inputs} / outputs {outputs} do not match the {contract.family} "
                f"contract ({contract.describe()})"
            )
        self.output_names = contract.output_names
        self.path = path
        self.backend = backend
        self.providers = self.session.get_providers()

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(
            list(self.output_names), {INPUT_NAME: np.ascontiguousarray(batch, np.float32)}
        )
        return dict(zip(self.output_names, values, strict=True))
