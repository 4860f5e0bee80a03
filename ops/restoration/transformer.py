"""A Restormer-style transformer restorer: every pixel is a token, attention runs across channels.

A re-implementation of swz30/Restormer's ``restormer_arch.py`` (Zamir et al., "Restormer:
Efficient Transformer for High-Resolution Image Restoration", CVPR 2022) on the same U-Net
skeleton and forward contract as :class:`~ops.restoration.nafnet.NAFNet`, so the two are
interchangeable in training, export and INT8 quantisation. Its blocks are

- MDTA (multi-Dconv head transposed attention, :class:`ChannelAttention`): the attention map
  is (C/heads) x (C/heads) per head, between channels, computed over all H x W pixels. Its
  cost therefore grows linearly with the number of pixels, where spatial self-attention's
  (HW) x (HW) map would need ~850 G entries per head at 1280x720; here a 720p frame costs
  exactly 900 times a 32x32 one (padding aside) and runs at full resolution.
- GDFN (gated depthwise feed-forward network, :class:`GatedFeedForward`):
  ``gelu(x1) * x2`` after a 1x1 and a 3x3 depthwise convolution.

It differs from the original only where export needs it: LayerNorm is nafnet's
:class:`~ops.restoration.nafnet.LayerNorm2d` (plain ops, Restormer's epsilon 1e-5), the heads
are formed with ``reshape`` and a ``-1`` pixel axis rather than ``einops`` (whose patterns
need concrete sizes), and the input is padded and cropped back with nafnet's ``_pad`` /
``narrow`` (see there: symbolic shapes under ``torch.export``). Convolutions have no bias,
as in Restormer's published models.

Shapes at width ``w`` with three levels (input (B, 3, H, W), H and W multiples of 8; other
sizes are zero-padded at the bottom/right and cropped back)::

    module          operation                                           output
    intro           Conv3x3 3->w                                        (B, w, H, W)
    encoders[0]     enc_blocks[0] x block(w, heads[0]), then downs[0]:  (B, 2w, H/2, W/2)
                    Conv3x3 w->w/2 + PixelUnshuffle(2)
    encoders[1]     enc_blocks[1] x block(2w, heads[1]), then downs[1]  (B, 4w, H/4, W/4)
    encoders[2]     enc_blocks[2] x block(4w, heads[2]), then downs[2]  (B, 8w, H/8, W/8)
    middle_blks     middle_blocks x block(8w, heads[3])                 (B, 8w, H/8, W/8)
    ups[0]          Conv3x3 8w->16w + PixelShuffle(2), concatenated     (B, 4w, H/4, W/4)
                    with encoders[2]'s output (8w), reduces[0] Conv1x1
                    8w->4w, then decoders[0] dec_blocks[0] x block(4w)
    ups[1] ...      the same one level up                               (B, 2w, H/2, W/2)
    ups[2]          up to (B, w) + skip (w), concatenated, NOT reduced: (B, 2w, H, W)
                    decoders[2] and refinement work at 2w, heads[0]
    ending          Conv3x3 2w->3, + the (padded) input                 (B, 3, H, W)

``dec_blocks`` is listed in the order the decoders run, deepest level first (as in
:class:`~ops.restoration.nafnet.NAFNetConfig`). Restormer's published model is
``TransformerConfig.restormer()``: width 48, enc (4, 6, 6), middle 8, dec (6, 6, 4), heads
(1, 2, 4, 8), 4 refinement blocks, FFN expansion 2.66 (26.1 M parameters).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ops.io import is_int
from ops.restoration.nafnet import LayerNorm2d, RestorerConfigError, _pad, hooked_macs

# Restormer's WithBias_LayerNorm epsilon (nn.LayerNorm's default), not NAFNet's 1e-6.
RESTORMER_LAYER_NORM_EPS = 1e-5
# Restormer's GDFN expansion: hidden = int(2.66 * C), chosen there to match the parameters
# of a plain x4 FFN, since the gate doubles the first projection.
RESTORMER_FFN_EXPAND = 2.66
# F.normalize's default floor on the L2 norm: a token (one channel over all pixels) that is
# zero everywhere, e.g. a padded-only map, stays zero instead of dividing by zero.
NORMALIZE_EPS = 1e-12


@dataclass(frozen=True)
class TransformerConfig:
    """Everything that shapes a :class:`TransformerRestorer`; the defaults are a small model.

    ``enc_blocks[i]`` are the transformer blocks of encoder level ``i`` (one level per halving
    of the resolution, so the input is padded to a multiple of ``2 ** len(enc_blocks)``);
    ``middle_blocks`` work at the lowest resolution; ``dec_blocks`` are the decoder levels in
    the order they run, deepest first; ``refinement_blocks`` follow at full resolution.
    Channels double at every level: ``width * 2 ** i`` at level ``i``. ``heads[i]`` is the
    attention heads of level ``i`` (one entry per encoder level plus one for the middle) and
    must divide that level's channels. ``ffn_expand`` sets the GDFN's hidden channels,
    ``int(channels * ffn_expand)``. ``in_channels`` is both the input's and the output's
    channel count (global residual).
    """

    width: int = 16
    enc_blocks: tuple[int, ...] = (1, 1, 1)
    middle_blocks: int = 1
    dec_blocks: tuple[int, ...] = (1, 1, 1)
    heads: tuple[int, ...] = (1, 2, 4, 8)
    ffn_expand: float = RESTORMER_FFN_EXPAND
    refinement_blocks: int = 0
    in_channels: int = 3

    def __post_init__(self) -> None:
        # YAML gives lists; store tuples so configs compare and hash by value.
        for name in ("enc_blocks", "dec_blocks", "heads"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("width", "in_channels"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise RestorerConfigError(f"TransformerConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("middle_blocks", "refinement_blocks"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise RestorerConfigError(f"TransformerConfig.{name} must be an integer >= 0, got {value!r}")
        for name in ("enc_blocks", "dec_blocks"):
            blocks = getattr(self, name)
            if not all(is_int(n) and n >= 0 for n in blocks):
                raise RestorerConfigError(
                    f"TransformerConfig.{name} must be integers >= 0 (blocks per level), got {blocks!r}"
                )
        if len(self.enc_blocks) != len(self.dec_blocks):
            raise RestorerConfigError(
                "TransformerConfig.enc_blocks and dec_blocks must have one entry per level each, got "
                f"{len(self.enc_blocks)} and {len(self.dec_blocks)}: {self.enc_blocks!r}, {self.dec_blocks!r}"
            )
        if isinstance(self.ffn_expand, bool) or not isinstance(self.ffn_expand, int | float):
            raise RestorerConfigError(
                f"TransformerConfig.ffn_expand must be a number, got {self.ffn_expand!r}"
            )
        if int(self.width * self.ffn_expand) < 1:
            raise RestorerConfigError(
                f"TransformerConfig.ffn_expand {self.ffn_expand!r} leaves no hidden channels at width "
                f"{self.width}: int(width * ffn_expand) must be >= 1"
            )
        levels = len(self.enc_blocks) + 1
        if len(self.heads) != levels or not all(is_int(h) and h >= 1 for h in self.heads):
            raise RestorerConfigError(
                f"TransformerConfig.heads must be {levels} integers >= 1 (one per encoder level and "
                f"one for the middle), got {self.heads!r}"
            )
        for level, (channels, heads) in enumerate(zip(self.level_channels, self.heads, strict=True)):
            if channels % heads:
                raise RestorerConfigError(
                    f"TransformerConfig.heads[{level}] = {heads} does not divide the {channels} channels "
                    f"of level {level} (width {self.width} * 2 ** {level})"
                )

    @property
    def pad_multiple(self) -> int:
        """Input sizes are padded to a multiple of this: one halving per encoder level."""
        return 2 ** len(self.enc_blocks)

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channels of each encoder level and, last, of the middle: ``width * 2 ** i``."""
        return tuple(self.width * 2**level for level in range(len(self.enc_blocks) + 1))

    @classmethod
    def restormer(cls, in_channels: int = 3) -> TransformerConfig:
        """Restormer's published configuration (26.1 M parameters): a size reference, far too
        slow to train on a CPU."""
        return cls(
            width=48,
            enc_blocks=(4, 6, 6),
            middle_blocks=8,
            dec_blocks=(6, 6, 4),
            heads=(1, 2, 4, 8),
            ffn_expand=RESTORMER_FFN_EXPAND,
            refinement_blocks=4,
            in_channels=in_channels,
        )


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


class ChannelAttention(nn.Module):
    """Restormer's MDTA: multi-head attention across channels instead of across pixels.

    1x1 conv to q, k, v (3c) -> 3x3 depthwise conv (local context for every token) -> per
    head, q and k L2-normalised along the pixel axis, ``attention = softmax(q k^T *
    temperature)`` of shape (c/heads, c/heads) -> ``attention @ v`` -> 1x1 projection. The
    two matrix products cost ``2 * c * (c / heads) * H * W`` MACs: linear in the pixels.
    ``temperature`` is learnt per head, since the normalised q k^T lies in -1..1 and softmax
    needs a scale to sharpen.
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.qkv_dwconv = nn.Conv2d(channels * 3, channels * 3, 3, padding=1, groups=channels * 3, bias=False)
        self.project_out = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        # -1 for the pixel axis: under torch.export H * W is a symbolic product, and leaving it
        # to reshape avoids asking the exporter to prove it equal to the input's numel / rest.
        q = q.reshape(batch, self.heads, channels // self.heads, -1)
        k = k.reshape(batch, self.heads, channels // self.heads, -1)
        v = v.reshape(batch, self.heads, channels // self.heads, -1)
        q = F.normalize(q, dim=-1, eps=NORMALIZE_EPS)
        k = F.normalize(k, dim=-1, eps=NORMALIZE_EPS)
        attention = (q @ k.transpose(-2, -1)) * self.temperature
        out = attention.softmax(dim=-1) @ v
        return self.project_out(out.reshape(batch, channels, height, width))

    def matmul_macs(self, x: Tensor) -> int:
        """MACs of ``q k^T`` and ``attention @ v`` for the input ``x`` (B, C, H, W)."""
        batch, channels, height, width = x.shape
        head_channels = channels // self.heads
        return 2 * batch * self.heads * head_channels * head_channels * height * width


class GatedFeedForward(nn.Module):
    """Restormer's GDFN: 1x1 (c -> 2 hidden) -> 3x3 depthwise -> ``gelu(x1) * x2`` -> 1x1 back.

    The exact (erf) GELU, as in Restormer; ONNX opset 18 has no Gelu operator, so it exports
    as Erf arithmetic.
    """

    def __init__(self, channels: int, expand: float) -> None:
        super().__init__()
        hidden = int(channels * expand)
        self.project_in = nn.Conv2d(channels, hidden * 2, 1, bias=False)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=False)
        self.project_out = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)


class TransformerBlock(nn.Module):
    """Pre-norm residual block: ``x + MDTA(LN(x))``, then ``y + GDFN(LN(y))``."""

    def __init__(self, channels: int, heads: int, ffn_expand: float) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(channels, eps=RESTORMER_LAYER_NORM_EPS)
        self.attn = ChannelAttention(channels, heads)
        self.norm2 = LayerNorm2d(channels, eps=RESTORMER_LAYER_NORM_EPS)
        self.ffn = GatedFeedForward(channels, ffn_expand)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def _blocks(channels: int, heads: int, count: int, ffn_expand: float) -> nn.Sequential:
    return nn.Sequential(*(TransformerBlock(channels, heads, ffn_expand) for _ in range(count)))


def _downsample(channels: int) -> nn.Sequential:
    """Restormer's downsampling: 3x3 conv to c/2, then each 2x2 patch into channels (-> 2c)."""
    return nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))


def _upsample(channels: int) -> nn.Sequential:
    """Restormer's upsampling: 3x3 conv to 2c, then every 4 channels into a 2x2 patch (-> c/2)."""
    return nn.Sequential(nn.Conv2d(channels, channels * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------


class TransformerRestorer(nn.Module):
    """Restormer-style U-Net of transformer blocks with a global residual: every pixel is a
    token, and each token decodes its own pixel, restored = input + ending(features).

    Skips are merged by concatenation, then a 1x1 conv back to the level's channels, except
    at full resolution, where the decoder and the refinement blocks work on both (2 x width
    channels), exactly as Restormer does. Keeping Restormer's skeleton rather than NAFNet's
    additive skips makes ``TransformerConfig.restormer()`` the published network, so its
    published size checks this implementation; the price is that a full-resolution decoder
    block costs about four blocks at ``width`` (MACs grow with channels squared), which is
    why small configurations end ``dec_blocks`` with 0.

    ``TransformerRestorer()`` is a small three-level model at width 16; pass a
    :class:`TransformerConfig`, keyword overrides, or both. ``forward`` takes a float
    (B, C, H, W) image in 0..1 of any H and W and returns the restored image of the same
    shape, not clamped (as :class:`~ops.restoration.nafnet.NAFNet`, for the same reason).
    """

    def __init__(self, config: TransformerConfig | None = None, **overrides: object) -> None:
        super().__init__()
        self.config = _resolve_config(config, overrides)
        cfg = self.config
        self.pad_multiple: int = cfg.pad_multiple
        self.intro = nn.Conv2d(cfg.in_channels, cfg.width, 3, padding=1, bias=False)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        for count, channels, heads in zip(
            cfg.enc_blocks, cfg.level_channels[:-1], cfg.heads[:-1], strict=True
        ):
            self.encoders.append(_blocks(channels, heads, count, cfg.ffn_expand))
            self.downs.append(_downsample(channels))
        self.middle_blks = _blocks(cfg.level_channels[-1], cfg.heads[-1], cfg.middle_blocks, cfg.ffn_expand)
        self.ups = nn.ModuleList()
        self.reduces = nn.ModuleList()
        self.decoders = nn.ModuleList()
        levels = len(cfg.enc_blocks)
        for count, level in zip(cfg.dec_blocks, reversed(range(levels)), strict=True):
            channels = cfg.level_channels[level]
            self.ups.append(_upsample(cfg.level_channels[level + 1]))
            if level > 0:
                self.reduces.append(nn.Conv2d(2 * channels, channels, 1, bias=False))
            else:
                # nn.Identity keeps reduces[i] paired with ups[i] in forward's zip.
                self.reduces.append(nn.Identity())
                channels *= 2
            self.decoders.append(_blocks(channels, cfg.heads[level], count, cfg.ffn_expand))
        self.refinement = _blocks(2 * cfg.width, cfg.heads[0], cfg.refinement_blocks, cfg.ffn_expand)
        self.ending = nn.Conv2d(2 * cfg.width, cfg.in_channels, 3, padding=1, bias=False)

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) float image in 0..1 -> the restored (B, C, H, W), not clamped."""
        # Python checks on the rank and the static channel count: evaluated once while
        # tracing, they leave nothing in an exported graph.
        if images.dim() != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(
                f"TransformerRestorer expects a (B, {self.config.in_channels}, H, W) float image, "
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
        for up, reduce, decoder, skip in zip(
            self.ups, self.reduces, self.decoders, reversed(skips), strict=True
        ):
            x = decoder(reduce(torch.cat([up(x), skip], dim=1)))
        x = self.ending(self.refinement(x)) + padded
        # narrow, not slicing: the exported output's dims stay the input's own symbols.
        return x.narrow(2, 0, height).narrow(3, 0, width)


def _resolve_config(config: TransformerConfig | None, overrides: dict[str, object]) -> TransformerConfig:
    known = {f.name for f in dataclasses.fields(TransformerConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise RestorerConfigError(
            f"unknown TransformerConfig field(s) {unknown}; known fields: {sorted(known)}"
        )
    if config is None:
        return TransformerConfig(**overrides)  # type: ignore[arg-type]
    return dataclasses.replace(config, **overrides)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Model statistics
# --------------------------------------------------------------------------------------


def attention_macs(model: nn.Module, height: int, width: int) -> int:
    """Multiply-accumulates of the attention matrix products in one forward at batch 1, H x W.

    The products ``q k^T`` and ``attention @ v`` of every :class:`ChannelAttention`, counted
    with forward hooks on a real forward pass (so the padding to ``pad_multiple`` is
    included), the complement of :func:`~ops.restoration.nafnet.conv_macs`: a model's MACs
    are ``conv_macs + attention_macs``. Softmax, normalisation and GELU are left out. Works
    on a model built on the ``meta`` device, on shapes alone, at any size.
    """
    return hooked_macs(
        model, ChannelAttention, lambda module, inputs, output: module.matmul_macs(inputs[0]), height, width
    )
