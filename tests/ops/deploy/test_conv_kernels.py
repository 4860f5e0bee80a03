"""INT8 convolutions stored for ONNX Runtime's GEMM or symmetric integer kernel: real quantised
detectors in real ONNX Runtime sessions, outputs compared bit for bit."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from ops.deploy import conv_kernels
from ops.deploy.conv_kernels import assign_conv_kernels, restore_symmetric_weights, time_conv_kernels
from ops.deploy.export import export_onnx
from ops.deploy.optimize import QuantizeSettings, executed_operators, quantize_int8
from ops.deploy.runtime import INPUT_NAME
from ops.deploy.tensorrt import symmetric_weights_file
from ops.detection.data import detector_metadata
from tests.ops.deploy.test_export import CLASSES, MEAN, SIZE, STD, _trained_looking_model

SETTINGS = QuantizeSettings(calibration_method="minmax", per_channel=True, keep_output_layers=True)
EVERY_LAYER = 1  # multiply-adds per output: every convolution has at least one


def _images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, SIZE, SIZE), dtype=np.float32)


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    model = _trained_looking_model()
    tmp = tmp_path_factory.mktemp("kernels")
    fp32 = export_onnx(model, detector_metadata(model, MEAN, STD, SIZE, CLASSES), tmp / "model.onnx")
    return quantize_int8(fp32, tmp / "int8.onnx", [_images(4, 0), _images(4, 1)], SETTINGS).path


def _outputs(model: onnx.ModelProto | str, images: np.ndarray) -> list[np.ndarray]:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: images})


def _weight_zero_points(model: onnx.ModelProto) -> dict[str, int]:
    """Each int8 convolution weight's zero point, by the Conv node's name."""
    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    found = {}
    for node in model.graph.node:
        weight_dq = producer.get(node.input[1]) if node.op_type == "Conv" else None
        if weight_dq is not None and weight_dq.op_type == "DequantizeLinear":
            zero_points = inits[weight_dq.input[2]]
            assert len(set(zero_points.flat)) == 1, f"{node.name}: mixed zero points {zero_points}"
            found[node.name] = int(zero_points.flat[0])
    return found


def test_every_convolution_on_the_gemm_kernel_gives_bit_identical_outputs(int8_model):
    model = onnx.load(str(int8_model))
    before = _weight_zero_points(model)
    choices = assign_conv_kernels(model, EVERY_LAYER)

    assert before and set(before.values()) == {0}
    assert {choice.node for choice in choices} == set(before)
    assert {choice.kernel for choice in choices} == {"gemm"}
    assert set(_weight_zero_points(model).values()) == {conv_kernels.GEMM_WEIGHT_ZERO_POINT}
    images = _images(2, 3)
    for moved, original in zip(_outputs(model, images), _outputs(str(int8_model), images), strict=True):
        np.testing.assert_array_equal(moved, original)


def test_the_threshold_splits_the_layers_by_multiply_adds_per_output(int8_model):
    model = onnx.load(str(int8_model))
    sizes = sorted({choice.multiply_adds_per_output for choice in assign_conv_kernels(model, EVERY_LAYER)})
    threshold = sizes[len(sizes) // 2]
    choices = assign_conv_kernels(model, threshold)  # moves layers back as well as forward
    assert {c.kernel for c in choices} == {"gemm", "symmetric"}
    assert all((c.kernel == "gemm") == (c.multiply_adds_per_output >= threshold) for c in choices)
    stored = _weight_zero_points(model)
    assert all(stored[c.node] == (-1 if c.kernel == "gemm" else 0) for c in choices)


def test_restoring_symmetric_weights_is_the_exact_inverse(int8_model, tmp_path):
    original = onnx.load(str(int8_model))
    moved = onnx.load(str(int8_model))
    assign_conv_kernels(moved, EVERY_LAYER)
    moved_path = tmp_path / "moved.onnx"
    onnx.save_model(moved, str(moved_path))

    with symmetric_weights_file(moved_path) as for_tensorrt:
        assert for_tensorrt != moved_path
        readable = onnx.load(str(for_tensorrt))
    assert not for_tensorrt.exists()  # a temporary copy
    assert set(_weight_zero_points(readable).values()) == {0}
    as_arrays = lambda model: {i.name: numpy_helper.to_array(i).tobytes() for i in model.graph.initializer}  # noqa: E731
    assert as_arrays(readable) == as_arrays(original)
    assert _weight_zero_points(onnx.load(str(moved_path))) == _weight_zero_points(moved)  # file untouched
    with symmetric_weights_file(int8_model) as unchanged:
        assert unchanged == int8_model
    assert restore_symmetric_weights(original) == 0


def test_quantisation_is_reproducible_and_reports_what_the_file_holds(int8_model, tmp_path):
    fp32 = int8_model.parent / "model.onnx"
    settings = dataclasses.replace(SETTINGS, gemm_kernel_min_multiply_adds=500)
    calibration = [_images(4, 0), _images(4, 1)]
    report = quantize_int8(fp32, tmp_path / "first.onnx", calibration, settings)
    again = quantize_int8(fp32, tmp_path / "again.onnx", calibration, settings)

    assert report.path.read_bytes() == again.path.read_bytes()  # DVC hashes and reruns rely on it
    stored = _weight_zero_points(onnx.load(str(report.path)))
    assert {choice.node: choice.kernel for choice in report.conv_kernels} == {
        node: "gemm" if zero_point else "symmetric" for node, zero_point in stored.items()
    }
    assert {choice.kernel for choice in report.conv_kernels} == {"gemm", "symmetric"}
    assert report.to_dict()["conv_kernels"][0].keys() == {"node", "multiply_adds_per_output", "kernel"}
    assert executed_operators(report.path)["QLinearConv"] == executed_operators(int8_model)["QLinearConv"]
    images = _images(2, 4)
    for selected, plain in zip(
        _outputs(str(report.path), images), _outputs(str(int8_model), images), strict=True
    ):
        np.testing.assert_array_equal(selected, plain)


def test_each_layer_is_timed_alone_on_both_kernels_and_the_model_left_as_it_was(int8_model):
    model = onnx.load(str(int8_model))
    before = model.SerializeToString()
    rows = time_conv_kernels(model, _images(1, 5), threads=1, warmup=1, runs=3)
    assert model.SerializeToString() == before
    assert [row["node"] for row in rows] == list(_weight_zero_points(model))
    assert all(row["symmetric_ms"] > 0 and row["gemm_ms"] > 0 for row in rows)
