"""NAFNet: the default convolutional restorer (SIDD denoising, GOPRO deblurring).

A re-implementation of megvii-research/NAFNet's ``NAFNet_arch.py`` (Chen et al., "Simple
Baselines for Image Restoration", ECCV 2022) with its ``state_dict`` keys and shapes, so its
checkpoints should load unchanged (module names ``intro``, ``encoders``, ``downs``,
``middle_blks``, ``ups``, ``decoders``, ``ending``; in a block ``conv1``..``conv5``, ``sca``,
``norm1``/``norm2``, ``beta``/``gamma``). It differs only where the original cannot be
exported to ONNX with dynamic height and width:

- :class:`LayerNorm2d` is written with plain tensor ops (NAFNet's is a custom
  ``autograd.Function``, which the ONNX exporters cannot trace through);
- the padding to a multiple of ``2 ** levels`` is computed as ``ceil(h / m) * m - h``, a
  form the exporter's symbolic shapes can prove is a multiple of ``m`` (see ``_pad``), and
  the crop back uses ``narrow`` so the exported output is (batch, C, height, width).

Shapes of the SIDD configuration at width ``w`` (input (B, 3, H, W), H and W multiples of 16;
other sizes are zero-padded at the bottom/right and cropped back)::

    module          operation                                           output
    intro           Conv3x3 3->w                                        (B, w, H, W)
    encoders[0]     2 x NAFBlock(w), then downs[0] Conv2x2 s2 w->2w     (B, 2w, H/2, W/2)
    encoders[1]     2 x NAFBlock(2w), then downs[1]                     (B, 4w, H/4, W/4)
    encoders[2]     4 x NAFBlock(4w), then downs[2]                     (B, 8w, H/8, W/8)
    encoders[3]     8 x NAFBlock(8w), then downs[3]                     (B, 16w, H/16, W/16)
    middle_blks     12 x NAFBlock(16w)                                  (B, 16w, H/16, W/16)
    ups[0]          Conv1x1 16w->32w (no bias) + PixelShuffle(2)        (B, 8w, H/8, W/8)
                    + encoders[3]'s output, then decoders[0] 2 x NAFBlock
    ...             three more levels, channels halving                 (B, w, H, W)
    ending          Conv3x3 w->3, + the (padded) input                  (B, 3, H, W)

The GOPRO configuration has the same levels with (1, 1, 1, 28) encoder blocks, 1 middle
block and (1, 1, 1, 1) decoder blocks. A block at 8w channels and 1/8 resolution costs the
same MACs as one at 16w and 1/16 (MACs grow with channels squared times pixels) but has a
quarter of the parameters, which is why GoPro w32 has ~16 GMACs like SIDD w32 with 17.1 M
parameters instead of 29.2 M.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ops.errors import ConfigError
from ops.io import is_int

# NAFNet's published block counts: (encoder blocks per level, middle blocks, decoder blocks).
SIDD_BLOCKS = ((2, 2, 4, 8), 12, (2, 2, 2, 2))
GOPRO_BLOCKS = ((1, 1, 1, 28), 1, (1, 1, 1, 1))
# Published sizes (DESIGN.md, "Restoration (seed 003)"): name -> (configuration, width,
# millions of parameters, conv GMACs at 256x256). The tests and benchmarks/restorer_size.py
# check the implementation against them (measured: within 0.4 % and 0.7 %).
PUBLISHED_SIZES: dict[str, tuple[str, int, float, float]] = {
    "NAFNet SIDD w16": ("sidd", 16, 7.4, 4.1),
    "NAFNet SIDD w32": ("sidd", 32, 29.2, 16.1),
    "NAFNet GoPro w32": ("gopro", 32, 17.1, 16.0),
}
# NAFNet's (and BasicSR's) LayerNorm2d epsilon; larger than nn.LayerNorm's 1e-5.
LAYER_NORM_EPS = 1e-6


class RestorerConfigError(ConfigError, ValueError):
    """An invalid :class:`NAFNetConfig` value: a :class:`~ops.errors.ConfigError` (the values
    come from ``params.yaml``) that is also the conventional ``ValueError``."""


@dataclass(frozen=True)
class NAFNetConfig:
    """Everything that shapes a :class:`NAFNet`; the defaults are the SIDD model at width 16.

    ``enc_blocks[i]`` / ``dec_blocks[i]`` are the NAFBlocks of encoder / decoder level ``i``
    (one level per halving of the resolution, so the input is padded to a multiple of
    ``2 ** len(enc_blocks)``); ``middle_blocks`` work at the lowest resolution. Channels
    double at every level: ``width * 2 ** len(enc_blocks)`` in the middle.
    ``in_channels`` is both the input's and the output's channel count (global residual).
    """

    width: int = 16
    enc_blocks: tuple[int, ...] = SIDD_BLOCKS[0]
    middle_blocks: int = SIDD_BLOCKS[1]
    dec_blocks: tuple[int, ...] = SIDD_BLOCKS[2]
    in_channels: int = 3

    def __post_init__(self) -> None:
        # YAML gives lists; store tuples so configs compare and hash by value.
        object.__setattr__(self, "enc_blocks", tuple(self.enc_blocks))
        object.__setattr__(self, "dec_blocks", tuple(self.dec_blocks))
        for name in ("width", "in_channels"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise RestorerConfigError(f"NAFNetConfig.{name} must be an integer >= 1, got {value!r}")
        if not is_int(self.middle_blocks) or self.middle_blocks < 0:
            raise RestorerConfigError(
                f"NAFNetConfig.middle_blocks must be an integer >= 0, got {self.middle_blocks!r}"
            )
        for name in ("enc_blocks", "dec_blocks"):
            blocks = getattr(self, name)
            if not all(is_int(n) and n >= 0 for n in blocks):
                raise RestorerConfigError(
                    f"NAFNetConfig.{name} must be integers >= 0 (blocks per level), got {blocks!r}"
                )
        if len(self.enc_blocks) != len(self.dec_blocks):
            raise RestorerConfigError(
                "NAFNetConfig.enc_blocks and dec_blocks must have one entry per level each, got "
                f"{len(self.enc_blocks)} and {len(self.dec_blocks)}: {self.enc_blocks!r}, {self.dec_blocks!r}"
            )

    @property
    def pad_multiple(self) -> int:
        """Input sizes are padded to a multiple of this: one halving per encoder level."""
        return 2 ** len(self.enc_blocks)

    @classmethod
    def sidd(cls, width: int = 32, in_channels: int = 3) -> NAFNetConfig:
        """NAFNet's SIDD (denoising) configuration: enc (2, 2, 4, 8), middle 12, dec (2, 2, 2, 2).

        Width 32 by default, the smallest published SIDD checkpoint (the class default,
        width 16, is the paper's small ablation model).
        """
        enc, middle, dec = SIDD_BLOCKS
        return cls(width=width, enc_blocks=enc, middle_blocks=middle, dec_blocks=dec, in_channels=in_channels)

    @classmethod
    def gopro(cls, width: int = 32, in_channels: int = 3) -> NAFNetConfig:
        """NAFNet's GoPro (deblurring) configuration: enc (1, 1, 1, 28), middle 1, dec (1, 1, 1, 1).

        Width 32 by default, the smallest published GoPro checkpoint.
        """
        enc, middle, dec = GOPRO_BLOCKS
        return cls(width=width, enc_blocks=enc, middle_blocks=middle, dec_blocks=dec, in_channels=in_channels)

    @classmethod
    def published(cls, name: str) -> NAFNetConfig:
        """The configuration of a :data:`PUBLISHED_SIZES` entry, e.g. ``"NAFNet SIDD w32"``."""
        if name not in PUBLISHED_SIZES:
            raise RestorerConfigError(f"unknown published NAFNet {name!r}; known: {sorted(PUBLISHED_SIZES)}")
        kind, width, _, _ = PUBLISHED_SIZES[name]
        return cls.sidd(width) if kind == "sidd" else cls.gopro(width)


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW map, each pixel normalised on its own.

    Written with plain differentiable ops so both ONNX exporters trace it (NAFNet's is a
    custom ``autograd.Function`` with a hand-written backward, which they cannot). Equal to
    ``F.layer_norm`` on the NHWC permutation; the variance is the biased one, as there.

    The exported graph keeps the ReduceMean / Sub / Pow / ReduceMean / Sqrt / Div pattern:
    TensorRT FP16 engines of NAFNet-style nets give NaN or garbage when that pattern runs in
    FP16 (the squares overflow; NVIDIA/TensorRT #4338, #3897, #3726), so those layers must
    be pinned to FP32 when building an FP16 engine (DESIGN.md, "Restoration (seed 003)").
    """

    def __init__(self, channels: int, eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=1, keepdim=True)
        centred = x - mean
        var = centred.pow(2).mean(dim=1, keepdim=True)
        normalised = centred / torch.sqrt(var + self.eps)
        return normalised * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class SimpleGate(nn.Module):
    """NAFNet's activation: split the channels in two halves and multiply them (2c -> c)."""

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return x1 * x2


class NAFBlock(nn.Module):
    """NAFNet's block: two pre-norm residual branches without nonlinear activations.

    Branch 1 (spatial mixing): LN -> 1x1 (c -> 2c) -> 3x3 depthwise (2c) -> SimpleGate (c)
    -> simplified channel attention ``x * conv1x1(avgpool(x))`` (no sigmoid) -> 1x1 (c -> c),
    added as ``x + branch * beta``. Branch 2 (channel mixing, the FFN): LN -> 1x1 (c -> 2c)
    -> SimpleGate -> 1x1 (c -> c), added as ``y + branch * gamma``. ``beta`` and ``gamma``
    are per-channel (1, c, 1, 1) and start at zero, so a fresh block is the identity and a
    deep stack trains like a shallow one at first.
    """

    def __init__(self, channels: int, dw_expand: int = 2, ffn_expand: int = 2) -> None:
        super().__init__()
        dw_channels = channels * dw_expand
        ffn_channels = channels * ffn_expand
        self.norm1 = LayerNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, dw_channels, 1)
        self.conv2 = nn.Conv2d(dw_channels, dw_channels, 3, padding=1, groups=dw_channels)
        self.sg = SimpleGate()
        # AdaptiveAvgPool2d(1) as in NAFNet: torch.export decomposes it to a mean over H and W,
        # so the ONNX graph has the same ReduceMean as x.mean(dim=(2, 3), keepdim=True) would
        # (checked, torch 2.13, dynamic H and W) and the checkpoints' ``sca.1`` keys still fit.
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw_channels // 2, dw_channels // 2, 1))
        self.conv3 = nn.Conv2d(dw_channels // 2, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.conv4 = nn.Conv2d(channels, ffn_channels, 1)
        self.conv5 = nn.Conv2d(ffn_channels // 2, channels, 1)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        branch = self.sg(self.conv2(self.conv1(self.norm1(x))))
        branch = self.conv3(branch * self.sca(branch))
        y = x + branch * self.beta
        branch = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + branch * self.gamma


def _blocks(channels: int, count: int) -> nn.Sequential:
    return nn.Sequential(*(NAFBlock(channels) for _ in range(count)))


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------


class NAFNet(nn.Module):
    """U-Net of NAFBlocks with a global residual: restored = input + ending(features).

    ``NAFNet()`` is the SIDD model at width 16; pass a :class:`NAFNetConfig`, keyword
    overrides, or both (``NAFNet(NAFNetConfig.gopro(), width=16)``). ``forward`` takes a
    float (B, C, H, W) image in 0..1 of any H and W and returns the restored image of the
    same shape. The output is not clamped to 0..1: clamping would zero the gradient of
    every out-of-range pixel in training (NAFNet does not clamp either); evaluation clamps
    before PSNR/SSIM and consumers clamp before quantising to uint8.
    """

    def __init__(self, config: NAFNetConfig | None = None, **overrides: object) -> None:
        super().__init__()
        self.config = _resolve_config(config, overrides)
        cfg = self.config
        self.pad_multiple: int = cfg.pad_multiple
        self.intro = nn.Conv2d(cfg.in_channels, cfg.width, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        channels = cfg.width
        for count in cfg.enc_blocks:
            self.encoders.append(_blocks(channels, count))
            self.downs.append(nn.Conv2d(channels, 2 * channels, 2, stride=2))
            channels *= 2
        self.middle_blks = _blocks(channels, cfg.middle_blocks)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for count in cfg.dec_blocks:
            # 1x1 to 2c channels, then PixelShuffle(2) turns 4 channels into a 2x2 patch: c/2 out.
            up = nn.Sequential(nn.Conv2d(channels, 2 * channels, 1, bias=False), nn.PixelShuffle(2))
            self.ups.append(up)
            channels //= 2
            self.decoders.append(_blocks(channels, count))
        self.ending = nn.Conv2d(cfg.width, cfg.in_channels, 3, padding=1)

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) float image in 0..1 -> the restored (B, C, H, W), not clamped."""
        # Python checks on the rank and the static channel count: evaluated once while
        # tracing, they leave nothing in an exported graph.
        if images.dim() != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(
                f"NAFNet expects a (B, {self.config.in_channels}, H, W) float image, "
                f"got shape {tuple(images.shape)}"
            )
        height, width = images.shape[2], images.shape[3]
        x = _pad(images, self.pad_multiple)
        padded = x
        x = self.intro(x)
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips), strict=True):
            x = decoder(up(x) + skip)
        x = self.ending(x) + padded
        # narrow, not x[:, :, :height, :width]: the exported output's dims are then the
        # input's own symbols (height, width) rather than Min(height, 16*((height + 15)//16)).
        return x.narrow(2, 0, height).narrow(3, 0, width)


def _pad(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad the bottom and right of ``x`` to a multiple of ``multiple`` (NAFNet's padding).

    The padded size is written as ``ceil(h / m) * m`` rather than ``h + (-h) % m`` (NAFNet's
    ``(m - h % m) % m``): both are equal, but with symbolic sizes (``torch.export`` with
    dynamic H and W) only the first is visibly a multiple of ``m``, which is what lets the
    exporter prove that every 2x down / PixelShuffle up round trip restores the skip's size.
    With the modulo form, torch 2.13's export of a 4-level model fails ("Cannot create Dim
    with inconsistent min=1, max=-oo"); a 2-level one still exports, with a Mod node.
    """
    height, width = x.shape[-2], x.shape[-1]
    pad_h = (height + multiple - 1) // multiple * multiple - height
    pad_w = (width + multiple - 1) // multiple * multiple - width
    return F.pad(x, (0, pad_w, 0, pad_h))


def _resolve_config(config: NAFNetConfig | None, overrides: dict[str, object]) -> NAFNetConfig:
    known = {f.name for f in dataclasses.fields(NAFNetConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise RestorerConfigError(f"unknown NAFNetConfig field(s) {unknown}; known fields: {sorted(known)}")
    if config is None:
        return NAFNetConfig(**overrides)  # type: ignore[arg-type]
    return dataclasses.replace(config, **overrides)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Model statistics
# --------------------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters (trainable or not), including LayerNorm and beta/gamma."""
    return sum(p.numel() for p in model.parameters())


def conv_macs(model: nn.Module, height: int, width: int) -> int:
    """Multiply-accumulates of the Conv2d layers in one forward pass at batch 1, H x W input.

    Counted with forward hooks on a real forward pass (so the padding to ``pad_multiple``
    is included): each output element of a conv sums (C_in / groups) x kh x kw products.
    LayerNorm, SimpleGate, the attention multiply, pooling, bias and residual additions are
    left out. NAFNet's published GMACs come from ptflops, which also adds the conv biases
    and the pooling (well under 1 % here); the counts agree within 1 %.
    A model built on the ``meta`` device (``with torch.device("meta"): NAFNet(...)``) is
    counted on shapes alone, exactly and in milliseconds per layer, even at 1280x720.
    """

    def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int:
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw

    return hooked_macs(model, nn.Conv2d, count, height, width)


def hooked_macs(
    model: nn.Module,
    module_type: type[nn.Module],
    count: Callable[[nn.Module, tuple[Tensor, ...], Tensor], int],
    height: int,
    width: int,
) -> int:
    """The sum of ``count(module, inputs, output)`` over every ``module_type`` module in one
    batch-1 forward pass of ``model`` at ``height`` x ``width`` (eval mode, no gradients;
    the model's mode is restored). The counters of conv and attention MACs share it."""
    macs = 0

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal macs
        macs += count(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, module_type)]
    reference = next(model.parameters())
    channels = getattr(getattr(model, "config", None), "in_channels", 3)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, channels, height, width, dtype=reference.dtype, device=reference.device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return macs
