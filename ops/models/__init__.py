"""Model definitions. ``TrafficQuantizerNet()`` is the seed's full-size detector."""

from ops.models.traffic_net import (
    BACKBONES,
    Decoder,
    ModelConfigError,
    PredictionHeads,
    ResidualBlock,
    ResNetBackbone,
    TrafficNetConfig,
    TrafficQuantizerNet,
    count_parameters,
    estimate_gflops,
    scale_channels,
)

__all__ = [
    "BACKBONES",
    "Decoder",
    "ModelConfigError",
    "PredictionHeads",
    "ResNetBackbone",
    "ResidualBlock",
    "TrafficNetConfig",
    "TrafficQuantizerNet",
    "count_parameters",
    "estimate_gflops",
    "scale_channels",
]
