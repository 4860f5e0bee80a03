"""Deployable artefacts of a trained detector and the proof that they compute what PyTorch does.

* ONNX (``model.onnx``): the contract shared by ONNX Runtime, TensorRT and the C++ detector:
  input ``images`` (float32 NCHW, RGB, 0..1 then mean/std normalised), outputs ``heatmap``
  (sigmoid applied), ``wh``, ``offset``, dynamic batch axis. Everything a consumer needs to
  feed the network (mean, std, input size, letterbox padding, class names, output stride) is
  stored in the model's ``metadata_props`` as JSON values, so no consumer hard-codes it.
* ``torch.export`` program (``model.pt2``): the Python-free PyTorch artefact.
* Parity: the exported model and PyTorch run on the same real images; per output the max
  absolute difference and cosine similarity are recorded beside the artefact.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ops.data.detection import PAD_VALUE
from ops.errors import ExportError
from ops.io import atomic_path
from ops.models import TrafficQuantizerNet
from ops.runtime import INPUT_NAME, OUTPUT_NAMES, Predictor

log = logging.getLogger(__name__)

# Opset 18 is what torch's exporter emits natively; TensorRT 10 and ONNX Runtime 1.31 read it.
OPSET = 18
# Example batch for tracing: 2, not 1, so the exporter cannot specialise the batch axis to 1.
TRACE_BATCH = 2


@dataclass(frozen=True)
class OnnxMetadata:
    """The pre- and post-processing facts stored in an exported model (``metadata_props``)."""

    input_size: int
    mean: list[float]
    std: list[float]
    class_names: list[str]
    output_stride: int
    resize: str = "letterbox"  # keep aspect ratio, pad to a square with pad_value
    pad_value: list[int] | None = None
    color_order: str = "RGB"
    pixel_scale: float = 1 / 255  # uint8 pixels * pixel_scale, then (x - mean) / std

    def to_props(self) -> dict[str, str]:
        return {key: json.dumps(value) for key, value in asdict(self).items()}

    @classmethod
    def from_props(cls, path: Path, props: dict[str, str]) -> OnnxMetadata:
        required = ("input_size", "mean", "std", "class_names", "output_stride")
        missing = [key for key in required if key not in props]
        if missing:
            raise ExportError(
                f"{path}: metadata_props lacks {missing}; export the model with `visionforge export`"
            )
        try:
            values = {key: json.loads(props[key]) for key in cls.__dataclass_fields__ if key in props}
            return cls(**values)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ExportError(f"{path}: malformed metadata_props ({exc})") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Which 4x4 kernel tap a k4/s2/p1 transposed convolution applies, per output phase (even or
# odd row/column), at input offset -1, 0, +1 (indices 0, 1, 2 of a 3x3 kernel).
_SUBPIXEL_TAPS = {0: {0: 3, 1: 1}, 1: {1: 2, 2: 0}}


def subpixel_convolution(transposed: nn.ConvTranspose2d, norm: nn.BatchNorm2d) -> nn.Sequential:
    """The exact equivalent of ``ConvTranspose2d(k4, s2, p1)`` + eval-mode BatchNorm as a 3x3
    convolution producing the four output phases, followed by ``PixelShuffle(2)``.

    Why: ONNX Runtime's CPU provider has no integer ConvTranspose kernel, so a quantised
    model runs its three decoder layers in float behind dequantise/quantise pairs and
    layout transposes (measured: 40 % of the INT8 model's time). As a Conv the decoder runs
    on the VNNI int8 kernels. The phases only touch 2x2 of the 3x3 taps, so the Conv does
    2.25x the multiply-adds of the transposed one and is still faster in int8.
    """
    if (
        transposed.kernel_size != (4, 4)
        or transposed.stride != (2, 2)
        or transposed.padding != (1, 1)
        or transposed.groups != 1
        or transposed.dilation != (1, 1)
    ):
        raise ValueError(f"only ConvTranspose2d(k4, s2, p1) has a sub-pixel form here, got {transposed}")
    weight = transposed.weight.detach()  # (in, out, 4, 4)
    in_channels, out_channels = weight.shape[:2]
    scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
    shift = norm.bias.detach() - norm.running_mean * scale
    if transposed.bias is not None:
        shift = shift + transposed.bias.detach() * scale
    phases = torch.zeros(out_channels, 2, 2, in_channels, 3, 3)
    for row_phase, row_taps in _SUBPIXEL_TAPS.items():
        for col_phase, col_taps in _SUBPIXEL_TAPS.items():
            for u, ku in row_taps.items():
                for v, kv in col_taps.items():
                    phases[:, row_phase, col_phase, :, u, v] = weight[:, :, ku, kv].T
    phases *= scale.view(-1, 1, 1, 1, 1, 1)
    conv = nn.Conv2d(in_channels, 4 * out_channels, 3, padding=1)
    with torch.no_grad():
        # PixelShuffle reads channel c * 4 + row_phase * 2 + col_phase into pixel (2y + row, 2x + col).
        conv.weight.copy_(phases.reshape(4 * out_channels, in_channels, 3, 3))
        conv.bias.copy_(shift.repeat_interleave(4))
    return nn.Sequential(conv, nn.PixelShuffle(2))


def deployable_detector(model: TrafficQuantizerNet) -> TrafficQuantizerNet:
    """A copy of ``model`` computing the same function with export-friendly layers.

    The decoder's upsampling layers become :func:`subpixel_convolution` (BatchNorm folded
    in); everything else is untouched. The trained model itself is never modified.
    """
    deployable = copy.deepcopy(model).eval()
    layers = deployable.decoder.layers
    for index, layer in enumerate(layers):
        conv, norm, activation = layer
        if isinstance(conv, nn.ConvTranspose2d):
            layers[index] = nn.Sequential(subpixel_convolution(conv, norm), activation)
    return deployable


def _example_input(input_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(TRACE_BATCH, 3, input_size, input_size, generator=generator)


def export_onnx(
    model: TrafficQuantizerNet,
    metadata: OnnxMetadata,
    path: Path,
    opset: int = OPSET,
) -> Path:
    """Export through torch's dynamo exporter, stamp the metadata, check, write atomically."""
    import onnx

    deployable = deployable_detector(model.cpu())
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            deployable,
            (_example_input(metadata.input_size),),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"images": {0: batch}},
            opset_version=opset,
            verbose=False,
        )
    except Exception as exc:  # the exporter's own error types vary by torch version
        raise ExportError(f"torch.onnx.export failed for {path}: {exc}") from exc
    proto = program.model_proto
    del proto.metadata_props[:]
    for key, value in metadata.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "visionforge"
    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    log.info("exported %s (%.1f MB, opset %d)", path, path.stat().st_size / 1e6, opset)
    return path


def read_onnx_metadata(path: Path) -> OnnxMetadata:
    """Check that ``path`` is a readable ONNX model with the detector's I/O and return its metadata."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: ONNX model not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as exc:  # DecodeError, ValidationError: both mean an unusable file
        raise ExportError(f"{path}: not a valid ONNX model ({exc.__class__.__name__}: {exc})") from None
    inputs = [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [INPUT_NAME] or sorted(outputs) != sorted(OUTPUT_NAMES):
        raise ExportError(
            f"{path}: inputs {inputs} / outputs {outputs} do not match the detector contract "
            f"(input {INPUT_NAME!r}; outputs {list(OUTPUT_NAMES)})"
        )
    return OnnxMetadata.from_props(path, {p.key: p.value for p in proto.metadata_props})


def export_program(model: TrafficQuantizerNet, input_size: int, path: Path) -> Path:
    """``torch.export`` the detector (dynamic batch) and save the ``.pt2`` program atomically."""
    deployable = copy.deepcopy(model).cpu().eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(
        deployable, (_example_input(input_size),), dynamic_shapes={"images": {0: batch}}
    )
    with atomic_path(path) as tmp:
        with tmp.open("wb") as handle:  # a file object: torch.export wants .pt2 names, tmp has none
            torch.export.save(program, handle)
    return path


class ProgramPredictor:
    """A saved ``torch.export`` program as a :class:`~ops.runtime.Predictor`."""

    def __init__(self, path: Path, backend: str = "pytorch-export") -> None:
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path}: torch.export program not found")
        try:
            self.module = torch.export.load(str(path)).module()
        except Exception as exc:  # zip / pickle / schema errors of a damaged file
            raise ExportError(f"{path}: cannot load the torch.export program ({exc})") from None
        self.backend = backend

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outputs = self.module(torch.from_numpy(batch))
        return {name: outputs[name].float().numpy() for name in OUTPUT_NAMES}


def parity(reference: Predictor, candidate: Predictor, batches: Iterable[np.ndarray]) -> dict[str, Any]:
    """Max absolute difference and cosine similarity of each output, over all ``batches``.

    Cosine is taken over the whole flattened output (all images), so it measures agreement
    of the tensors as a whole rather than being dominated by any single near-zero value.
    """
    dot = {name: 0.0 for name in OUTPUT_NAMES}
    norm_ref = dict(dot)
    norm_cand = dict(dot)
    max_diff = dict(dot)
    num_images = 0
    for batch in batches:
        expected, actual = reference(batch), candidate(batch)
        num_images += len(batch)
        for name in OUTPUT_NAMES:
            a = expected[name].astype(np.float64).ravel()
            b = actual[name].astype(np.float64).ravel()
            if a.shape != b.shape:
                raise ExportError(
                    f"{candidate.backend} output {name!r} has {b.size} values, "
                    f"{reference.backend} has {a.size}"
                )
            dot[name] += float(a @ b)
            norm_ref[name] += float(a @ a)
            norm_cand[name] += float(b @ b)
            max_diff[name] = max(max_diff[name], float(np.abs(a - b).max()))
    outputs = {}
    for name in OUTPUT_NAMES:
        denominator = np.sqrt(norm_ref[name] * norm_cand[name])
        cosine = dot[name] / denominator if denominator > 0 else float(norm_ref[name] == norm_cand[name])
        outputs[name] = {"max_abs_diff": max_diff[name], "cosine": cosine}
    return {
        "reference": reference.backend,
        "candidate": candidate.backend,
        "num_images": num_images,
        "outputs": outputs,
        "min_cosine": min(o["cosine"] for o in outputs.values()),
        "max_abs_diff": max(o["max_abs_diff"] for o in outputs.values()),
    }


def detector_metadata(model: TrafficQuantizerNet, mean, std, input_size: int, class_names) -> OnnxMetadata:
    return OnnxMetadata(
        input_size=int(input_size),
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        class_names=list(class_names),
        output_stride=int(model.output_stride),
        pad_value=list(PAD_VALUE),
    )


def float16_onnx(path: Path, out_path: Path) -> Path:
    """An FP16 copy of an FP32 ONNX model for GPU execution providers; inputs and outputs stay
    float32 so callers feed it exactly like the FP32 model."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    with atomic_path(out_path) as tmp:
        onnx.save_model(model, str(tmp))
    return out_path
