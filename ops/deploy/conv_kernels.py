"""Which of ONNX Runtime's two integer kernels each INT8 convolution runs on, set exactly.

ONNX Runtime runs a QDQ convolution (``QLinearConv``) on one of two CPU kernels, and the
weights' zero point picks which (``onnxruntime/core/providers/cpu/quantization/qlinearconv.cc``):

- weight zero point 0 (what the quantiser writes for symmetric int8 weights): the "symmetric"
  direct convolution kernels (``MlasConvSym``, AVX2/AVX-512 VNNI);
- any other zero point: im2col and the general quantised GEMM (``MlasGemm``), the kernel that
  ``MatMulInteger`` runs, which uses AMX tiles on CPUs that have them.

Neither wins everywhere. Timed layer by layer (:func:`time_conv_kernels`,
``python -m benchmarks.int8_profile --layer-kernels``) on a 2-core Xeon with AMX, the GEMM
kernel was faster on layers with many multiply-adds per output (K, input channels x kernel
area) and slower on the narrow early ones (3x3 on 64 channels, K = 576: 1.3x slower). So the
pipeline moves the layers with K at or above a configured threshold
(:func:`assign_conv_kernels`): a rule, not a timing at quantisation time, so the same model
quantises to the same bytes on every run (DVC's hashes and the fault suite's reruns rely on
that), and the threshold is re-measured per machine kind with the profiler.

Moving a layer is exact. The quantiser's symmetric int8 weights lie in [-127, 127], so storing
``q - 1`` with zero point -1 dequantises to the same ``(q - 1 + 1) * scale``, and ONNX Runtime
computes the same integers: the model's outputs are bit-identical. TensorRT accepts only zero
weight zero points, so :func:`restore_symmetric_weights` undoes the move before it parses.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ops.deploy.runtime import ort_session_options, tensor_shapes

log = logging.getLogger(__name__)

# The zero point that routes a layer to the GEMM kernel; any non-zero value does, -1 keeps the
# symmetric range [-127, 127] exactly representable as [-128, 126].
GEMM_WEIGHT_ZERO_POINT = -1
_GEMM_SUFFIX = "_gemm_kernel"  # initialisers of a moved layer; moving back restores the names


@dataclass(frozen=True)
class ConvKernelChoice:
    """The kernel one INT8 convolution is stored for, and the width that decided it."""

    node: str
    multiply_adds_per_output: int  # input channels x kernel area: the GEMM's K
    kernel: str  # "symmetric" | "gemm"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _IntConv:
    """A quantised convolution in a QDQ graph, as the nodes that make it up."""

    conv: Any  # onnx.NodeProto
    input_dq: Any  # DequantizeLinear of the activation
    weight_dq: Any  # DequantizeLinear of the int8 weight initialiser
    output_q: Any | None  # QuantizeLinear of the (activated) output, None if it stays float
    between: tuple[Any, ...]  # nodes from the Conv to output_q (e.g. a Relu ONNX Runtime fuses)


def _initialisers(graph: Any) -> dict[str, Any]:
    return {init.name: init for init in graph.initializer}


def _movable_convs(graph: Any) -> list[_IntConv]:
    """The graph's ungrouped int8 convolutions whose weights can move between the kernels: a
    constant int8 weight with zero points 0 in [-127, 127] (symmetric), or already moved.
    (A grouped convolution is not a GEMM: ONNX Runtime runs depthwise ones on a kernel of their own.)"""
    from onnx import numpy_helper

    inits = _initialisers(graph)
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {out.name for out in graph.output}
    found = []
    for conv in graph.node:
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        if conv.op_type != "Conv" or len(conv.input) < 2 or group != 1:
            continue
        input_dq, weight_dq = producer.get(conv.input[0]), producer.get(conv.input[1])
        if not (input_dq and weight_dq) or {input_dq.op_type, weight_dq.op_type} != {"DequantizeLinear"}:
            continue
        if len(weight_dq.input) < 3 or weight_dq.input[0] not in inits or weight_dq.input[2] not in inits:
            continue
        weights = numpy_helper.to_array(inits[weight_dq.input[0]])
        zero_points = numpy_helper.to_array(inits[weight_dq.input[2]])
        if weights.dtype != np.int8 or len(consumers.get(weight_dq.output[0], [])) != 1:
            continue
        symmetric = bool((zero_points == 0).all()) and int(weights.min(initial=0)) >= -127
        moved = bool((zero_points == GEMM_WEIGHT_ZERO_POINT).all()) and int(weights.max(initial=0)) <= 126
        if not (symmetric or moved):
            continue
        between, tensor, output_q = [], conv.output[0], None
        # Follow the output through what ONNX Runtime fuses into the kernel (Relu) to its Q.
        while tensor not in graph_outputs and len(consumers.get(tensor, [])) == 1:
            follower = consumers[tensor][0]
            if follower.op_type == "QuantizeLinear":
                output_q = follower
                break
            if follower.op_type != "Relu":
                break
            between.append(follower)
            tensor = follower.output[0]
        found.append(_IntConv(conv, input_dq, weight_dq, output_q, tuple(between)))
    return found


def _move(graph: Any, layer: _IntConv, kernel: str) -> None:
    """Store ``layer``'s weights for ``kernel`` ("symmetric" or "gemm"); exact both ways.

    New initialiser names, so a zero point shared with another layer is left as it was; the
    ones no node reads any more stay until :func:`_drop_unused_initialisers`."""
    from onnx import numpy_helper

    inits = _initialisers(graph)
    weight_name, zero_point_name = layer.weight_dq.input[0], layer.weight_dq.input[2]
    zero_points = numpy_helper.to_array(inits[zero_point_name])
    target = GEMM_WEIGHT_ZERO_POINT if kernel == "gemm" else 0
    current = _zero_point(zero_points)
    if current == target:
        return
    weights = numpy_helper.to_array(inits[weight_name]).astype(np.int16)
    shifted = (weights - current + target).astype(np.int8)
    suffix = _GEMM_SUFFIX if kernel == "gemm" else ""
    new_weight = weight_name.removesuffix(_GEMM_SUFFIX) + suffix
    new_zero_point = zero_point_name.removesuffix(_GEMM_SUFFIX) + suffix
    graph.initializer.append(numpy_helper.from_array(shifted, new_weight))
    graph.initializer.append(numpy_helper.from_array(np.full_like(zero_points, target), new_zero_point))
    layer.weight_dq.input[0], layer.weight_dq.input[2] = new_weight, new_zero_point


def _zero_point(zero_points: np.ndarray) -> int:
    """A layer's weight zero point (the same for every channel of a movable layer)."""
    return int(zero_points.flat[0]) if zero_points.size else 0


def _drop_unused_initialisers(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def restore_symmetric_weights(model: Any) -> int:
    """Store every moved layer's weights symmetric again (zero point 0), in place; returns how
    many layers changed. For consumers that accept only zero weight zero points (TensorRT)."""
    from onnx import numpy_helper

    inits = _initialisers(model.graph)
    moved = [
        layer
        for layer in _movable_convs(model.graph)
        if _zero_point(numpy_helper.to_array(inits[layer.weight_dq.input[2]])) != 0
    ]
    for layer in moved:
        _move(model.graph, layer, "symmetric")
    _drop_unused_initialisers(model.graph)
    return len(moved)


def _layer_model(model: Any, layer: _IntConv, input_shape: list[int]) -> Any:
    """``layer`` alone: its input's uint8 tensor in, its quantised (or float) output out."""
    from onnx import TensorProto, helper

    graph = model.graph
    nodes = [layer.input_dq, layer.weight_dq]
    producer = {out: node for node in graph.node for out in node.output}
    nodes += [producer[name] for name in layer.conv.input[2:] if name in producer]  # bias DQ
    nodes += [layer.conv, *layer.between] + ([layer.output_q] if layer.output_q is not None else [])
    output = nodes[-1].output[0]
    needed = {name for node in nodes for name in node.input}
    initialisers = [init for init in graph.initializer if init.name in needed]
    types = {init.name: init.data_type for init in graph.initializer}
    input_name = layer.input_dq.input[0]
    # a quantised tensor has its zero point's type
    input_type = types[layer.input_dq.input[2]]
    output_type = types[layer.output_q.input[2]] if layer.output_q is not None else TensorProto.FLOAT
    sub = helper.make_graph(
        nodes,
        f"{layer.conv.name}_alone",
        [helper.make_tensor_value_info(input_name, input_type, input_shape)],
        [helper.make_tensor_value_info(output, output_type, None)],
        initialisers,
    )
    return helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)


def _multiply_adds_per_output(graph: Any, layer: _IntConv) -> int:
    weight = _initialisers(graph)[layer.weight_dq.input[0]]
    return int(np.prod(weight.dims[1:]))


def assign_conv_kernels(model: Any, gemm_min_multiply_adds: int) -> list[ConvKernelChoice]:
    """Store each movable INT8 convolution of ``model`` (in place) for the GEMM kernel if it
    does at least ``gemm_min_multiply_adds`` per output, else for the symmetric kernel."""
    choices = []
    for layer in _movable_convs(model.graph):
        k = _multiply_adds_per_output(model.graph, layer)
        kernel = "gemm" if k >= gemm_min_multiply_adds else "symmetric"
        _move(model.graph, layer, kernel)
        choices.append(ConvKernelChoice(node=layer.conv.name, multiply_adds_per_output=k, kernel=kernel))
    _drop_unused_initialisers(model.graph)
    log.info(
        "INT8 convolutions on the GEMM kernel (K >= %d): %d of %d",
        gemm_min_multiply_adds,
        sum(c.kernel == "gemm" for c in choices),
        len(choices),
    )
    return choices


def _time_layer(alone: Any, shape: list[int], threads: int, warmup: int, runs: int) -> dict[str, float]:
    """p50 milliseconds of the one-convolution model ``alone`` on each kernel, interleaved."""
    import onnxruntime as ort

    from ops.deploy.benchmark import measure_interleaved

    rng = np.random.default_rng(0)
    calls = {}
    for kernel in ("symmetric", "gemm"):
        _move(alone.graph, _movable_convs(alone.graph)[0], kernel)
        _drop_unused_initialisers(alone.graph)
        session = ort.InferenceSession(
            alone.SerializeToString(), ort_session_options(threads), providers=["CPUExecutionProvider"]
        )
        feed_name = session.get_inputs()[0].name
        dtype = np.uint8 if session.get_inputs()[0].type == "tensor(uint8)" else np.int8
        info = np.iinfo(dtype)
        feed = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
        calls[kernel] = lambda _batch, s=session, n=feed_name, x=feed: s.run(None, {n: x})
    timings = measure_interleaved(calls, np.empty(0), warmup, runs, progress=False)
    return {kernel: float(np.percentile(ms, 50)) for kernel, ms in timings.items()}


def time_conv_kernels(
    model: Any, sample: np.ndarray, threads: int, warmup: int = 3, runs: int = 15
) -> list[dict[str, Any]]:
    """Each movable INT8 convolution of ``model`` timed alone (with its Q/DQ) on both kernels,
    on the activations one float input ``sample`` produces: what the threshold of
    :func:`assign_conv_kernels` is chosen from. ``model`` is left as it was."""
    layers = _movable_convs(model.graph)
    shapes = tensor_shapes(model, [layer.input_dq.input[0] for layer in layers], sample)
    rows = []
    for layer in layers:
        shape = shapes[layer.input_dq.input[0]]
        times = _time_layer(_layer_model(model, layer, shape), shape, threads, warmup, runs)
        rows.append(
            {
                "node": layer.conv.name,
                "multiply_adds_per_output": _multiply_adds_per_output(model.graph, layer),
                "symmetric_ms": round(times["symmetric"], 4),
                "gemm_ms": round(times["gemm"], 4),
            }
        )
    return rows
