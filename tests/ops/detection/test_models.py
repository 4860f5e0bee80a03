"""TrafficQuantizerNet: stage shapes from the design table, exact parameter count, options.

Full-size (512x512, width 1.0) forward passes cost ~0.3 s each on a 2-core CPU, so only the
two stage-shape tests run them; everything else uses width-reduced models.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ops.detection.model import (
    ModelConfigError,
    TrafficNetConfig,
    TrafficQuantizerNet,
    count_parameters,
    estimate_gflops,
    scale_channels,
)
from ops.errors import ConfigError

# Submodule whose output is each row of the design table (DESIGN.md, seed 000). The stem
# conv row is the stem's ReLU output (the backbone keeps torchvision's conv1/bn1/relu).
STAGE_MODULES = {
    "stem conv": "backbone.relu",
    "stem pool": "backbone.maxpool",
    "layer1": "backbone.layer1",
    "layer2": "backbone.layer2",
    "layer3": "backbone.layer3",
    "layer4": "backbone.layer4",
    "decoder": "decoder",
}


def expected_stage_shapes(batch: int, num_classes: int) -> dict[str, tuple[int, ...]]:
    """The design table at 512x512 input."""
    return {
        "stem conv": (batch, 64, 256, 256),
        "stem pool": (batch, 64, 128, 128),
        "layer1": (batch, 64, 128, 128),
        "layer2": (batch, 128, 64, 64),
        "layer3": (batch, 256, 32, 32),
        "layer4": (batch, 512, 16, 16),
        "decoder": (batch, 64, 128, 128),
        "heatmap": (batch, num_classes, 128, 128),
        "wh": (batch, 2, 128, 128),
        "offset": (batch, 2, 128, 128),
    }


def run_with_stage_hooks(
    model: nn.Module, images: torch.Tensor
) -> tuple[dict[str, tuple[int, ...]], dict[str, torch.Tensor]]:
    """Forward ``images`` recording the output shape of every stage in STAGE_MODULES."""
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for stage, name in STAGE_MODULES.items():

        def hook(_m: nn.Module, _i: object, out: torch.Tensor, stage: str = stage) -> None:
            shapes[stage] = tuple(out.shape)

        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.inference_mode():
            outputs = model(images)
    finally:
        for handle in handles:
            handle.remove()
    for key, value in outputs.items():
        shapes[key] = tuple(value.shape)
    return shapes, outputs


@pytest.mark.parametrize(("num_classes", "batch"), [(1, 1), (4, 2)])
def test_stage_shapes_match_design_table(num_classes: int, batch: int) -> None:
    torch.manual_seed(0)
    model = TrafficQuantizerNet(num_classes=num_classes).eval()
    shapes, outputs = run_with_stage_hooks(model, torch.randn(batch, 3, 512, 512))
    assert shapes == expected_stage_shapes(batch, num_classes)
    assert list(outputs) == ["heatmap", "wh", "offset"]  # the ONNX output order relies on it
    assert model.output_stride == 4


# --- exact parameter count, written out from the architecture -----------------------------


def conv_params(c_in: int, c_out: int, k: int, bias: bool = False) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def bn_params(c: int) -> int:
    return 2 * c  # weight and bias (running stats are buffers, not parameters)


def basic_block_params(c_in: int, c_out: int, stride: int = 1) -> int:
    params = conv_params(c_in, c_out, 3) + bn_params(c_out)
    params += conv_params(c_out, c_out, 3) + bn_params(c_out)
    if stride != 1 or c_in != c_out:  # 1x1 projection shortcut
        params += conv_params(c_in, c_out, 1) + bn_params(c_out)
    return params


def expected_default_parameters(num_classes: int) -> int:
    stem = conv_params(3, 64, 7) + bn_params(64)  # 9,408 + 128
    layer1 = basic_block_params(64, 64) * 2  # 2 x 73,984
    layer2 = basic_block_params(64, 128, 2) + basic_block_params(128, 128)  # 230,144 + 295,424
    layer3 = basic_block_params(128, 256, 2) + basic_block_params(256, 256)  # 919,040 + 1,180,672
    layer4 = basic_block_params(256, 512, 2) + basic_block_params(512, 512)  # 3,673,088 + 4,720,640
    backbone = stem + layer1 + layer2 + layer3 + layer4
    # torchvision's resnet18 has 11,689,512 parameters; its fc (512*1000 + 1000) is dropped.
    assert backbone == 11_689_512 - 513_000 == 11_176_512
    decoder_1 = conv_params(512, 256, 4) + bn_params(256)  # 2,097,152 + 512
    decoder_2 = conv_params(256, 128, 4) + bn_params(128)  # 524,288 + 256
    decoder_3 = conv_params(128, 64, 4) + bn_params(64)  # 131,072 + 128
    decoder = decoder_1 + decoder_2 + decoder_3
    assert decoder == 2_753_408

    def head(c_out: int) -> int:
        return conv_params(64, 64, 3, bias=True) + conv_params(64, c_out, 1, bias=True)

    heads = head(num_classes) + head(2) + head(2)  # (36,928 + 65 C) + 2 x 37,058
    return backbone + decoder + heads


def test_default_parameter_count_is_exact() -> None:
    assert expected_default_parameters(1) == 14_041_029
    assert count_parameters(TrafficQuantizerNet()) == 14_041_029
    assert count_parameters(TrafficQuantizerNet(num_classes=4)) == expected_default_parameters(4)


def test_backbone_keeps_torchvision_parameter_names() -> None:
    keys = set(TrafficQuantizerNet(width_mult=0.25).state_dict())
    assert {"backbone.conv1.weight", "backbone.bn1.running_mean"} <= keys
    assert "backbone.layer2.0.downsample.0.weight" in keys
    assert not any(k.startswith("backbone.layer1.0.downsample") for k in keys)


# --- options ------------------------------------------------------------------------------


def test_two_up_decoder_has_output_stride_8() -> None:
    model = TrafficQuantizerNet(upsample=(True, True, False), width_mult=0.25).eval()
    assert model.output_stride == 8
    third = model.decoder.layers[2][0]
    assert isinstance(third, nn.Conv2d)
    assert (third.kernel_size, third.stride) == ((3, 3), (1, 1))
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 512, 512))
    assert out["heatmap"].shape == (1, 1, 64, 64)
    assert out["wh"].shape == out["offset"].shape == (1, 2, 64, 64)


def test_decoder_skips_keep_the_design_shapes_and_parameter_count() -> None:
    torch.manual_seed(0)
    model = TrafficQuantizerNet(decoder_skips=True).eval()
    shapes, _ = run_with_stage_hooks(model, torch.randn(1, 3, 512, 512))
    assert shapes == expected_stage_shapes(1, 1)
    assert count_parameters(model) == expected_default_parameters(1)  # plain additions


@pytest.mark.parametrize(
    ("upsample", "sources"),
    [((True, True, True), {0: 2, 1: 1, 2: 0}), ((True, True, False), {0: 2, 1: 1})],
)
def test_decoder_skips_add_the_backbone_map_of_the_same_resolution(
    upsample: tuple[bool, bool, bool], sources: dict[int, int]
) -> None:
    torch.manual_seed(0)
    model = TrafficQuantizerNet(width_mult=0.25, upsample=upsample, decoder_skips=True).eval()
    assert model.skip_sources == sources  # decoder layer -> backbone stage (layer1 is 0)
    images = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        stages = model.backbone.features(images)
        x = stages[-1]
        for index, layer in enumerate(model.decoder.layers):
            x = layer(x)
            if index in sources:
                x = x + stages[sources[index]]
        assert torch.equal(model.decoder(stages[-1], [stages[s] for s in sources.values()]), x)
        assert torch.equal(model(images)["heatmap"], model.heads(x)["heatmap"])
        without = TrafficQuantizerNet(width_mult=0.25, upsample=upsample).eval()
        without.load_state_dict(model.state_dict())
        assert not torch.allclose(without(images)["wh"], model(images)["wh"])


def test_default_decoder_layers_are_stride2_transposed_convs() -> None:
    model = TrafficQuantizerNet(width_mult=0.25)
    for layer in model.decoder.layers:
        conv = layer[0]
        assert isinstance(conv, nn.ConvTranspose2d)
        assert (conv.kernel_size, conv.stride, conv.padding) == ((4, 4), (2, 2), (1, 1))
        assert conv.bias is None


def test_width_mult_and_input_size() -> None:
    model = TrafficQuantizerNet(num_classes=3, input_size=256, width_mult=0.25).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 256, 256))
    assert out["heatmap"].shape == (2, 3, 64, 64)
    assert out["wh"].shape == out["offset"].shape == (2, 2, 64, 64)
    assert model.backbone.out_channels == 128
    assert model.decoder.out_channels == 16
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.in_channels != 3:
            assert module.in_channels % 8 == 0, module
            if module.out_channels not in (2, 3):  # prediction outputs: classes, wh, offset
                assert module.out_channels % 8 == 0, module


@pytest.mark.parametrize(
    ("channels", "width_mult", "expected"),
    [
        (64, 1.0, 64),
        (512, 1.0, 512),
        (64, 0.25, 16),
        (512, 0.25, 128),
        (64, 0.1, 8),
        (64, 0.3, 16),
        (64, 0.375, 24),
    ],
)
def test_scale_channels_rounds_to_multiples_of_8(
    channels: int, width_mult: float, expected: int
) -> None:
    assert scale_channels(channels, width_mult) == expected


def test_heatmap_is_a_probability_and_starts_at_the_centernet_prior() -> None:
    torch.manual_seed(0)
    model = TrafficQuantizerNet(num_classes=2, input_size=128, width_mult=0.25).eval()
    bias = model.heads.heatmap[-1].bias
    assert torch.allclose(bias, torch.full_like(bias, -2.19))
    with torch.inference_mode():
        heatmap = model(torch.randn(1, 3, 128, 128))["heatmap"]
    assert heatmap.min() > 0 and heatmap.max() < 1
    # sigmoid(-2.19) = 0.10: near-zero final weights keep the prior dominant at init.
    assert abs(heatmap.mean().item() - 0.1006) < 0.01


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    model = TrafficQuantizerNet(input_size=128, width_mult=0.25).eval()
    images = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        reference = model(images)
        model = model.to(memory_format=torch.channels_last)
        result = model(images.to(memory_format=torch.channels_last))
    for key in reference:
        torch.testing.assert_close(result[key], reference[key], rtol=1e-4, atol=1e-5)


# --- config -------------------------------------------------------------------------------


def test_default_config_is_the_seed_model() -> None:
    from ops.detection.model import TrafficQuantizerNet as Imported

    model = Imported()
    assert model.config == TrafficNetConfig(
        num_classes=1,
        input_size=512,
        width_mult=1.0,
        upsample=(True, True, True),
        backbone="resnet18",
        head_width=64,
    )
    assert model.output_stride == 4


def test_config_and_overrides_combine() -> None:
    base = TrafficNetConfig(num_classes=4, input_size=256, width_mult=0.25)
    model = TrafficQuantizerNet(base, num_classes=2)
    assert model.config == TrafficNetConfig(num_classes=2, input_size=256, width_mult=0.25)
    # params.yaml gives lists; the config stores a tuple so configs compare by value.
    listed = TrafficNetConfig(upsample=[True, True, False])  # type: ignore[arg-type]
    assert listed == TrafficNetConfig(upsample=(True, True, False))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_size", 500),
        ("input_size", 0),
        ("num_classes", 0),
        ("num_classes", True),
        ("width_mult", 0.0),
        ("width_mult", float("nan")),
        ("backbone", "hrnet_w18_missing"),
        ("upsample", (True, True)),
        ("upsample", (1, 1, 1)),
        ("head_width", 0),
        ("decoder_skips", 1),
    ],
)
def test_invalid_config_raises_value_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field) as excinfo:
        TrafficNetConfig(**{field: value})  # type: ignore[arg-type]
    assert isinstance(excinfo.value, ConfigError)  # the project's user-facing error type
    with pytest.raises(ValueError, match=field):
        TrafficQuantizerNet(**{field: value})


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(ModelConfigError, match="num_class"):
        TrafficQuantizerNet(num_class=3)


# --- statistics ---------------------------------------------------------------------------


def test_estimate_gflops_counts_conv_deconv_and_linear_macs() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8x8 output: 64 * 8 * (3*3*3) = 13,824 MACs
        nn.BatchNorm2d(8),  # not counted
        nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1),  # 8*8*8 inputs * 4*4*4 = 32,768
        nn.Conv2d(4, 4, 3, padding=1, groups=2),  # 16x16: 256 * 4 * 2*3*3 = 18,432
        nn.Flatten(),
        nn.Linear(4 * 16 * 16, 10),  # 1,024 * 10 = 10,240
    )
    model.train()
    assert estimate_gflops(model, 8) == pytest.approx(2 * (13_824 + 32_768 + 18_432 + 10_240) / 1e9)
    assert model.training  # mode restored
    assert all(not m._forward_hooks for m in model.modules())  # hooks removed


def test_estimate_gflops_of_default_model() -> None:
    # ResNet-18 is 1.82 GMACs at 224 (~9.5 at 512), decoder 3 x 0.537, heads ~1.8 GMACs.
    gflops = estimate_gflops(TrafficQuantizerNet(), 512)
    assert 25.0 < gflops < 26.5
