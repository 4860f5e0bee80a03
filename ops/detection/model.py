"""TrafficQuantizerNet: a CenterNet-style detector on a ResNet-18 backbone (seed 000).

One readable file, in the spirit of torchvision's ``resnet.py`` and nanoGPT's ``model.py``:
small modules whose shapes are obvious from their constructors, one config dataclass, no
indirection beyond a backbone registry.

Shapes of the default model (input 512x512, C classes, ``width_mult`` 1.0, "3UP")::

    module                  operation                                     output
    backbone.conv1/bn1/relu Conv7x7 s2 + BN + ReLU (stem conv)            (B, 64, 256, 256)
    backbone.maxpool        MaxPool 3x3 s2 (stem pool)                    (B, 64, 128, 128)
    backbone.layer1         2 x ResidualBlock                             (B, 64, 128, 128)
    backbone.layer2         2 x ResidualBlock, s2                         (B, 128, 64, 64)
    backbone.layer3         2 x ResidualBlock, s2                         (B, 256, 32, 32)
    backbone.layer4         2 x ResidualBlock, s2                         (B, 512, 16, 16)
    decoder                 3 x (ConvTranspose2d k4 s2 + BN + ReLU)       (B, 64, 128, 128)
                            [+ layer3 / layer2 / layer1 with decoder_skips]
    heads.heatmap           Conv3x3 + ReLU + Conv1x1, then Sigmoid        (B, C, 128, 128)
    heads.wh                Conv3x3 + ReLU + Conv1x1                      (B, 2, 128, 128)
    heads.offset            Conv3x3 + ReLU + Conv1x1                      (B, 2, 128, 128)

The backbone keeps torchvision's module names (``conv1``, ``bn1``, ``layer1.0.downsample``
...), so an ImageNet ResNet-18 ``state_dict`` (without ``fc``) loads into it unchanged.

Export and compile friendliness: ``forward`` has no data-dependent Python control flow and
no in-place tensor ops (``ReLU(inplace=False)``, ``out + identity``), the outputs come back
as a dict in the fixed order ``heatmap``, ``wh``, ``offset`` (the ONNX contract shared with
the C++ detector), and every op works in channels_last.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ops.errors import ConfigError
from ops.io import is_int

# CenterNet initialises the heatmap's last bias to -log((1 - p) / p) with prior p = 0.1, so
# training starts from "almost everything is background" and the focal loss is not swamped
# by the easy negatives of the first iterations.
HEATMAP_PRIOR_BIAS = -2.19
# Final prediction convs start near zero (CenterNet's ``fill_fc_weights``): a Kaiming init
# on a 1x1 conv with 1-2 outputs has std ~1 and would bury the -2.19 prior in noise.
HEAD_OUTPUT_INIT_STD = 1e-3
# Channel counts are rounded to this multiple: INT8 (VNNI / Tensor Core) kernels work on
# channel groups of 8 (or more), and odd widths fall back to slow paths.
CHANNEL_MULTIPLE = 8
# ResNet channel widths at width_mult 1.0, and the decoder's, from the seed's table.
RESNET_WIDTHS = (64, 128, 256, 512)
DECODER_WIDTHS = (256, 128, 64)
# The heads read a stride-4 map in the seed's "3UP" model; a backbone that keeps one skips the decoder.
TARGET_OUTPUT_STRIDE = 4


class ModelConfigError(ConfigError, ValueError):
    """An invalid :class:`TrafficNetConfig` value.

    A :class:`~ops.errors.ConfigError` (the project's user-facing error type, since the
    values come from ``params.yaml``) that is also a ``ValueError``, the conventional type
    for a bad argument.
    """


def scale_channels(channels: int, width_mult: float) -> int:
    """Scale a channel count by ``width_mult``, rounded to a multiple of 8 (at least 8).

    Multiples of 8 keep the small CPU-demo models on the fast INT8/FP16 kernel paths;
    ``width_mult`` 1.0 leaves the seed's 64/128/256/512 unchanged.
    """
    scaled = round(channels * width_mult / CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE
    return max(CHANNEL_MULTIPLE, scaled)


@dataclass(frozen=True)
class TrafficNetConfig:
    """Everything that shapes TrafficQuantizerNet; the defaults are the seed's model.

    ``input_size`` is the nominal square input (used for FLOP estimates, export and
    training crops); ``forward`` accepts any size that is a multiple of 32.
    ``upsample`` says which of the three decoder layers double the resolution: all three
    ("3UP", output stride 4) or e.g. ``(True, True, False)`` ("2UP", seed 004, stride 8).
    ``head_width`` is the hidden width of each prediction head and is not scaled by
    ``width_mult`` (CenterNet uses 64 for every backbone).
    ``decoder_skips`` adds the backbone's feature map of the same resolution to the output
    of each upsampling decoder layer (layer3, layer2, layer1 for "3UP"; their widths are
    the decoder's, so the skips are plain additions). The seed's decoder has none. Shapes
    are unchanged; on the demo model, 6 epochs: mAP@0.5 0.568 without, 0.863 with (measured).
    """

    num_classes: int = 1
    input_size: int = 512
    width_mult: float = 1.0
    upsample: tuple[bool, bool, bool] = (True, True, True)
    backbone: str = "resnet18"
    head_width: int = 64
    decoder_skips: bool = False
    hrnet_width: int = 32

    def __post_init__(self) -> None:
        # YAML gives lists; store a tuple so configs compare and hash by value.
        object.__setattr__(self, "upsample", tuple(self.upsample))
        if not is_int(self.num_classes) or self.num_classes < 1:
            raise ModelConfigError(
                f"TrafficNetConfig.num_classes must be an integer >= 1, got {self.num_classes!r}"
            )
        if not is_int(self.input_size) or self.input_size < 32 or self.input_size % 32:
            raise ModelConfigError(
                "TrafficNetConfig.input_size must be a positive multiple of 32 (the backbone's "
                f"stride), got {self.input_size!r}"
            )
        if (
            isinstance(self.width_mult, bool)
            or not isinstance(self.width_mult, (int, float))
            or not math.isfinite(self.width_mult)
            or self.width_mult <= 0
        ):
            raise ModelConfigError(
                f"TrafficNetConfig.width_mult must be a finite number > 0, got {self.width_mult!r}"
            )
        if len(self.upsample) != 3 or not all(isinstance(u, bool) for u in self.upsample):
            raise ModelConfigError(
                "TrafficNetConfig.upsample must be three booleans (one per decoder layer), "
                f"got {self.upsample!r}"
            )
        if self.backbone not in BACKBONES:
            raise ModelConfigError(
                f"TrafficNetConfig.backbone {self.backbone!r} is unknown; "
                f"known backbones: {sorted(BACKBONES)}"
            )
        if not isinstance(self.decoder_skips, bool):
            raise ModelConfigError(
                f"TrafficNetConfig.decoder_skips must be a boolean, got {self.decoder_skips!r}"
            )
        if not is_int(self.hrnet_width) or self.hrnet_width < 8 or self.hrnet_width % CHANNEL_MULTIPLE:
            raise ModelConfigError(
                f"TrafficNetConfig.hrnet_width must be a positive multiple of {CHANNEL_MULTIPLE} (its "
                f"branches have 1, 2, 4 and 8 times as many channels, each a multiple of {CHANNEL_MULTIPLE} "
                f"for the integer kernels), got {self.hrnet_width!r}"
            )
        if self.backbone == "hrnet" and self.decoder_skips:
            raise ModelConfigError(
                "TrafficNetConfig.decoder_skips applies to resnet18 only: the hrnet backbone keeps the "
                "stride-4 map itself and the detector has no decoder to add skips to"
            )
        if not is_int(self.head_width) or self.head_width < 1:
            raise ModelConfigError(
                f"TrafficNetConfig.head_width must be an integer >= 1, got {self.head_width!r}"
            )


# --------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, plus a shortcut, then ReLU.

    The shortcut is the identity, or a 1x1 conv + BN projection when the stride or the
    channel count changes (torchvision's ``downsample``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNetBackbone(nn.Module):
    """ResNet feature extractor without pooling head or ``fc``: (B,3,H,W) -> (B,C4,H/32,W/32).

    ``widths`` are the channels of layer1..layer4 (the stem uses ``widths[0]``), ``depths``
    the number of :class:`ResidualBlock` per layer; (2, 2, 2, 2) is ResNet-18.
    Backbones expose ``out_channels`` and ``output_stride`` for the decoder, and
    ``features`` (every stage's map, strides ``feature_strides``) for its skips.
    """

    output_stride = 32
    feature_strides = (4, 8, 16, 32)

    def __init__(
        self,
        widths: Sequence[int] = RESNET_WIDTHS,
        depths: Sequence[int] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError(f"ResNetBackbone needs 4 widths and 4 depths, got {widths}, {depths}")
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(widths[0], widths[0], depths[0], stride=1)
        self.layer2 = self._make_layer(widths[0], widths[1], depths[1], stride=2)
        self.layer3 = self._make_layer(widths[1], widths[2], depths[2], stride=2)
        self.layer4 = self._make_layer(widths[2], widths[3], depths[3], stride=2)
        self.out_channels = widths[3]
        self.feature_channels = tuple(widths)

    @staticmethod
    def _make_layer(in_channels: int, out_channels: int, depth: int, stride: int) -> nn.Sequential:
        blocks = [ResidualBlock(in_channels, out_channels, stride)]
        blocks += [ResidualBlock(out_channels, out_channels) for _ in range(depth - 1)]
        return nn.Sequential(*blocks)

    def features(self, x: Tensor) -> list[Tensor]:
        """The outputs of layer1..layer4 (strides 4, 8, 16, 32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            maps.append(x)
        return maps

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)[-1]


def resnet18_backbone(config: TrafficNetConfig) -> ResNetBackbone:
    """ResNet-18 layout with channels scaled by ``config.width_mult``."""
    widths = tuple(scale_channels(c, config.width_mult) for c in RESNET_WIDTHS)
    return ResNetBackbone(widths=widths, depths=(2, 2, 2, 2))


def hrnet_backbone(config: TrafficNetConfig) -> nn.Module:
    """HRNet (seed 002) with branches of ``hrnet_width`` x 1, 2, 4, 8 channels; its stem and its
    stride-4 output are as wide as the ResNet detector's stem and last decoder layer."""
    from ops.detection.hrnet import HRNetBackbone  # it builds on this module's blocks

    return HRNetBackbone(
        width=config.hrnet_width,
        out_channels=scale_channels(DECODER_WIDTHS[-1], config.width_mult),
        stem_width=scale_channels(RESNET_WIDTHS[0], config.width_mult),
    )


# The backbone seam: name -> builder. A builder returns an nn.Module mapping (B,3,H,W) to
# one feature map and exposing ``out_channels`` and ``output_stride`` (and, for decoder
# skips, ``features``, ``feature_strides`` and ``feature_channels``). A backbone whose output
# is already at stride 4 gets no decoder.
BACKBONES: dict[str, Callable[[TrafficNetConfig], nn.Module]] = {
    "resnet18": resnet18_backbone,
    "hrnet": hrnet_backbone,
}


# --------------------------------------------------------------------------------------
# Decoder and heads
# --------------------------------------------------------------------------------------


def decoder_layer(in_channels: int, out_channels: int, up: bool) -> nn.Sequential:
    """One decoder layer: x2 ConvTranspose2d(k4, s2, p1) + BN + ReLU, or, with ``up=False``,
    a resolution-keeping Conv3x3 s1 + BN + ReLU (the "2UP" third layer of seed 004)."""
    if up:
        conv: nn.Module = nn.ConvTranspose2d(
            in_channels, out_channels, 4, stride=2, padding=1, bias=False
        )
    else:
        conv = conv3x3(in_channels, out_channels)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU())


class Decoder(nn.Module):
    """Recover resolution from the backbone's bottleneck: three layers, each optionally x2.

    ``upsample[i]`` chooses whether layer ``i`` doubles the resolution; ``scale`` is the
    total upsampling factor (8 for "3UP", 4 for "2UP"). ``skip_layers`` lists the layers
    whose output gets a backbone map of the same shape added (see ``forward``).
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int] = DECODER_WIDTHS,
        upsample: Sequence[bool] = (True, True, True),
        skip_layers: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if len(widths) != len(upsample):
            raise ValueError(f"Decoder needs one upsample flag per layer: {widths}, {upsample}")
        channels = [in_channels, *widths]
        self.layers = nn.Sequential(
            *(decoder_layer(channels[i], channels[i + 1], up) for i, up in enumerate(upsample))
        )
        self.upsample = tuple(upsample)
        self.skip_layers = tuple(skip_layers)
        self.scale = 2 ** sum(self.upsample)
        self.out_channels = channels[-1]

    def forward(self, x: Tensor, skips: Sequence[Tensor] = ()) -> Tensor:
        """``skips[j]`` is added to the output of layer ``skip_layers[j]``."""
        if len(skips) != len(self.skip_layers):
            raise ValueError(f"Decoder expects {len(self.skip_layers)} skip maps, got {len(skips)}")
        added = dict(zip(self.skip_layers, skips, strict=True))
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in added:
                x = x + added[index]
        return x


def _head(in_channels: int, head_width: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, head_width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(head_width, out_channels, 1),
    )


class PredictionHeads(nn.Module):
    """The three parallel CenterNet heads on the decoder's map.

    ``heatmap``: per-class centre probabilities (Sigmoid applied here, so the exported
    graph's output is a probability); ``wh``: box width/height in output-map cells;
    ``offset``: sub-cell centre offset lost to the output stride.
    """

    def __init__(self, in_channels: int, num_classes: int, head_width: int = 64) -> None:
        super().__init__()
        self.heatmap = _head(in_channels, head_width, num_classes)
        self.wh = _head(in_channels, head_width, 2)
        self.offset = _head(in_channels, head_width, 2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {
            "heatmap": torch.sigmoid(self.heatmap(x)),
            "wh": self.wh(x),
            "offset": self.offset(x),
        }


# --------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------


class TrafficQuantizerNet(nn.Module):
    """CenterNet-style detector: backbone -> decoder -> heatmap / wh / offset heads.

    ``TrafficQuantizerNet()`` is the seed's model (512x512 input, one class, full width,
    "3UP", output stride 4). Pass a :class:`TrafficNetConfig`, keyword overrides, or both
    (``TrafficQuantizerNet(num_classes=4, input_size=256, width_mult=0.25)``).
    """

    def __init__(self, config: TrafficNetConfig | None = None, **overrides: object) -> None:
        super().__init__()
        self.config = _resolve_config(config, overrides)
        cfg = self.config
        self.backbone = BACKBONES[cfg.backbone](cfg)
        if self.backbone.output_stride == TARGET_OUTPUT_STRIDE:  # HRNet: nothing to recover
            widths, upsample = (), ()
        else:
            widths = tuple(scale_channels(c, cfg.width_mult) for c in DECODER_WIDTHS)
            upsample = cfg.upsample
        # decoder layer index -> backbone stage, for the skips (empty without them)
        self.skip_sources = _skip_sources(self.backbone, widths, upsample) if cfg.decoder_skips else {}
        self.decoder = Decoder(self.backbone.out_channels, widths, upsample, tuple(self.skip_sources))
        self.heads = PredictionHeads(self.decoder.out_channels, cfg.num_classes, cfg.head_width)
        # Stride of the output maps relative to the input: 32 / 8 = 4 for "3UP".
        self.output_stride: int = self.backbone.output_stride // self.decoder.scale
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for head in (self.heads.heatmap, self.heads.wh, self.heads.offset):
            nn.init.normal_(head[-1].weight, std=HEAD_OUTPUT_INIT_STD)
        nn.init.constant_(self.heads.heatmap[-1].bias, HEATMAP_PRIOR_BIAS)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) normalised RGB -> ``heatmap`` (B, C, H/s, W/s) in (0, 1), ``wh`` and
        ``offset`` (B, 2, H/s, W/s), with s = ``output_stride``; keys in that order."""
        if not self.skip_sources:
            return self.heads(self.decoder(self.backbone(images)))
        features = self.backbone.features(images)
        skips = [features[stage] for stage in self.skip_sources.values()]
        return self.heads(self.decoder(features[-1], skips))


def _skip_sources(
    backbone: nn.Module, widths: Sequence[int], upsample: Sequence[bool]
) -> dict[int, int]:
    """For each upsampling decoder layer, the backbone stage with its stride and width."""
    sources = {}
    stride = backbone.output_stride
    for index, (width, up) in enumerate(zip(widths, upsample, strict=True)):
        if not up:
            continue
        stride //= 2
        stage = backbone.feature_strides.index(stride)
        if backbone.feature_channels[stage] != width:
            raise ModelConfigError(
                f"decoder layer {index} has {width} channels but the backbone map of stride "
                f"{stride} has {backbone.feature_channels[stage]}: no skip can be added"
            )
        sources[index] = stage
    return sources


def _resolve_config(
    config: TrafficNetConfig | None, overrides: dict[str, object]
) -> TrafficNetConfig:
    known = {f.name for f in dataclasses.fields(TrafficNetConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ModelConfigError(
            f"unknown TrafficNetConfig field(s) {unknown}; known fields: {sorted(known)}"
        )
    if config is None:
        return TrafficNetConfig(**overrides)  # type: ignore[arg-type]
    return dataclasses.replace(config, **overrides)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Model statistics
# --------------------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters (trainable or not), e.g. for the model card."""
    return sum(p.numel() for p in model.parameters())


def estimate_gflops(model: nn.Module, input_size: int | tuple[int, int]) -> float:
    """GFLOPs of one forward pass at batch 1, counted as 2 x multiply-accumulates / 1e9.

    Written here with forward hooks because fvcore/thop are not dependencies. It counts
    the MACs of Conv2d, ConvTranspose2d and Linear layers only - they are >99% of the work
    in this model; BatchNorm, ReLU, pooling, Sigmoid and bias additions are ignored, as in
    the FLOP figures usually quoted for ResNets.
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    macs = 0

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            # Every output element sums (C_in / groups) x kh x kw products.
            kh, kw = module.kernel_size
            macs += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.ConvTranspose2d):
            # Every input element scatters into (C_out / groups) x kh x kw outputs.
            kh, kw = module.kernel_size
            macs += inputs[0].numel() * (module.out_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
    ]
    reference = next(model.parameters())
    was_training = model.training
    try:
        model.eval()  # no BatchNorm running-stat updates from the probe input
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width, dtype=reference.dtype, device=reference.device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return 2 * macs / 1e9
