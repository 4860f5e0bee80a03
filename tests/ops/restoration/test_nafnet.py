"""NAFNet: shapes, identity at initialisation, LayerNorm2d, published sizes, ONNX export."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from ops.restoration.nafnet import (
    PUBLISHED_SIZES,
    LayerNorm2d,
    NAFBlock,
    NAFNet,
    NAFNetConfig,
    SimpleGate,
    conv_macs,
    count_parameters,
)

# DESIGN.md, "Restoration (seed 003)": millions of parameters and conv GMACs at 256x256.
DESIGN_SIZES = {
    "NAFNet SIDD w16": (7.4, 4.1),
    "NAFNet SIDD w32": (29.2, 16.1),
    "NAFNet GoPro w32": (17.1, 16.0),
}
# Four levels (pads to 16) but one block each: exercises the padding at test speed.
TINY = NAFNetConfig(width=8, enc_blocks=(1, 1, 1, 1), middle_blocks=1, dec_blocks=(1, 1, 1, 1))


def randomise_residual_scales(model: torch.nn.Module) -> None:
    """Zero-initialised beta/gamma make every block the identity; give them values so the
    blocks (and their padding-sensitive convs) take part in the comparisons."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


@pytest.fixture(scope="module")
def tiny_model() -> NAFNet:
    torch.manual_seed(0)
    model = NAFNet(TINY).eval()
    randomise_residual_scales(model)
    return model


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------


def test_published_configurations() -> None:
    sidd = NAFNetConfig.sidd(width=32)
    assert sidd.width == 32
    assert (sidd.enc_blocks, sidd.middle_blocks, sidd.dec_blocks) == ((2, 2, 4, 8), 12, (2, 2, 2, 2))
    gopro = NAFNetConfig.gopro(width=32)
    assert (gopro.enc_blocks, gopro.middle_blocks, gopro.dec_blocks) == ((1, 1, 1, 28), 1, (1, 1, 1, 1))
    assert NAFNetConfig() == NAFNetConfig.sidd(width=16)
    assert NAFNetConfig(enc_blocks=[2, 2, 4, 8]) == NAFNetConfig()  # YAML lists become tuples
    assert NAFNetConfig().pad_multiple == 16 and NAFNet(TINY).pad_multiple == 16


@pytest.mark.parametrize(
    "kwargs",
    [
        {"enc_blocks": (1, 1), "dec_blocks": (1, 1, 1)},
        {"width": 0},
        {"in_channels": -1},
        {"middle_blocks": -1},
        {"enc_blocks": (1, -1), "dec_blocks": (1, 1)},
    ],
)
def test_bad_config_raises_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="NAFNetConfig"):
        NAFNetConfig(**kwargs)


def test_unknown_override_raises_value_error() -> None:
    with pytest.raises(ValueError, match="unknown NAFNetConfig field"):
        NAFNet(widht=8)


def test_checkpoint_names_match_nafnet() -> None:
    """The module names are NAFNet_arch.py's, so its published checkpoints load unchanged."""
    keys = set(NAFNet(TINY).state_dict())
    for key in (
        "intro.weight",
        "encoders.0.0.norm1.weight",
        "encoders.0.0.sca.1.weight",
        "encoders.0.0.beta",
        "downs.3.weight",
        "middle_blks.0.conv5.bias",
        "ups.0.0.weight",
        "decoders.3.0.gamma",
        "ending.bias",
    ):
        assert key in keys
    assert "ups.0.0.bias" not in keys


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def test_layer_norm_2d_equals_layer_norm_over_channels() -> None:
    torch.manual_seed(0)
    norm = LayerNorm2d(6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 6, 9, 11) * 3 + 1
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)


def test_simple_gate_multiplies_channel_halves() -> None:
    x = torch.randn(2, 8, 3, 5)
    torch.testing.assert_close(SimpleGate()(x), x[:, :4] * x[:, 4:])


def test_nafblock_is_identity_at_initialisation() -> None:
    torch.manual_seed(0)
    block = NAFBlock(8)
    assert not block.beta.any() and not block.gamma.any()
    assert block.beta.shape == block.gamma.shape == (1, 8, 1, 1)
    x = torch.randn(2, 8, 7, 9)
    assert torch.equal(block(x), x)
    with torch.no_grad():
        block.beta.fill_(1.0)
    assert not torch.allclose(block(x), x)


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 64, 48), (1, 3, 1, 17)])
def test_output_shape_equals_input_shape(tiny_model: NAFNet, shape: tuple[int, ...]) -> None:
    with torch.no_grad():
        assert tiny_model(torch.rand(shape)).shape == shape


def test_padding_is_zero_bottom_right_and_cropped_back(tiny_model: NAFNet) -> None:
    """An odd-sized input gives the top-left crop of the output for its zero-padded version."""
    x = torch.rand(1, 3, 37, 53)
    padded = F.pad(x, (0, 64 - 53, 0, 48 - 37))
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(x), tiny_model(padded)[:, :, :37, :53])


def test_global_residual_with_identity_blocks() -> None:
    """With every block the identity (fresh beta/gamma), only the convs of the U-Net's
    resampling path act: output = input + ending(...). Spelled out for a one-level net."""
    torch.manual_seed(0)
    model = NAFNet(width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,)).eval()
    x = torch.rand(1, 3, 6, 10)
    with torch.no_grad():
        features = model.intro(x)
        expected = x + model.ending(model.ups[0](model.downs[0](features)) + features)
        torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 1, 32, 32), (1, 3, 1, 32, 32)])
def test_wrong_input_shape_raises_value_error(tiny_model: NAFNet, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny_model(torch.rand(shape))


# --------------------------------------------------------------------------------------
# Published sizes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DESIGN_SIZES))
def test_parameter_counts_match_published(name: str) -> None:
    assert PUBLISHED_SIZES[name][2:] == DESIGN_SIZES[name]
    millions = count_parameters(NAFNet(NAFNetConfig.published(name))) / 1e6
    assert millions == pytest.approx(DESIGN_SIZES[name][0], rel=0.02)


def test_macs_match_published_sidd_w16() -> None:
    # One forward at 256x256; the w32 models are checked by benchmarks/restorer_size.py.
    torch.manual_seed(0)
    gmacs = conv_macs(NAFNet(NAFNetConfig.sidd(width=16)), 256, 256) / 1e9
    assert gmacs == pytest.approx(DESIGN_SIZES["NAFNet SIDD w16"][1], rel=0.05)


def test_conv_macs_count_the_padded_input() -> None:
    model = NAFNet(TINY)
    assert conv_macs(model, 33, 47) == conv_macs(model, 48, 48) > conv_macs(model, 32, 48)


# --------------------------------------------------------------------------------------
# ONNX export with dynamic batch, height and width
# --------------------------------------------------------------------------------------


# torch 2.13's exporter warns about its own pytree internals (LeafSpec); nothing to act on.
@pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")
def test_onnx_export_dynamic_height_and_width_matches_pytorch() -> None:
    torch.manual_seed(0)
    model = NAFNet(width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1)).eval()
    randomise_residual_scales(model)
    dim = torch.export.Dim
    program = torch.onnx.export(
        model,
        (torch.rand(1, 3, 40, 56),),
        dynamo=True,
        input_names=["images"],
        output_names=["restored"],
        dynamic_shapes={"images": {0: dim("batch", min=1), 2: dim("height", min=1), 3: dim("width", min=1)}},
        opset_version=18,
        verbose=False,
    )
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)

    def dims(value: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [(v.name, dims(v)) for v in proto.graph.input] == [("images", ["batch", 3, "height", "width"])]
    assert [(v.name, dims(v)) for v in proto.graph.output] == [("restored", ["batch", 3, "height", "width"])]

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 40, 56), (2, 3, 33, 65)]:
        x = torch.rand(shape)
        with torch.no_grad():
            expected = model(x).numpy()
        (restored,) = session.run(["restored"], {"images": x.numpy()})
        assert restored.shape == shape
        assert np.abs(restored - expected).max() < 1e-4
