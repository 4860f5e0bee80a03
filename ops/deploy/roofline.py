"""The machine's GEMM rates in ONNX Runtime: what a backend's GFLOP/s is a fraction of.

A convolution in ONNX Runtime's CPU provider is a GEMM (im2col, or direct NHWC kernels built
on the same MLAS micro-kernels), so the rate of ONNX Runtime's own MatMul (FP32) and
MatMulInteger (uint8 x int8, what QDQ INT8 convolutions run) on a large square product, at
the benchmark's thread count, is the ceiling each precision's model can reach on this machine.
The benchmark measures both in the same run as the models, interleaved like the backends, so
the fraction compares figures taken under the same conditions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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


def _gemm_model(precision: str, size: int, rng: np.random.Generator) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    if precision == INT8:
        weights = rng.integers(-127, 128, (size, size), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["a", "b", "a_zero", "b_zero"], ["y"])
        inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])]
        initialisers = [
            numpy_helper.from_array(weights, "b"),
            numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
            numpy_helper.from_array(np.array(0, np.int8), "b_zero"),
        ]
        output = helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])
    else:
        weights = rng.standard_normal((size, size), dtype=np.float32)
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])]
        initialisers = [numpy_helper.from_array(weights, "b")]
        output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])
    graph = helper.make_graph([node], f"gemm_{precision}", inputs, [output], initialisers)
    # IR version pinned: the onnx package writes a newer one than ONNX Runtime reads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return model.SerializeToString()


def measure_roofline(threads: int, runs: int = 20, warmup: int = 3, size: int = GEMM_SIZE) -> Roofline:
    """Both GEMM rates at ``threads``, the p50 of ``runs`` interleaved calls each."""
    import onnxruntime as ort

    from ops.deploy.benchmark import measure_interleaved
    from ops.deploy.runtime import ort_session_options

    rng = np.random.default_rng(0)
    calls = {}
    for precision, operand in (
        (FP32, rng.standard_normal((size, size), dtype=np.float32)),
        (INT8, rng.integers(0, 256, (size, size), dtype=np.uint8)),
    ):
        model, options = _gemm_model(precision, size, rng), ort_session_options(threads)
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        calls[precision] = lambda _batch, s=session, a=operand: s.run(None, {"a": a})
    timings = measure_interleaved(calls, np.empty(0), warmup, runs)
    operations = 2 * size**3
    rates = {p: operations / (float(np.percentile(t, 50)) / 1e3) / 1e9 for p, t in timings.items()}
    return Roofline(threads, size, round(rates[FP32], 1), round(rates[INT8], 1))
