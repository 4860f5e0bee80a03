"""ONNX / torch.export artefacts: the contract, the metadata, parity with PyTorch, bad files.

Contract checks use both a real export and tiny hand-written models (``write_tiny_onnx``,
also used by the TensorRT tests), so each violation is one small, explicit change.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ops.deploy.export import (
    ProgramPredictor,
    deployable_module,
    export_onnx,
    export_program,
    fold_batchnorm,
    parity,
    read_onnx_contract,
)
from ops.deploy.runtime import OUTPUT_NAMES, OnnxRuntimePredictor, TorchPredictor
from ops.detection.coco import load_coco_split
from ops.detection.data import InputNormalizer, detector_metadata, load_input_batches
from ops.detection.model import TrafficQuantizerNet
from ops.errors import ExportError
from ops.io import sha256_file

SIZE = 128
CLASSES = ["car", "truck", "bus", "pedestrian"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _trained_looking_model() -> TrafficQuantizerNet:
    """A tiny detector whose BatchNorm layers hold non-trivial statistics, as after training."""
    torch.manual_seed(0)
    return with_trained_statistics(
        TrafficQuantizerNet(
            num_classes=len(CLASSES), input_size=SIZE, width_mult=0.25, head_width=16, decoder_skips=True
        )
    )


def with_trained_statistics(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with BatchNorm statistics and affine terms that are not identity, as
    after training, so export and BN folding are really exercised."""
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


def test_batchnorm_folds_exactly_into_the_transposed_convolution():
    torch.manual_seed(1)
    transposed = nn.ConvTranspose2d(8, 5, 4, stride=2, padding=1, bias=False)
    norm = nn.BatchNorm2d(5).eval()
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    norm.weight.data.uniform_(0.5, 2)
    norm.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 8, 7, 9)
    with torch.no_grad():
        expected = norm(transposed(x))
        actual = fold_batchnorm(transposed, norm)(x)
    assert actual.shape == expected.shape == (2, 5, 14, 18)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="ungrouped"):
        fold_batchnorm(nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, groups=2), nn.BatchNorm2d(4))


def test_deployable_detector_computes_the_same_and_leaves_the_model_alone():
    model = _trained_looking_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployable = deployable_module(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployable.decoder.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.decoder.modules())
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
    assert Counter(n.op_type for n in proto.graph.node)["ConvTranspose"] == 3  # the decoder, BN folded
    contract = read_onnx_contract(path)
    assert contract.path == path and contract.sha256 == sha256_file(path)
    assert contract.input_batch is None and contract.input_chw == (3, SIZE, SIZE) and not contract.has_qdq
    metadata = contract.metadata
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
    path = export_program(model, detector_metadata(model, MEAN, STD, SIZE, CLASSES), tmp_path / "model.pt2")
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
        read_onnx_contract(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx model" * 50)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (garbage, truncated):
        with pytest.raises(ExportError, match=path.name):
            read_onnx_contract(path)
        with pytest.raises(ExportError, match=path.name):
            OnnxRuntimePredictor(path)
    foreign = tmp_path / "foreign.onnx"
    onnx.save(_graph_with_outputs(["boxes", "scores"]), str(foreign))
    with pytest.raises(ExportError, match="do not match the detector contract"):
        read_onnx_contract(foreign)
    with pytest.raises(ExportError, match="do not match the detector contract"):
        OnnxRuntimePredictor(foreign)
    bare = tmp_path / "bare.onnx"
    onnx.save(_graph_with_outputs(["heatmap", "wh", "offset"]), str(bare))
    with pytest.raises(ExportError, match="metadata_props lacks"):
        read_onnx_contract(bare)
    broken_program = tmp_path / "broken.pt2"
    broken_program.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ExportError, match="broken.pt2"):
        ProgramPredictor(broken_program)


# --------------------------------------------------------------------------- the contract, on tiny models

TINY_SIZE = 16  # input H = W; outputs are at stride 4
TINY_CHW = (3, TINY_SIZE, TINY_SIZE)
TINY_METADATA = {
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "input_size": TINY_SIZE,
    "class_names": ["car", "truck"],
    "output_stride": 4,
}


def write_tiny_onnx(
    path: Path,
    *,
    batch: str | int = "batch",
    input_shape: list[str | int] | None = None,
    qdq: bool = False,
    output_names: tuple[str, ...] = OUTPUT_NAMES,
    metadata: dict | None = None,
    raw_props: dict[str, str] | None = None,
    external_data: bool = False,
) -> Path:
    """A 3-Conv detector head honouring the contract: images -> heatmap (sigmoid), wh, offset.

    Written with ``onnx.helper`` so the contract tests (here and for TensorRT) depend on
    neither torch export nor a trained model. ``metadata`` values are JSON-encoded;
    ``raw_props`` are stored verbatim on top, to write values that are not JSON.
    """
    rng = np.random.default_rng(0)
    num_classes = len(TINY_METADATA["class_names"])
    initializers = []
    nodes = []
    source = "images"
    if qdq:
        initializers += [
            numpy_helper.from_array(np.array(0.02, dtype=np.float32), "x_scale"),
            numpy_helper.from_array(np.array(0, dtype=np.int8), "x_zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["images", "x_scale", "x_zero"], ["images_q"]),
            helper.make_node("DequantizeLinear", ["images_q", "x_scale", "x_zero"], ["images_dq"]),
        ]
        source = "images_dq"
    heads = {"heatmap": num_classes, "wh": 2, "offset": 2}
    for out_name, (head, channels) in zip(output_names, heads.items(), strict=True):
        weight = rng.normal(0, 0.2, size=(channels, 3, 4, 4)).astype(np.float32)
        bias = rng.normal(0, 0.1, size=(channels,)).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"{head}_w"),
            numpy_helper.from_array(bias, f"{head}_b"),
        ]
        conv_out = f"{head}_conv" if head == "heatmap" else out_name
        nodes.append(
            helper.make_node(
                "Conv", [source, f"{head}_w", f"{head}_b"], [conv_out], kernel_shape=[4, 4], strides=[4, 4]
            )
        )
        if head == "heatmap":
            nodes.append(helper.make_node("Sigmoid", [conv_out], [out_name]))
    outputs = [
        helper.make_tensor_value_info(
            name, TensorProto.FLOAT, [batch, channels, TINY_SIZE // 4, TINY_SIZE // 4]
        )
        for name, channels in zip(output_names, heads.values(), strict=True)
    ]
    shape = input_shape if input_shape is not None else [batch, *TINY_CHW]
    graph = helper.make_graph(
        nodes,
        "tiny_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
        outputs,
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    props = TINY_METADATA if metadata is None else metadata
    helper.set_model_props(
        model, {**{key: json.dumps(value) for key, value in props.items()}, **(raw_props or {})}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data:
        onnx.save_model(
            model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0
        )
    else:
        onnx.save_model(model, str(path))
    return path


def test_tiny_model_contract_is_read(tmp_path):
    path = write_tiny_onnx(tmp_path / "model.onnx")
    contract = read_onnx_contract(path)
    assert contract.path == path and contract.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert contract.input_chw == TINY_CHW and contract.input_batch is None and not contract.has_qdq
    metadata = contract.metadata
    assert metadata.mean == TINY_METADATA["mean"] and metadata.std == TINY_METADATA["std"]
    assert metadata.input_size == TINY_SIZE and metadata.class_names == ["car", "truck"]
    assert metadata.output_stride == 4 and metadata.resize == "letterbox"  # defaults for absent keys
    assert contract.metadata == type(metadata).from_props(path, metadata.to_props())  # round trip


def test_qdq_nodes_and_a_fixed_batch_are_reported(tmp_path):
    assert read_onnx_contract(write_tiny_onnx(tmp_path / "qdq.onnx", qdq=True)).has_qdq
    assert read_onnx_contract(write_tiny_onnx(tmp_path / "fixed.onnx", batch=1)).input_batch == 1


def test_weights_stored_as_external_data_are_accepted(tmp_path, monkeypatch):
    path = write_tiny_onnx(tmp_path / "models" / "model.onnx", external_data=True)
    assert (tmp_path / "models" / "model.onnx.data").is_file()
    monkeypatch.chdir(tmp_path)  # the checker must look beside the model, not in the working directory
    assert read_onnx_contract(path).input_chw == TINY_CHW


def test_a_graph_the_onnx_checker_refuses_is_not_a_valid_model(tmp_path):
    path = write_tiny_onnx(tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    proto.graph.node.append(helper.make_node("Relu", ["undefined_tensor"], ["dangling"]))
    onnx.save_model(proto, str(path))
    with pytest.raises(ExportError, match="not a valid ONNX model") as excinfo:
        read_onnx_contract(path)
    assert str(path) in str(excinfo.value)


def _without(key: str) -> dict:
    return {k: v for k, v in TINY_METADATA.items() if k != key}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(output_names=("heatmap", "size", "offset")),
            r"outputs \['heatmap', 'size', 'offset'\] do not match the detector contract",
        ),
        (dict(input_shape=["batch", 3, "height", TINY_SIZE]), r"fixed C, H, W .* \('\?', 3, '\?', 16\)"),
        (dict(input_shape=["batch", 3, TINY_SIZE]), "must be NCHW"),
        (dict(metadata=_without("std")), r"metadata_props lacks \['std'\]"),
        (dict(metadata=_without("output_stride")), r"metadata_props lacks \['output_stride'\]"),
        (dict(raw_props={"mean": "[0.5, 0.5,"}), r"metadata_props\['mean'\] is not JSON"),
        (dict(metadata={**TINY_METADATA, "mean": [0.5]}), r"metadata_props\['mean'\] must be a list of 3"),
        (
            dict(metadata={**TINY_METADATA, "mean": [0.5, True, 0.5]}),
            r"\['mean'\] must be a list of 3 numbers",
        ),
        (
            dict(metadata={**TINY_METADATA, "std": [0.2, 0, 0.2]}),
            r"\['std'\] must be a list of 3 positive numbers",
        ),
        (
            dict(metadata={**TINY_METADATA, "input_size": "16"}),
            r"\['input_size'\] must be a positive integer",
        ),
        (
            dict(metadata={**TINY_METADATA, "input_size": 16.0}),
            r"\['input_size'\] must be a positive integer",
        ),
        (dict(metadata={**TINY_METADATA, "input_size": 32}), "input_size is 32 but input 'images' is 16x16"),
        (dict(metadata={**TINY_METADATA, "class_names": []}), r"\['class_names'\] must be a non-empty list"),
        (
            dict(metadata={**TINY_METADATA, "class_names": ["car", 7]}),
            r"\['class_names'\] must be a non-empty",
        ),
        (
            dict(metadata={**TINY_METADATA, "class_names": ["car"]}),
            "'heatmap' has 2 channels but .* 1 classes",
        ),
        (
            dict(metadata={**TINY_METADATA, "output_stride": 0}),
            r"\['output_stride'\] must be a positive integer",
        ),
        (dict(metadata={**TINY_METADATA, "pixel_scale": -1}), r"\['pixel_scale'\] must be a positive number"),
        # The C++ detector's reader refuses these too: one contract, one set of rules.
        (dict(metadata={**TINY_METADATA, "resize": "stretch"}), r"\['resize'\] must be \"letterbox\""),
        (
            dict(metadata={**TINY_METADATA, "color_order": "HSV"}),
            r"\['color_order'\] must be \"RGB\" or \"BGR\"",
        ),
        (
            dict(metadata={**TINY_METADATA, "pad_value": [114, 114, 300]}),
            r"\['pad_value'\] must be null or 3 integers in 0..255",
        ),
        (
            dict(metadata={**TINY_METADATA, "pad_value": [114.5, 114, 114]}),
            r"\['pad_value'\] must be null or 3 integers in 0..255",
        ),
    ],
)
def test_contract_violations_are_refused_naming_the_file(tmp_path, kwargs, message):
    path = write_tiny_onnx(tmp_path / "bad.onnx", **kwargs)
    with pytest.raises(ExportError, match=message) as excinfo:
        read_onnx_contract(path)
    assert str(path) in str(excinfo.value)
