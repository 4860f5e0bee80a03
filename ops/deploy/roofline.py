"""The machine's GEMM rates in ONNX Runtime: what a backend's GFLOP/s is a fraction of.

A convolution in ONNX Runtime's CPU provider is a GEMM (im2col, or direct NHWC kernels built
on the same MLAS micro-kernels), so the rate of ONNX Runtime's own MatMul (FP32) and
MatMulInteger (uint8 x int8, what QDQ INT8 convolutions run) on a large square product, at
the benchmark's thread count, is the ceiling each precision's model can reach on this machine.
The benchmark measures both in the same run as the models, interleaved like the backends, so
the fraction compares figures taken under the same conditions.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Large enough that the product is compute-bound (about 2 GFLOP, 12 MiB of operands in FP32),
# small enough for a few milliseconds a call.
GEMM_SIZE = 1024
FP32, INT8 = "fp32", "int8"


@dataclass(frozen=True)
class Roofline:
    """GEMM rates (G operations per second, a multiply-add counting as two) at ``threads``."""

    threads: int
    size: int
    fp32_gflop_per_s: float
    int8_gop_per_s: float

    def rate(self, precision: str) -> float:
        return self.int8_gop_per_s if precision == INT8 else self.fp32_gflop_per_s

    def fraction(self, precision: str | None, gflop_per_s: float | None) -> float | None:
        """``gflop_per_s`` as a share of the GEMM rate of ``precision``; None off the CPU."""
        if precision is None or not gflop_per_s:
            return None
        return round(gflop_per_s / self.rate(precision), 3)

    def describe(self) -> str:
        return (
            f"roofline ({self.threads} threads, ONNX Runtime {self.size}^3 GEMM): "
            f"FP32 MatMul {self.fp32_gflop_per_s:.0f} GFLOP/s, "
            f"INT8 MatMulInteger {self.int8_gop_per_s:.0f} GOP/s"
        )

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def cpu_precision(backend: str) -> str | None:
    """The arithmetic a backend's name says it runs on the CPU: ``int8``, ``fp32``, or None
    for a GPU backend (CUDA, TensorRT), which no CPU roofline bounds."""
    if "cuda" in backend or backend.startswith("trt-"):
        return None
    return INT8 if "int8" in backend else FP32


def _gemm_model(precision: str, m: int, k: int, n: int, rng: np.random.Generator) -> bytes:
    """One ``(m, k) x (k, n)`` product: ``MatMul`` in FP32, ``MatMulInteger`` (uint8 x int8) in INT8."""
    from onnx import TensorProto, helper, numpy_helper

    if precision == INT8:
        weights = rng.integers(-127, 128, (k, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["a", "b", "a_zero", "b_zero"], ["y"])
        inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])]
        initialisers = [
            numpy_helper.from_array(weights, "b"),
            numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
            numpy_helper.from_array(np.array(0, np.int8), "b_zero"),
        ]
        output = helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])
    else:
        weights = rng.standard_normal((k, n), dtype=np.float32)
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])]
        initialisers = [numpy_helper.from_array(weights, "b")]
        output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    graph = helper.make_graph([node], f"gemm_{precision}", inputs, [output], initialisers)
    # IR version pinned: the onnx package writes a newer one than ONNX Runtime reads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return model.SerializeToString()


def _gemm_call(precision: str, m: int, k: int, n: int, threads: int, rng: np.random.Generator) -> Any:
    """A callable that runs one ``(m, k) x (k, n)`` product in ONNX Runtime at ``threads``."""
    import onnxruntime as ort

    from ops.deploy.runtime import ort_session_options

    if precision == INT8:
        operand = rng.integers(0, 256, (m, k), dtype=np.uint8)
    else:
        operand = rng.standard_normal((m, k), dtype=np.float32)
    model, options = _gemm_model(precision, m, k, n, rng), ort_session_options(threads)
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return lambda _batch, s=session, a=operand: s.run(None, {"a": a})


def measure_roofline(threads: int, runs: int = 20, warmup: int = 3, size: int = GEMM_SIZE) -> Roofline:
    """Both GEMM rates at ``threads``, the p50 of ``runs`` interleaved calls each."""
    from ops.deploy.benchmark import measure_interleaved

    rng = np.random.default_rng(0)
    calls = {precision: _gemm_call(precision, size, size, size, threads, rng) for precision in (FP32, INT8)}
    timings = measure_interleaved(calls, np.empty(0), warmup, runs)
    operations = 2 * size**3
    rates = {p: operations / (float(np.percentile(t, 50)) / 1e3) / 1e9 for p, t in timings.items()}
    return Roofline(threads, size, round(rates[FP32], 1), round(rates[INT8], 1))


def conv_gemm_shapes(model: Any, sample: np.ndarray) -> list[tuple[int, int, int]]:
    """Each ungrouped convolution of ``model`` (an ``onnx.ModelProto``, float or QDQ) as the
    GEMM that im2col makes of it on ``sample``: (M, K, N) = (output pixels x batch, input
    channels x kernel area, output channels). Grouped convolutions are not GEMMs: left out."""
    from onnx import helper, numpy_helper

    from ops.deploy.runtime import tensor_shapes

    inits = {init.name: init for init in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    convs = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        weight = node.input[1]
        if weight not in inits and weight in producer:  # a QDQ model's DequantizeLinear
            weight = producer[weight].input[0]
        group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        if weight in inits and group == 1:
            convs.append((node.output[0], numpy_helper.to_array(inits[weight]).shape))
    shapes = tensor_shapes(model, [output for output, _ in convs], sample)
    gemms = []
    for output, (out_channels, in_channels, *kernel) in convs:
        batch, _, *pixels = shapes[output]
        gemms.append((batch * int(np.prod(pixels)), in_channels * int(np.prod(kernel)), out_channels))
    return gemms


def measure_gemm_shapes(
    shapes: Sequence[tuple[int, int, int]],
    threads: int,
    precision: str = INT8,
    runs: int = 10,
    warmup: int = 2,
) -> dict[str, float]:
    """The rate ONNX Runtime's GEMM reaches on exactly these products (e.g. a network's
    convolutions, :func:`conv_gemm_shapes`): each timed alone, interleaved, p50s summed.

    That is a convolution's work with none of its other costs (im2col, layout, quantising,
    other operators), on the kernel of the 1024^3 roofline: what that kernel reaches on a
    network of these layer shapes."""
    from ops.deploy.benchmark import measure_interleaved

    rng = np.random.default_rng(0)
    counts = collections.Counter(shapes)
    calls = {shape: _gemm_call(precision, *shape, threads, rng) for shape in counts}
    timings = measure_interleaved(calls, np.empty(0), warmup, runs, progress=False)
    ms = sum(float(np.percentile(timings[shape], 50)) * count for shape, count in counts.items())
    operations = sum(2 * m * k * n for m, k, n in shapes)
    return {
        "gemms": len(shapes),
        "gop": round(operations / 1e9, 3),
        "ms": round(ms, 3),
        "gop_per_s": round(operations / (ms / 1e3) / 1e9, 1),
    }
