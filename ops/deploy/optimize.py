"""INT8 post-training quantisation with ONNX Runtime's static quantiser (QDQ format).

Weights are int8 per output channel, activations uint8 with ranges calibrated on training
images (never validation images: those judge the result). The model is quantised in the
QDQ format, which ONNX Runtime fuses into integer kernels (VNNI on CPUs that have it) and
TensorRT reads as explicit quantisation, so one file serves both. Optionally the wider
convolutions are then stored for ONNX Runtime's GEMM kernel rather than its symmetric one
(:mod:`ops.deploy.conv_kernels`: exact, and undone for TensorRT when it builds).

What runs in integer arithmetic is not taken on trust: the report lists the operators of
the graph ONNX Runtime actually executes after its fusions, and which nodes stayed float.
"""

from __future__ import annotations

import collections
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ops.deploy.conv_kernels import ConvKernelChoice, assign_conv_kernels
from ops.deploy.export import OnnxMetadata, read_onnx_contract
from ops.deploy.runtime import INPUT_NAME, ort_session_options
from ops.errors import ExportError
from ops.io import atomic_path

log = logging.getLogger(__name__)

CALIBRATION_BATCH_SIZE = 8
# Operators that do arithmetic; their presence in float in the executed graph means work
# that did not reach the integer kernels.
COMPUTE_OPS = {"Conv", "ConvTranspose", "FusedConv", "Add", "Sigmoid", "MatMul", "Gemm", "NchwcConv"}


def check_calibration_batches(
    batches: Sequence[np.ndarray], input_chw: tuple[int, int | None, int | None]
) -> None:
    """Refuse calibration data that does not match the network input, naming the batch.
    ``input_chw`` holds None for the axes the model lets vary."""
    if not batches:
        raise ExportError("no calibration batches: the calibration split is empty")
    for index, batch in enumerate(batches):
        if (
            batch.dtype != np.float32
            or batch.ndim != 4
            or any(e is not None and e != d for e, d in zip(input_chw, batch.shape[1:], strict=True))
        ):
            shown = ", ".join("any" if d is None else str(d) for d in input_chw)
            raise ExportError(
                f"calibration batch {index} is {batch.dtype} {tuple(batch.shape)}, but the network "
                f"input {INPUT_NAME!r} takes float32 (N, {shown})"
            )


class _BatchReader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of batches."""

    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def output_layer_nodes(model_path: Path) -> list[str]:
    """Names of the nodes that produce the graph outputs, back to and including each output's
    last convolution (e.g. ``Conv -> Sigmoid`` for the heatmap, ``Conv`` for wh/offset, and
    ``Conv -> Add -> Slice`` for a restorer's residual output and its crop).

    Only float tensors are followed: the integer shape arithmetic of a dynamic crop is not
    a layer."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    float_type = onnx.TensorProto.FLOAT
    types = {
        value.name: value.type.tensor_type.elem_type
        for value in (*graph.value_info, *graph.input, *graph.output)
    }
    names: list[str] = []
    frontier = [output.name for output in graph.output]
    while frontier:
        node = producer.get(frontier.pop(0))
        if node is None or node.name in names:
            continue
        names.append(node.name)
        if node.op_type in ("Conv", "ConvTranspose"):
            continue
        frontier.extend(name for name in node.input if types.get(name, float_type) == float_type)
    return names


def input_layer_nodes(model_path: Path) -> list[str]:
    """Names of the nodes from the graph input forward to and including the first convolution
    (e.g. ``Pad -> Conv`` in a restorer that pads its input)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    consumers: dict[str, list[Any]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    names: list[str] = []
    frontier = [value.name for value in graph.input]
    seen: set[str] = set()
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in ("Shape", "Size"):  # reads only the input's shape
                continue
            names.append(node.name)
            if node.op_type not in ("Conv", "ConvTranspose"):
                frontier.extend(node.output)
    return names


def executed_operators(model_path: Path) -> collections.Counter[str]:
    """Operator counts of the graph ONNX Runtime really runs, after its fusions."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        optimised = Path(tmp) / "optimised.onnx"
        options = ort_session_options(threads=1)
        options.optimized_model_filepath = str(optimised)
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(optimised), load_external_data=False).graph
    return collections.Counter(node.op_type for node in graph.node)


# Which 4x4 kernel tap a k4/s2/p1 transposed convolution applies, per output phase (even or
# odd row/column), at input offset -1, 0, +1 (indices 0, 1, 2 of a 3x3 kernel).
_SUBPIXEL_TAPS = {0: {0: 3, 1: 1}, 1: {1: 2, 2: 0}}


def subpixel_weights(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the 3x3 convolution that, followed by ``DepthToSpace(2, CRD)``, computes
    exactly ``ConvTranspose(kernel 4, stride 2, pad 1)`` with ``weight`` (in, out, 4, 4).

    Output channel ``c * 4 + row_phase * 2 + col_phase`` holds the pixels (2y + row_phase,
    2x + col_phase) of channel c. Each phase only reads 2x2 of the 3x3 taps, so the Conv does
    2.25x the multiply-adds of the transposed one: worth it in int8, not in float.
    """
    in_channels, out_channels = weight.shape[:2]
    phases = np.zeros((out_channels, 2, 2, in_channels, 3, 3), dtype=weight.dtype)
    for row_phase, row_taps in _SUBPIXEL_TAPS.items():
        for col_phase, col_taps in _SUBPIXEL_TAPS.items():
            for u, ku in row_taps.items():
                for v, kv in col_taps.items():
                    phases[:, row_phase, col_phase, :, u, v] = weight[:, :, ku, kv].T
    return phases.reshape(4 * out_channels, in_channels, 3, 3), np.repeat(bias, 4)


def _is_k4_s2_p1(node: Any, weight_shape: tuple[int, ...]) -> bool:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return (
        len(weight_shape) == 4
        and tuple(weight_shape[2:]) == (4, 4)
        and list(attrs.get("kernel_shape", [4, 4])) == [4, 4]
        and list(attrs.get("strides", [1, 1])) == [2, 2]
        and list(attrs.get("pads", [0, 0, 0, 0])) == [1, 1, 1, 1]
        and list(attrs.get("dilations", [1, 1])) == [1, 1]
        and not any(attrs.get("output_padding", []))
        and attrs.get("group", 1) == 1
        and "output_shape" not in attrs
        and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    )


def rewrite_transposed_convolutions(model: Any) -> list[str]:
    """Replace every ``ConvTranspose(k4, s2, p1)`` of ``model`` (an ``onnx.ModelProto``, edited
    in place) by its exact sub-pixel form, ``Conv(3x3) -> DepthToSpace(2)``; returns the
    names of the rewritten nodes.

    Why: ONNX Runtime's CPU provider has no integer ConvTranspose kernel, so in a quantised
    model the decoder's transposed convolutions ran in float behind dequantise/quantise
    pairs and layout transposes (measured: 40 % of the INT8 model's time). As Convs they run
    on the VNNI int8 kernels. Only the model to be quantised is rewritten: in float the
    transposed form is faster (measured: full-size model 67.5 vs 78.1 ms in ONNX Runtime).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes, rewritten = [], []
    for node in graph.node:
        weight_init = initializers.get(node.input[1]) if node.op_type == "ConvTranspose" else None
        if weight_init is None or not _is_k4_s2_p1(node, tuple(weight_init.dims)):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weight_init)
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(initializers[node.input[2]])
        else:
            bias = np.zeros(weight.shape[1], weight.dtype)
        conv_weight, conv_bias = subpixel_weights(weight, bias)
        name = node.name or node.output[0]
        graph.initializer.extend(
            [
                numpy_helper.from_array(conv_weight, f"{name}.subpixel.weight"),
                numpy_helper.from_array(conv_bias, f"{name}.subpixel.bias"),
            ]
        )
        phases = f"{name}.subpixel.phases"
        nodes.append(
            helper.make_node(
                "Conv",
                [node.input[0], f"{name}.subpixel.weight", f"{name}.subpixel.bias"],
                [phases],
                name=f"{name}.subpixel",
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[1, 1],
            )
        )
        nodes.append(
            helper.make_node(
                "DepthToSpace", [phases], list(node.output), name=f"{name}.shuffle", blocksize=2, mode="CRD"
            )
        )
        rewritten.append(name)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return rewritten


@dataclass(frozen=True)
class QuantizationReport:
    path: Path
    calibration_method: str
    calibration_images: int
    per_channel: bool
    excluded_nodes: list[str]
    subpixel_nodes: list[str]  # transposed convolutions rewritten for the integer kernels
    executed_ops: dict[str, int]
    float_compute_ops: dict[str, int]
    conv_kernels: list[ConvKernelChoice] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "calibration_method": self.calibration_method,
            "calibration_images": self.calibration_images,
            "per_channel": self.per_channel,
            "excluded_nodes": self.excluded_nodes,
            "subpixel_nodes": self.subpixel_nodes,
            "executed_ops": self.executed_ops,
            "float_compute_ops": self.float_compute_ops,
            "conv_kernels": [choice.to_dict() for choice in self.conv_kernels],
        }


@dataclass(frozen=True)
class QuantizeSettings:
    """How a model is quantised; each task builds these from its own ``quantize`` config."""

    calibration_method: str  # minmax | entropy | percentile
    per_channel: bool
    exclude_nodes: tuple[str, ...] = ()
    # Keep float the layers that produce the graph's outputs, back to each one's last convolution.
    keep_output_layers: bool = False
    # Keep float the first convolution that reads the graph's input (and what leads to it).
    keep_input_layers: bool = False
    # ONNX operator types to quantise; None: every type ONNX Runtime's quantiser supports.
    op_types: tuple[str, ...] | None = None
    # Activations' zero point fixed at the middle of uint8 instead of fitted to their range.
    activation_symmetric: bool = False
    # Transposed convolutions rewritten as Conv + DepthToSpace (see rewrite_transposed_convolutions).
    subpixel_decoder: bool = True
    # Convolutions with at least this many multiply-adds per output run on ONNX Runtime's GEMM
    # kernel, the rest on its symmetric one (ops.deploy.conv_kernels); None: all symmetric.
    gemm_kernel_min_multiply_adds: int | None = None


def quantize_int8(
    onnx_path: Path,
    out_path: Path,
    batches: Sequence[np.ndarray],
    cfg: QuantizeSettings,
    metadata_type: type = OnnxMetadata,
) -> QuantizationReport:
    """Statically quantise ``onnx_path`` to QDQ INT8 at ``out_path`` (written atomically).

    ``metadata_type`` names the model's contract (:func:`~ops.deploy.export.read_onnx_contract`)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # also refuses a corrupt or foreign model
    contract = read_onnx_contract(onnx_path, metadata_type)
    metadata = contract.metadata
    check_calibration_batches(batches, contract.input_chw)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[cfg.calibration_method]
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and graph clean-up first, as ONNX Runtime recommends for quantisation.
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared))
        subpixel = rewrite_transposed_convolutions(graph) if cfg.subpixel_decoder else []
        onnx.save_model(graph, str(prepared))
        excluded = list(cfg.exclude_nodes)
        if cfg.keep_output_layers:
            excluded += [name for name in output_layer_nodes(prepared) if name not in excluded]
        if cfg.keep_input_layers:
            excluded += [name for name in input_layer_nodes(prepared) if name not in excluded]
        quantized = Path(tmp) / "quantized.onnx"
        log.info(
            "quantising %s: %s calibration on %d images, %d nodes kept float",
            onnx_path,
            cfg.calibration_method,
            sum(len(b) for b in batches),
            len(excluded),
        )
        quantize_static(
            str(prepared),
            str(quantized),
            _BatchReader(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=cfg.per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            op_types_to_quantize=list(cfg.op_types) if cfg.op_types else None,
            calibrate_method=method,
            extra_options={"ActivationSymmetric": cfg.activation_symmetric, "WeightSymmetric": True},
        )
        model = onnx.load(str(quantized))
        del model.metadata_props[:]
        for key, value in metadata.to_props().items():  # the quantiser drops them
            model.metadata_props.add(key=key, value=value)
        kernels = []
        if cfg.gemm_kernel_min_multiply_adds is not None:
            kernels = assign_conv_kernels(model, cfg.gemm_kernel_min_multiply_adds)
        with atomic_path(out_path) as final:
            onnx.save_model(model, str(final))
    executed = executed_operators(out_path)
    float_ops = {op: n for op, n in sorted(executed.items()) if op in COMPUTE_OPS}
    report = QuantizationReport(
        path=out_path,
        calibration_method=cfg.calibration_method,
        calibration_images=sum(len(b) for b in batches),
        per_channel=cfg.per_channel,
        excluded_nodes=excluded,
        subpixel_nodes=subpixel,
        executed_ops=dict(sorted(executed.items())),
        float_compute_ops=float_ops,
        conv_kernels=kernels,
    )
    log.info("INT8 model %s; float compute left: %s", out_path, float_ops or "none")
    return report
