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
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ops.deploy.runtime import DETECTOR, INPUT_NAME, RESTORER, IOContract, Predictor
from ops.errors import ExportError
from ops.io import atomic_path, is_int, sha256_file

log = logging.getLogger(__name__)

# Opset 18 is what torch's exporter emits natively; TensorRT 10 and ONNX Runtime 1.31 read it.
OPSET = 18
# Example batch for tracing: 2, not 1, so the exporter cannot specialise the batch axis to 1.
TRACE_BATCH = 2


# Keys a consumer cannot do without; the other OnnxMetadata fields have defaults matching export_onnx.
REQUIRED_METADATA: tuple[str, ...] = ("input_size", "mean", "std", "class_names", "output_stride")
# Their presence makes a model explicitly quantised (TensorRT reads the scales from them).
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def is_number(value: Any) -> bool:
    """A finite JSON number; ``bool`` is excluded because JSON ``true`` must not pass as 1."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_positive_int(value: Any) -> bool:
    """A JSON integer above zero (sizes, strides, batch counts)."""
    return is_int(value) and value > 0


def _number_list(length: int | None, positive: bool) -> Callable[[Any], bool]:
    """A check for a list of finite numbers: exactly ``length`` of them (any, but some, when None)."""

    def check(value: Any) -> bool:
        return (
            isinstance(value, list)
            and (len(value) == length if length is not None else bool(value))
            and all(is_number(v) and (v > 0 or not positive) for v in value)
        )

    return check


def _metadata_rules(channels: int | None) -> dict[str, tuple[Callable[[Any], bool], str]]:
    """Per ``metadata_props`` key: the check its parsed JSON value must pass, and the rule in words."""
    count = f"{channels} " if channels is not None else ""
    return {
        "input_size": (is_positive_int, "a positive integer"),
        "mean": (_number_list(channels, positive=False), f"a list of {count}numbers"),
        "std": (_number_list(channels, positive=True), f"a list of {count}positive numbers"),
        "class_names": (
            lambda v: isinstance(v, list) and bool(v) and all(isinstance(n, str) for n in v),
            "a non-empty list of strings",
        ),
        "output_stride": (is_positive_int, "a positive integer"),
        # The same rules as the C++ detector's reader: a value one consumer accepts and another
        # refuses would make a model deployable in one place only.
        "resize": (lambda v: v == "letterbox", '"letterbox" (the only resize mode implemented)'),
        "pad_value": (
            lambda v: v is None
            or (isinstance(v, list) and len(v) == 3 and all(is_int(x) and 0 <= x <= 255 for x in v)),
            "null or 3 integers in 0..255",
        ),
        "color_order": (lambda v: v in ("RGB", "BGR"), '"RGB" or "BGR"'),
        "pixel_scale": (lambda v: is_number(v) and v > 0, "a positive number"),
    }


@dataclass(frozen=True)
class OnnxMetadata:
    """The pre- and post-processing facts stored in an exported detector (``metadata_props``)."""

    contract: ClassVar[IOContract] = DETECTOR

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

    def example_input(self) -> torch.Tensor:
        """What export traces with: batch 2, not 1, so the exporter cannot specialise the batch axis."""
        generator = torch.Generator().manual_seed(0)
        return torch.randn(TRACE_BATCH, 3, self.input_size, self.input_size, generator=generator)

    def check_io(
        self, path: Path, input_dims: list[int | None], output_dims: dict[str, list[int | None]]
    ) -> None:
        """The exported graph agrees with these facts: a fixed square input of ``input_size``, and
        one heatmap channel per class name."""
        height, width = input_dims[2:]
        if (height, width) != (self.input_size, self.input_size):
            raise ExportError(
                f"{path}: metadata_props input_size is {self.input_size} but input {INPUT_NAME!r} "
                f"is {height}x{width}"
            )
        heatmap_dims = output_dims.get("heatmap", [])
        num_classes = len(self.class_names)
        if len(heatmap_dims) == 4 and heatmap_dims[1] not in (None, num_classes):
            raise ExportError(
                f"{path}: output 'heatmap' has {heatmap_dims[1]} channels but metadata_props "
                f"class_names lists {num_classes} classes"
            )

    @classmethod
    def from_props(cls, path: Path, props: Mapping[str, str], *, channels: int | None = None) -> OnnxMetadata:
        """Parse ``metadata_props`` and check every value, naming the model file and the key.

        Every consumer (ONNX Runtime, TensorRT sidecars, the C++ detector) preprocesses from
        these values, so a wrong one would give wrong detections rather than an error: it is
        refused here, once, for all of them. ``channels`` (the input's C, when known) is the
        length mean and std must have. Keys that are not fields are ignored.
        """
        missing = [key for key in REQUIRED_METADATA if key not in props]
        if missing:
            raise ExportError(
                f"{path}: metadata_props lacks {missing}; export the model with `visionforge export`"
            )
        values: dict[str, Any] = {}
        for key in cls.__dataclass_fields__:
            if key not in props:
                continue
            try:
                values[key] = json.loads(props[key])
            except json.JSONDecodeError as exc:
                raise ExportError(
                    f"{path}: metadata_props[{key!r}] is not JSON ({exc}): {props[key]!r}"
                ) from None
        problems = [
            f"metadata_props[{key!r}] must be {rule}, got {props[key]!r}"
            for key, (check, rule) in _metadata_rules(channels).items()
            if key in values and not check(values[key])
        ]
        if not problems and len(values["mean"]) != len(values["std"]):
            problems.append(
                f"metadata_props 'mean' and 'std' must have one value per channel, "
                f"got {len(values['mean'])} and {len(values['std'])}"
            )
        if problems:
            raise ExportError(f"{path}: " + "; ".join(problems))
        values["mean"] = [float(v) for v in values["mean"]]
        values["std"] = [float(v) for v in values["std"]]
        if "pixel_scale" in values:
            values["pixel_scale"] = float(values["pixel_scale"])
        return cls(**values)


@dataclass(frozen=True)
class RestorerMetadata:
    """The facts stored in an exported restorer (``metadata_props``): input and output are RGB in
    ``value_range`` (0..1), any height and width (the network pads to ``pad_multiple`` itself)."""

    contract: ClassVar[IOContract] = RESTORER
    # Trace at a size that is not a multiple of the padding, so the exporter keeps the padding
    # arithmetic symbolic instead of folding it to zero.
    TRACE_SIZE: ClassVar[tuple[int, int]] = (61, 83)

    task: str
    pad_multiple: int
    value_range: list[float] = dataclasses.field(default_factory=lambda: [0.0, 1.0])
    color_order: str = "RGB"

    def to_props(self) -> dict[str, str]:
        return {key: json.dumps(value) for key, value in asdict(self).items()}

    def example_input(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return torch.rand(TRACE_BATCH, 3, *self.TRACE_SIZE, generator=generator)

    def check_io(
        self, path: Path, input_dims: list[int | None], output_dims: dict[str, list[int | None]]
    ) -> None:
        """Output ``restored`` has the input's rank and channels (its size follows the input's)."""
        restored = output_dims.get("restored", [])
        if len(restored) != 4 or restored[1] not in (None, input_dims[1]):
            raise ExportError(
                f"{path}: output 'restored' must be NCHW with the input's {input_dims[1]} channels, "
                f"found shape {tuple('?' if d is None else d for d in restored)}"
            )

    @classmethod
    def from_props(
        cls, path: Path, props: Mapping[str, str], *, channels: int | None = None
    ) -> RestorerMetadata:
        """Parse and check ``metadata_props``, naming the model file and the key."""
        values: dict[str, Any] = {}
        for key in ("task", "pad_multiple", "value_range", "color_order"):
            if key not in props:
                raise ExportError(
                    f"{path}: metadata_props lacks {key!r}; export the model with `visionforge export`"
                )
            try:
                values[key] = json.loads(props[key])
            except json.JSONDecodeError as exc:
                raise ExportError(
                    f"{path}: metadata_props[{key!r}] is not JSON ({exc}): {props[key]!r}"
                ) from None
        rules = {
            "task": (lambda v: isinstance(v, str) and bool(v), "a task name"),
            "pad_multiple": (is_positive_int, "a positive integer"),
            "value_range": (
                lambda v: isinstance(v, list) and len(v) == 2 and all(map(is_number, v)) and v[0] < v[1],
                "[low, high] with low < high",
            ),
            "color_order": (lambda v: v in ("RGB", "BGR"), '"RGB" or "BGR"'),
        }
        problems = [
            f"metadata_props[{key!r}] must be {rule}, got {props[key]!r}"
            for key, (check, rule) in rules.items()
            if not check(values[key])
        ]
        if channels not in (None, 3):
            problems.append(f"input {INPUT_NAME!r} has {channels} channels, the restorer takes 3 (RGB)")
        if problems:
            raise ExportError(f"{path}: " + "; ".join(problems))
        values["value_range"] = [float(v) for v in values["value_range"]]
        return cls(**values)


ModelMetadata = OnnxMetadata | RestorerMetadata


def fold_batchnorm(transposed: nn.ConvTranspose2d, norm: nn.BatchNorm2d) -> nn.ConvTranspose2d:
    """``ConvTranspose2d`` followed by eval-mode ``BatchNorm2d`` as one ``ConvTranspose2d``.

    Folded at export, each upsampling layer is one op in the graph whichever runtime reads
    it, instead of relying on each runtime's own fusions.
    """
    if transposed.groups != 1:
        raise ValueError(f"only ungrouped transposed convolutions are folded here, got {transposed}")
    scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
    shift = norm.bias.detach() - norm.running_mean * scale
    bias = transposed.bias.detach() if transposed.bias is not None else torch.zeros_like(scale)
    folded = nn.ConvTranspose2d(
        transposed.in_channels,
        transposed.out_channels,
        transposed.kernel_size,
        stride=transposed.stride,
        padding=transposed.padding,
        output_padding=transposed.output_padding,
        dilation=transposed.dilation,
        bias=True,
    )
    with torch.no_grad():
        folded.weight.copy_(transposed.weight.detach() * scale.view(1, -1, 1, 1))
        folded.bias.copy_(bias * scale + shift)
    return folded


def deployable_module(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every ``ConvTranspose2d -> BatchNorm2d`` pair of a
    ``Sequential`` (the detector's decoder layers) folded into one transposed convolution; the
    trained model itself is never modified. A model without such pairs is copied as it is."""
    deployable = copy.deepcopy(model).cpu().eval()
    for module in list(deployable.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module)
        if (
            len(children) >= 2
            and isinstance(children[0], nn.ConvTranspose2d)
            and isinstance(children[1], nn.BatchNorm2d)
        ):
            folded = [fold_batchnorm(children[0], children[1]), *children[2:]]
            for name in list(module._modules):
                del module._modules[name]
            for index, child in enumerate(folded):
                module.add_module(str(index), child)
    return deployable


def _dynamic_shapes(contract: IOContract) -> dict[str, dict[int, Any]]:
    axes: dict[int, Any] = {0: torch.export.Dim("batch", min=1)}
    if contract.dynamic_spatial:
        axes[2] = torch.export.Dim("height", min=2)
        axes[3] = torch.export.Dim("width", min=2)
    return {INPUT_NAME: axes}


def export_onnx(model: nn.Module, metadata: ModelMetadata, path: Path, opset: int = OPSET) -> Path:
    """Export through torch's dynamo exporter, stamp the metadata, check, write atomically.

    The metadata's contract says what varies: the batch axis always, height and width for a
    restorer."""
    import onnx

    deployable = deployable_module(model)
    try:
        program = torch.onnx.export(
            deployable,
            (metadata.example_input(),),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(metadata.contract.output_names),
            dynamic_shapes=_dynamic_shapes(metadata.contract),
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


@dataclass(frozen=True)
class OnnxContract:
    """An ONNX model file checked against the detector contract, and what consumers need of it.

    The one reader of the contract: INT8 quantisation and TensorRT engine builds both go
    through :func:`read_onnx_contract`, so a file is accepted or refused with the same
    message everywhere.
    """

    path: Path
    sha256: str  # of the .onnx file itself; weights stored as external data are not part of it
    input_batch: int | None  # None: dynamic batch axis (the contract); an int: fixed at export
    # (C, H, W); H and W are None where the contract lets them vary (the restorer)
    input_chw: tuple[int, int | None, int | None]
    has_qdq: bool  # QuantizeLinear/DequantizeLinear nodes: explicitly quantised (INT8)
    metadata: Any  # OnnxMetadata for a detector, RestorerMetadata for a restorer


def read_onnx_contract(path: Path | str, metadata_type: type = OnnxMetadata) -> OnnxContract:
    """Check that ``path`` is a valid ONNX model honouring its family's contract and describe it.

    ``metadata_type`` (:class:`OnnxMetadata` for the detector, :class:`RestorerMetadata` for a
    restorer) names the contract. Only the graph is loaded (not external weights). Checked here
    rather than left to ONNX Runtime or TensorRT's parser so that a wrong file fails with the
    same clear message on every machine, GPU or not: input ``images`` NCHW with a fixed C (and
    fixed H, W unless the contract lets them vary), the contract's outputs, and valid metadata
    that agrees with the graph (the detector: input size, mean/std length, one heatmap channel
    per class name).
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: ONNX model not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        # The path, not the proto: the checker then finds weights stored as external data
        # beside the model instead of failing on them.
        onnx.checker.check_model(str(path))
    except Exception as exc:  # DecodeError, ValidationError: both mean an unusable file
        raise ExportError(f"{path}: not a valid ONNX model ({exc.__class__.__name__}: {exc})") from None
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    input_names = [value.name for value in inputs]
    output_names = [value.name for value in graph.output]
    contract: IOContract = metadata_type.contract
    if input_names != [INPUT_NAME] or sorted(output_names) != sorted(contract.output_names):
        raise ExportError(
            f"{path}: inputs {input_names} / outputs {output_names} do not match the {contract.family} "
            f"contract ({contract.describe()})"
        )
    dims = _static_dims(inputs[0])
    fixed = dims[1:2] if contract.dynamic_spatial else dims[1:]
    if len(dims) != 4 or any(d is None for d in fixed):
        shown = tuple("?" if d is None else d for d in dims)
        rule = (
            "fixed C (the batch, height and width axes may be dynamic)"
            if contract.dynamic_spatial
            else "fixed C, H, W (only the batch axis may be dynamic)"
        )
        raise ExportError(f"{path}: input {INPUT_NAME!r} must be NCHW with {rule}, found shape {shown}")
    channels = int(dims[1])  # type: ignore[arg-type]
    metadata = metadata_type.from_props(
        path, {prop.key: prop.value for prop in proto.metadata_props}, channels=channels
    )
    metadata.check_io(path, dims, {value.name: _static_dims(value) for value in graph.output})
    op_types = {node.op_type for node in graph.node}
    for function in proto.functions:
        op_types.update(node.op_type for node in function.node)
    return OnnxContract(
        path=path,
        sha256=sha256_file(path),
        input_batch=dims[0],
        input_chw=(channels, dims[2], dims[3]),
        has_qdq=bool(op_types & QDQ_OPS),
        metadata=metadata,
    )


def _static_dims(value: Any) -> list[int | None]:
    """Sizes of a ValueInfo's shape; None for symbolic or unknown dimensions."""
    return [
        int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in value.type.tensor_type.shape.dim
    ]


def export_program(model: nn.Module, metadata: ModelMetadata, path: Path) -> Path:
    """``torch.export`` the model (the axes its contract lets vary dynamic) and save the ``.pt2``
    program atomically."""
    deployable = copy.deepcopy(model).cpu().eval()
    program = torch.export.export(
        deployable, (metadata.example_input(),), dynamic_shapes=_dynamic_shapes(metadata.contract)
    )
    with atomic_path(path) as tmp:
        with tmp.open("wb") as handle:  # a file object: torch.export wants .pt2 names, tmp has none
            torch.export.save(program, handle)
    return path


class ProgramPredictor:
    """A saved ``torch.export`` program as a :class:`~ops.deploy.runtime.Predictor`."""

    def __init__(self, path: Path, backend: str = "pytorch-export", contract: IOContract = DETECTOR) -> None:
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path}: torch.export program not found")
        try:
            self.module = torch.export.load(str(path)).module()
        except Exception as exc:  # zip / pickle / schema errors of a damaged file
            raise ExportError(f"{path}: cannot load the torch.export program ({exc})") from None
        self.backend = backend
        self.output_names = contract.output_names

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outputs = self.module(torch.from_numpy(batch))
        if isinstance(outputs, torch.Tensor):
            outputs = {self.output_names[0]: outputs}
        return {name: outputs[name].float().numpy() for name in self.output_names}


def parity(reference: Predictor, candidate: Predictor, batches: Iterable[np.ndarray]) -> dict[str, Any]:
    """Max absolute difference, mean squared difference and cosine similarity of each output,
    over all ``batches``.

    Cosine is taken over the whole flattened output (all images), so it measures agreement
    of the tensors as a whole rather than being dominated by any single near-zero value.
    """
    names = reference.output_names
    dot = {name: 0.0 for name in names}
    norm_ref = dict(dot)
    norm_cand = dict(dot)
    max_diff = dict(dot)
    squared = dict(dot)
    values = dict.fromkeys(names, 0)
    num_images = 0
    for batch in batches:
        expected, actual = reference(batch), candidate(batch)
        num_images += len(batch)
        for name in names:
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
            squared[name] += float(np.square(a - b).sum())
            values[name] += a.size
    outputs = {}
    for name in names:
        denominator = np.sqrt(norm_ref[name] * norm_cand[name])
        cosine = dot[name] / denominator if denominator > 0 else float(norm_ref[name] == norm_cand[name])
        outputs[name] = {
            "max_abs_diff": max_diff[name],
            "cosine": cosine,
            "mse": squared[name] / max(1, values[name]),
        }
    return {
        "reference": reference.backend,
        "candidate": candidate.backend,
        "num_images": num_images,
        "outputs": outputs,
        "min_cosine": min(o["cosine"] for o in outputs.values()),
        "max_abs_diff": max(o["max_abs_diff"] for o in outputs.values()),
        "max_mse": max(o["mse"] for o in outputs.values()),
    }


def float16_onnx(path: Path, out_path: Path) -> Path:
    """An FP16 copy of an FP32 ONNX model for GPU execution providers; inputs and outputs stay
    float32 so callers feed it exactly like the FP32 model."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    with atomic_path(out_path) as tmp:
        onnx.save_model(model, str(tmp))
    return out_path
