"""The restoration networks by ``model.arch``: how a :class:`~ops.config.RestorerConfig` builds
one, what a checkpoint records about it, and what one forward pass costs.

Training, checkpoint loading and the benchmark go through here (export and INT8 take any
module), so an architecture is added in one place and no caller asks which one it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ops.config import RestorerConfig
from ops.restoration.nafnet import NAFNet, NAFNetConfig, conv_macs
from ops.restoration.transformer import TransformerConfig, TransformerRestorer, attention_macs


@dataclass(frozen=True)
class Architecture:
    name: str  # what checkpoints record (NAFNet's existing checkpoints say "NAFNet")
    build: Callable[[RestorerConfig], nn.Module]


def _nafnet(cfg: RestorerConfig) -> nn.Module:
    return NAFNet(
        NAFNetConfig(
            width=cfg.width,
            enc_blocks=tuple(cfg.enc_blocks),
            middle_blocks=cfg.middle_blocks,
            dec_blocks=tuple(cfg.dec_blocks),
        )
    )


def _transformer(cfg: RestorerConfig) -> nn.Module:
    assert cfg.heads is not None  # RestorerConfig requires heads for this arch
    return TransformerRestorer(
        TransformerConfig(
            width=cfg.width,
            enc_blocks=tuple(cfg.enc_blocks),
            middle_blocks=cfg.middle_blocks,
            dec_blocks=tuple(cfg.dec_blocks),
            heads=tuple(cfg.heads),
            ffn_expand=cfg.ffn_expand,
        )
    )


ARCHITECTURES: dict[str, Architecture] = {
    "nafnet": Architecture("NAFNet", _nafnet),
    "transformer": Architecture("ChannelAttentionTransformer", _transformer),
}


def build_restorer(cfg: RestorerConfig) -> nn.Module:
    """A freshly initialised network of ``cfg.arch``: float (B, 3, H, W) in 0..1 of any H, W ->
    the restored image of the same shape; it has ``pad_multiple`` and ``config``."""
    return ARCHITECTURES[cfg.arch].build(cfg)


def architecture_name(cfg: RestorerConfig) -> str:
    return ARCHITECTURES[cfg.arch].name


def restorer_macs(model: nn.Module, height: int, width: int) -> int:
    """Multiply-accumulates of one forward pass at batch 1: the convolutions', plus the
    attention products of a transformer (none in NAFNet)."""
    return conv_macs(model, height, width) + attention_macs(model, height, width)
