"""ONNX / torch.export artefacts: the contract, the metadata, parity with PyTorch, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from ops.data.coco import load_coco_split
from ops.data.detection import InputNormalizer, load_input_batches
from ops.errors import ExportError
from ops.export import (
    ProgramPredictor,
    deployable_detector,
    detector_metadata,
    export_onnx,
    export_program,
    parity,
    read_onnx_metadata,
    subpixel_convolution,
)
from ops.models import TrafficQuantizerNet
from ops.runtime import OnnxRuntimePredictor, TorchPredictor

SIZE = 128
CLASSES = ["car", "truck", "bus", "pedestrian"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _trained_looking_model() -> TrafficQuantizerNet:
    """A tiny detector whose BatchNorm layers hold non-trivial statistics, as after training."""
    torch.manual_seed(0)
    model = TrafficQuantizerNet(num_classes=len(CLASSES), input_size=SIZE, width_mult=0.25, head_width=16)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[TrafficQuantizerNet, Path]:
    model = _trained_looking_model()
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    export_onnx(model, detector_metadata(model, MEAN, STD, SIZE, CLASSES), path)
    return model, path


@pytest.fixture(scope="module")
def val_batches(tiny_dataset) -> list[np.ndarray]:
    split = load_coco_split(tiny_dataset, "val")
    return load_input_batches(split.images, SIZE, InputNormalizer(MEAN, STD), 4)


def test_subpixel_convolution_is_exactly_the_transposed_convolution():
    torch.manual_seed(1)
    transposed = nn.ConvTranspose2d(8, 5, 4, stride=2, padding=1, bias=True)
    norm = nn.BatchNorm2d(5).eval()
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    norm.weight.data.uniform_(0.5, 2)
    norm.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 8, 7, 9)
    with torch.no_grad():
        expected = norm(transposed(x))
        actual = subpixel_convolution(transposed, norm)(x)
    assert actual.shape == expected.shape == (2, 5, 14, 18)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_subpixel_convolution_refuses_other_geometries():
    with pytest.raises(ValueError, match="k4, s2, p1"):
        subpixel_convolution(nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4))


def test_deployable_detector_computes_the_same_and_leaves_the_model_alone():
    model = _trained_looking_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployable = deployable_detector(model)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in deployable.modules())
    assert any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        for name, value in model(x).items():
            torch.testing.assert_close(deployable(x)[name], value, atol=1e-5, rtol=1e-4)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_onnx_follows_the_contract_and_carries_its_preprocessing(exported):
    _, path = exported
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["heatmap", "wh", "offset"]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    assert "ConvTranspose" not in {n.op_type for n in proto.graph.node}
    metadata = read_onnx_metadata(path)
    assert metadata.input_size == SIZE and metadata.class_names == CLASSES
    assert metadata.mean == pytest.approx(MEAN) and metadata.std == pytest.approx(STD)
    assert metadata.output_stride == 4 and metadata.resize == "letterbox"


def test_onnx_runtime_matches_pytorch_on_real_images_at_any_batch(exported, val_batches):
    model, path = exported
    report = parity(TorchPredictor(model), OnnxRuntimePredictor(path), val_batches)
    assert report["num_images"] == 8
    assert report["min_cosine"] > 0.99999
    assert report["max_abs_diff"] < 1e-4
    single = OnnxRuntimePredictor(path)(val_batches[0][:1])
    assert single["heatmap"].shape == (1, len(CLASSES), SIZE // 4, SIZE // 4)


def test_parity_notices_a_different_model(exported, val_batches):
    model, path = exported
    other = _trained_looking_model()
    with torch.no_grad():
        other.heads.wh[-1].weight.mul_(-1)
    report = parity(TorchPredictor(other), OnnxRuntimePredictor(path), val_batches)
    assert report["outputs"]["wh"]["cosine"] < 0.5
    assert report["outputs"]["heatmap"]["cosine"] > 0.99999


def test_torch_export_program_round_trips(exported, val_batches, tmp_path):
    model, _ = exported
    path = export_program(model, SIZE, tmp_path / "model.pt2")
    report = parity(TorchPredictor(model), ProgramPredictor(path), val_batches)
    assert report["max_abs_diff"] < 1e-5
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]  # no temporary left behind


def _graph_with_outputs(names: list[str]) -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", ["images"], [name]) for name in names]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 3, 8, 8]) for name in names],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_bad_model_files_are_refused_with_the_path(exported, tmp_path):
    _, good = exported
    with pytest.raises(ExportError, match="not found"):
        read_onnx_metadata(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx model" * 50)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (garbage, truncated):
        with pytest.raises(ExportError, match=path.name):
            read_onnx_metadata(path)
        with pytest.raises(ExportError, match=path.name):
            OnnxRuntimePredictor(path)
    foreign = tmp_path / "foreign.onnx"
    onnx.save(_graph_with_outputs(["boxes", "scores"]), str(foreign))
    with pytest.raises(ExportError, match="do not match the detector contract"):
        read_onnx_metadata(foreign)
    with pytest.raises(ExportError, match="do not match the detector contract"):
        OnnxRuntimePredictor(foreign)
    bare = tmp_path / "bare.onnx"
    onnx.save(_graph_with_outputs(["heatmap", "wh", "offset"]), str(bare))
    with pytest.raises(ExportError, match="metadata_props lacks"):
        read_onnx_metadata(bare)
    broken_program = tmp_path / "broken.pt2"
    broken_program.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ExportError, match="broken.pt2"):
        ProgramPredictor(broken_program)
