"""The HRNet backbone: stage shapes, fusion, parameter count, and the detector's unchanged
contract through ONNX export and INT8 quantisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ops.config import ModelConfig, QuantizeConfig
from ops.deploy.export import export_onnx, parity
from ops.deploy.optimize import quantize_int8
from ops.deploy.runtime import OUTPUT_NAMES, OnnxRuntimePredictor, TorchPredictor
from ops.detection.coco import load_coco_split
from ops.detection.data import InputNormalizer, detector_metadata, load_input_batches
from ops.detection.hrnet import ExchangeUnit, HRNetBackbone
from ops.detection.model import ModelConfigError, TrafficQuantizerNet
from ops.detection.traffic import quantize_settings
from ops.detection.training import build_detector, detector_signature, load_detector, save_detector
from ops.errors import CheckpointError
from tests.ops.deploy.test_export import with_trained_statistics

SIZE = 128
CLASSES = ["car", "truck", "bus", "pedestrian"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _model(**overrides) -> TrafficQuantizerNet:
    torch.manual_seed(0)
    values = dict(
        num_classes=4, input_size=SIZE, width_mult=0.25, head_width=16, backbone="hrnet", hrnet_width=8
    )
    return with_trained_statistics(TrafficQuantizerNet(**{**values, **overrides}))


def test_branches_run_at_strides_4_to_32_with_doubling_widths():
    backbone = HRNetBackbone(width=8, out_channels=16, stem_width=16).eval()
    with torch.no_grad():
        branches = backbone.branches(torch.randn(2, 3, 256, 192))
    assert [tuple(b.shape) for b in branches] == [
        (2, 8, 64, 48),
        (2, 16, 32, 24),
        (2, 32, 16, 12),
        (2, 64, 8, 6),
    ]
    assert tuple(backbone(torch.randn(1, 3, 256, 192)).shape) == (1, 16, 64, 48)


def test_every_output_branch_of_an_exchange_hears_every_input_branch():
    unit = ExchangeUnit([8, 16, 32]).eval()
    inputs = [torch.randn(1, w, 32 // 2**k, 32 // 2**k) for k, w in enumerate([8, 16, 32])]
    with torch.no_grad():
        base = unit(inputs)
        for j in range(3):
            nudged = [x.clone() for x in inputs]
            nudged[j] += 1.0
            outputs = unit(nudged)
            for i in range(3):
                assert not torch.equal(outputs[i], base[i]), f"branch {j} does not reach branch {i}"


def test_the_detector_keeps_its_output_contract_and_needs_no_decoder():
    model = _model()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, SIZE, SIZE))
    assert list(outputs) == list(OUTPUT_NAMES)
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        "heatmap": (2, 4, 32, 32),
        "wh": (2, 2, 32, 32),
        "offset": (2, 2, 32, 32),
    }
    assert model.output_stride == 4 and len(model.decoder.layers) == 0


def test_parameter_counts_of_the_full_size_and_demo_widths():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(TrafficQuantizerNet(backbone="hrnet", hrnet_width=32)) == 5_674_245  # W32, 1 class
    assert (
        count(
            TrafficQuantizerNet(
                backbone="hrnet", hrnet_width=8, width_mult=0.25, num_classes=4, head_width=32
            )
        )
        == 364_520
    )
    assert count(TrafficQuantizerNet()) == 14_041_029  # the seed's ResNet-18 model, for scale


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _model()
    path = tmp_path_factory.mktemp("hrnet") / "model.onnx"
    return model, export_onnx(model, detector_metadata(model, MEAN, STD, SIZE, CLASSES), path)


@pytest.fixture(scope="module")
def batches(tiny_dataset) -> list[np.ndarray]:
    split = load_coco_split(tiny_dataset, "val")
    return load_input_batches(split.images, SIZE, InputNormalizer(MEAN, STD), 4)


def test_onnx_runtime_matches_pytorch_on_real_images(exported, batches):
    model, path = exported
    report = parity(TorchPredictor(model), OnnxRuntimePredictor(path), batches)
    assert report["min_cosine"] > 0.99999
    assert report["max_abs_diff"] < 1e-4


def test_int8_runs_convolutions_fusion_adds_and_concat_in_integer(exported, batches, tmp_path):
    _, path = exported
    settings = quantize_settings(
        QuantizeConfig(
            calibration_images=8,
            calibration_method="minmax",
            per_channel=True,
            keep_outputs_float=True,
            exclude_nodes=[],
        )
    )
    report = quantize_int8(path, tmp_path / "int8.onnx", batches, settings)
    # every conv but the three heads' 1x1 outputs; the residual and exchange-unit sums; the concat
    assert report.executed_ops["QLinearConv"] == 75
    assert report.executed_ops["QLinearAdd"] == 40
    assert report.executed_ops["QLinearConcat"] == 1
    assert report.float_compute_ops == {"Conv": 3}
    quality = parity(OnnxRuntimePredictor(path), OnnxRuntimePredictor(report.path, "onnx-int8"), batches)
    assert quality["min_cosine"] > 0.95


def _cfg(**overrides) -> ModelConfig:
    values = dict(
        input_size=SIZE,
        width_mult=0.25,
        upsample=(True, True, True),
        backbone="hrnet",
        hrnet_width=8,
        head_width=16,
        decoder_skips=False,
        mean=MEAN,
        std=STD,
    )
    return ModelConfig(**{**values, **overrides})


def test_a_width_that_does_not_divide_into_8_channel_branches_is_refused():
    with pytest.raises(
        ValueError, match=r"hrnet_width\n.*multiple of 8: the branches have 12, 24, 48 and 96"
    ):
        _cfg(hrnet_width=12)
    with pytest.raises(ValueError, match="decoder_skips applies to resnet18 only"):
        _cfg(decoder_skips=True)
    with pytest.raises(ModelConfigError, match="multiple of 8"):
        TrafficQuantizerNet(backbone="hrnet", hrnet_width=18)


def test_a_checkpoint_of_one_backbone_loaded_as_the_other_names_both(tmp_path):
    hrnet_cfg = _cfg()
    path = save_detector(tmp_path / "model.pt", build_detector(hrnet_cfg, len(CLASSES)), hrnet_cfg, CLASSES)
    assert load_detector(path, hrnet_cfg).model_cfg.backbone == "hrnet"
    resnet_cfg = _cfg(backbone="resnet18")
    with pytest.raises(
        CheckpointError, match="model.backbone: checkpoint has 'hrnet', config has 'resnet18'"
    ):
        load_detector(path, resnet_cfg)
    # a ResNet checkpoint's signature has no hrnet_width, so files from before the field still load
    assert "hrnet_width" not in detector_signature(resnet_cfg, CLASSES)["model"]
