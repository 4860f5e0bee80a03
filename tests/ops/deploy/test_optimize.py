"""INT8 static quantisation with ONNX Runtime: what runs in integer, what stays float, bad data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ops.config import ModelConfig, QuantizeConfig
from ops.deploy.export import export_onnx, parity, read_onnx_contract
from ops.deploy.optimize import (
    QuantizeSettings,
    output_layer_nodes,
    quantize_int8,
    rewrite_transposed_convolutions,
)
from ops.deploy.runtime import OnnxRuntimePredictor
from ops.detection.coco import load_coco_split
from ops.detection.data import calibration_batches, detector_metadata
from ops.detection.traffic import quantize_settings
from ops.errors import ExportError
from tests.ops.deploy.test_export import CLASSES, MEAN, SIZE, STD, _trained_looking_model

MODEL_CFG = ModelConfig(
    input_size=SIZE,
    width_mult=0.25,
    upsample=(True, True, True),
    backbone="resnet18",
    head_width=16,
    decoder_skips=True,
    mean=MEAN,
    std=STD,
)


def _cfg(**overrides) -> QuantizeSettings:
    values = dict(
        calibration_images=8,
        calibration_method="minmax",
        per_channel=True,
        keep_outputs_float=True,
        exclude_nodes=[],
    )
    return quantize_settings(QuantizeConfig(**{**values, **overrides}))


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    model = _trained_looking_model()
    path = tmp_path_factory.mktemp("fp32") / "model.onnx"
    return export_onnx(model, detector_metadata(model, MEAN, STD, SIZE, CLASSES), path)


@pytest.fixture(scope="module")
def train_batches(tiny_dataset):
    return calibration_batches(load_coco_split(tiny_dataset, "train"), MODEL_CFG, 8, seed=0, batch_size=4)


def test_calibration_batches_are_a_seeded_sample_of_training_images(tiny_dataset):
    split = load_coco_split(tiny_dataset, "train")
    first = calibration_batches(split, MODEL_CFG, 6, seed=3, batch_size=4)
    again = calibration_batches(split, MODEL_CFG, 6, seed=3, batch_size=4)
    other = calibration_batches(split, MODEL_CFG, 6, seed=4, batch_size=4)
    assert [b.shape for b in first] == [(4, 3, SIZE, SIZE), (2, 3, SIZE, SIZE)]
    assert all(b.dtype == np.float32 for b in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_int8_model_runs_on_integer_kernels_except_the_kept_output_layers(
    fp32_model, train_batches, tmp_path
):
    out = tmp_path / "model_int8.onnx"
    report = quantize_int8(fp32_model, out, train_batches, _cfg())
    graph_ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert graph_ops["QuantizeLinear"] > 0 and graph_ops["DequantizeLinear"] > 0
    # Every backbone, decoder and head 3x3 convolution became an integer QLinearConv; only the
    # three heads' 1x1 output convolutions (and the heatmap sigmoid) stay float, as configured.
    assert report.executed_ops["QLinearConv"] == 26
    assert report.float_compute_ops == {"Conv": 3}
    assert "ConvTranspose" not in report.executed_ops
    assert len(report.subpixel_nodes) == 3  # the decoder's upsampling layers, now int8 Convs
    assert set(report.excluded_nodes) == set(output_layer_nodes(fp32_model))
    assert report.calibration_images == 8
    int8, fp32 = read_onnx_contract(out), read_onnx_contract(fp32_model)
    assert int8.metadata == fp32.metadata  # the quantiser drops metadata_props: they are copied back
    assert int8.has_qdq and not fp32.has_qdq and int8.input_batch is None
    assert out.stat().st_size < fp32_model.stat().st_size / 2.5


def test_int8_outputs_stay_close_to_fp32(fp32_model, train_batches, tmp_path):
    out = quantize_int8(
        fp32_model, tmp_path / "q.onnx", train_batches, _cfg(calibration_method="entropy")
    ).path
    report = parity(OnnxRuntimePredictor(fp32_model), OnnxRuntimePredictor(out, "onnx-int8"), train_batches)
    assert report["min_cosine"] > 0.95


def test_quantising_the_outputs_too_leaves_no_float_convolution(fp32_model, train_batches, tmp_path):
    report = quantize_int8(fp32_model, tmp_path / "all.onnx", train_batches, _cfg(keep_outputs_float=False))
    assert "Conv" not in report.float_compute_ops
    assert report.excluded_nodes == []


def test_the_transposed_decoder_and_symmetric_activations_are_choices(fp32_model, train_batches, tmp_path):
    import dataclasses

    from onnx import numpy_helper

    kept = dataclasses.replace(_cfg(), subpixel_decoder=False, activation_symmetric=True)
    report = quantize_int8(fp32_model, tmp_path / "kept.onnx", train_batches, kept)
    assert report.subpixel_nodes == [] and report.executed_ops["ConvTranspose"] == 3  # float, no int8 kernel
    graph = onnx.load(str(report.path)).graph
    initialisers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    activation_zero_points = {
        int(initialisers[node.input[2]])
        for node in graph.node
        if node.op_type == "QuantizeLinear" and initialisers[node.input[2]].dtype == np.uint8
    }
    assert activation_zero_points == {128}  # uint8 activations centred, not fitted to their range


def test_calibration_data_of_the_wrong_shape_is_refused_before_anything_is_written(fp32_model, tmp_path):
    out = tmp_path / "q.onnx"
    wrong = [np.zeros((2, 3, SIZE, SIZE), np.float32), np.zeros((2, 3, 64, 64), np.float32)]
    with pytest.raises(ExportError, match=r"calibration batch 1 is float32 \(2, 3, 64, 64\)"):
        quantize_int8(fp32_model, out, wrong, _cfg())
    with pytest.raises(ExportError, match="float64"):
        quantize_int8(fp32_model, out, [np.zeros((1, 3, SIZE, SIZE))], _cfg())
    with pytest.raises(ExportError, match="no calibration batches"):
        quantize_int8(fp32_model, out, [], _cfg())
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_source_model_is_refused(tmp_path, train_batches):
    source = tmp_path / "model.onnx"
    source.write_bytes(b"garbage")
    with pytest.raises(ExportError, match="model.onnx"):
        quantize_int8(source, tmp_path / "q.onnx", train_batches, _cfg())
    assert not (tmp_path / "q.onnx").exists()


def _transposed_model(path, **attributes):
    """One ConvTranspose with bias, 6 -> 5 channels, on a dynamic-size input."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((6, 5, 4, 4)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b")
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="up", **attributes)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5, None, None])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save_model(model, str(path))
    return model


def test_subpixel_rewrite_is_exactly_the_transposed_convolution(tmp_path):
    original = _transposed_model(tmp_path / "a.onnx", kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1])
    assert rewrite_transposed_convolutions(original) == ["up"]
    assert [n.op_type for n in original.graph.node] == ["Conv", "DepthToSpace"]
    assert {i.name for i in original.graph.initializer} == {"up.subpixel.weight", "up.subpixel.bias"}
    onnx.checker.check_model(original, full_check=True)
    onnx.save_model(original, str(tmp_path / "b.onnx"))
    x = np.random.default_rng(1).standard_normal((2, 6, 7, 9)).astype(np.float32)
    expected, actual = (
        ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for name in ("a.onnx", "b.onnx")
    )
    assert actual.shape == expected.shape == (2, 5, 14, 18)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    "attributes",
    [
        dict(kernel_shape=[4, 4], strides=[2, 2], pads=[0, 0, 0, 0]),
        dict(kernel_shape=[4, 4], strides=[1, 1], pads=[1, 1, 1, 1]),
        dict(kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    ],
)
def test_other_transposed_convolutions_are_left_alone(tmp_path, attributes):
    model = _transposed_model(tmp_path / "a.onnx", **attributes)
    assert rewrite_transposed_convolutions(model) == []
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose"]
