"""Benchmark mechanics (interleaving, table, chart) and release gates as data."""

from __future__ import annotations

import numpy as np

from ops.deploy.benchmark import (
    BackendRow,
    cpu_serving_choice,
    format_table,
    measure_interleaved,
    plot_benchmark,
)
from ops.deploy.roofline import Roofline, conv_gemm_shapes, measure_gemm_shapes, measure_roofline
from ops.gates import all_passed, cosine_gate, map_drop_gate, skipped_gate
from ops.io import sha256_file


def test_runs_are_interleaved_with_the_order_rotated_and_warmup_excluded():
    calls: list[str] = []

    def recorder(name):
        return lambda batch: calls.append(name)

    predictors = {name: recorder(name) for name in ("a", "b", "c")}
    timings = measure_interleaved(predictors, np.zeros((1, 3, 8, 8), np.float32), warmup=2, runs=3)
    assert {k: len(v) for k, v in timings.items()} == {"a": 3, "b": 3, "c": 3}
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up, untimed
    assert calls[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_rows_report_percentiles_speedup_and_accuracy_delta(tmp_path):
    reference = BackendRow("pytorch", [10.0] * 9 + [30.0], map50=0.80, size_bytes=4_000_000)
    fast = BackendRow("onnx-int8", [2.5] * 10, map50=0.795, size_bytes=1_000_000, gflops=0.5)
    row = fast.to_dict(reference)
    assert row["speedup_vs_pytorch"] == 4.0
    assert row["fps"] == 400.0
    assert row["gflop_per_s"] == 200.0  # 0.5 GFLOP per image, 400 images per second
    assert reference.to_dict(None)["gflop_per_s"] is None
    assert row["map50_delta_vs_pytorch"] == -0.005
    assert reference.to_dict(reference)["latency_p95_ms"] > 10.0
    table = format_table([reference.to_dict(reference), row])
    assert "onnx-int8" in table and "4.00" in table and "-0.0050" in table
    plot = plot_benchmark([reference.to_dict(reference), row], "test", tmp_path / "chart.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_roofline_is_onnx_runtimes_gemm_rate_and_each_row_a_share_of_its_precisions():
    measured = measure_roofline(threads=1, runs=3, warmup=1, size=128)
    assert measured.threads == 1 and measured.fp32_gflop_per_s > 0 and measured.int8_gop_per_s > 0
    assert "FP32 MatMul" in measured.describe() and "INT8 MatMulInteger" in measured.describe()

    roofline = Roofline(threads=2, size=1024, fp32_gflop_per_s=400.0, int8_gop_per_s=1600.0)
    reference = BackendRow("pytorch", [10.0] * 10, gflops=2.0)  # 200 GFLOP/s
    rows = {
        backend: BackendRow(backend, [4.0] * 10, gflops=2.0).to_dict(reference, roofline)  # 500 GFLOP/s
        for backend in ("onnx", "onnx-int8", "onnx-cuda", "trt-int8")
    }
    assert reference.to_dict(reference, roofline)["gemm_fraction"] == 0.5
    assert rows["onnx"]["gemm_fraction"] == 1.25  # above the roofline shows as such, not capped
    assert rows["onnx-int8"]["gemm_fraction"] == 0.312
    assert rows["onnx-cuda"]["gemm_fraction"] is None and rows["trt-int8"]["gemm_fraction"] is None
    assert reference.to_dict(reference)["gemm_fraction"] is None  # no roofline measured
    assert "31%" in format_table(list(rows.values()))


def test_each_convolution_is_the_gemm_im2col_makes_of_it_and_those_gemms_are_timed():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "stem": rng.standard_normal((8, 3, 7, 7), dtype=np.float32),  # 7x7 stride 2
        "body": rng.standard_normal((16, 8, 3, 3), dtype=np.float32),
        "depthwise": rng.standard_normal((16, 1, 3, 3), dtype=np.float32),  # grouped: not a GEMM
    }
    nodes = [
        helper.make_node("Conv", ["x", "stem"], ["a"], kernel_shape=[7, 7], strides=[2, 2], pads=[3] * 4),
        helper.make_node("Conv", ["a", "body"], ["b"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Conv", ["b", "depthwise"], ["y"], kernel_shape=[3, 3], pads=[1] * 4, group=16),
    ]
    graph = helper.make_graph(
        nodes,
        "convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)

    shapes = conv_gemm_shapes(model, np.zeros((2, 3, 32, 48), np.float32))
    # M = batch x output pixels, K = input channels x kernel area, N = output channels
    assert shapes == [(2 * 16 * 24, 3 * 49, 8), (2 * 16 * 24, 8 * 9, 16)]
    bound = measure_gemm_shapes(shapes, threads=1, runs=3, warmup=1)
    assert bound["gemms"] == 2 and bound["gop"] == round(2 * 768 * (147 * 8 + 72 * 16) / 1e9, 3)
    assert bound["ms"] > 0 and bound["gop_per_s"] > 0


def test_the_cpu_serving_choice_is_the_faster_onnx_file_with_its_figures(tmp_path):
    files = {"onnx": tmp_path / "model.onnx", "onnx-int8": tmp_path / "model_int8.onnx"}
    files["onnx"].write_bytes(b"fp32")
    files["onnx-int8"].write_bytes(b"int8")
    digests = {fmt: sha256_file(path) for fmt, path in files.items()}
    rows = [
        {"backend": "pytorch", "latency_p50_ms": 1.0},  # fastest, but not a serving file
        {"backend": "onnx", "latency_p50_ms": 4.18},
        {"backend": "onnx-int8", "latency_p50_ms": 4.28},
    ]
    choice = cpu_serving_choice(rows, "256x256", 1, 2, digests)
    assert choice["format"] == "onnx" and choice["size"] == "256x256"
    assert choice["reason"] == "onnx 4.18 ms vs onnx-int8 4.28 ms (p50 at 256x256, batch 1, 2 threads)"
    assert choice["sha256"]["onnx-int8"] == sha256_file(files["onnx-int8"])
    rows[2]["latency_p50_ms"] = 2.0
    assert cpu_serving_choice(rows, "256x256", 1, 2, digests)["format"] == "onnx-int8"
    assert cpu_serving_choice(rows[:1], "256x256", 1, 2, digests) is None


def test_map_drop_gate_is_strictly_below_its_threshold():
    assert map_drop_gate("onnx", 0.80, 0.795, 0.01).passed
    failed = map_drop_gate("onnx-int8", 0.80, 0.78, 0.01)
    assert not failed.passed and failed.value == 0.02 and failed.threshold == 0.01
    assert "0.7800" in failed.detail and "0.8000" in failed.detail
    assert map_drop_gate("onnx", 0.80, 0.85, 0.01).passed  # a gain is never a failure


def test_cosine_and_skipped_gates():
    assert cosine_gate("onnx", 0.9999, 0.999).passed
    assert not cosine_gate("onnx", 0.98, 0.999).passed
    skipped = skipped_gate("map50_drop_trt-fp16", 0.02, "<", "no CUDA device")
    assert skipped.skipped and skipped.value is None and skipped.detail == "no CUDA device"
    assert all_passed([skipped, cosine_gate("onnx", 1.0, 0.999)])
    assert not all_passed([skipped, cosine_gate("onnx", 0.5, 0.999)])
