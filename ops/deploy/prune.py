"""Structured channel pruning: remove whole convolution channels, then fine-tune briefly.

Unstructured pruning (zeroing 60 % of the weights, as the seed thesis did) leaves every
tensor its original shape, so dense kernels do exactly the same work: no speed-up. Removing
channels shrinks the convolutions themselves. Torch-Pruning (VainF/Torch-Pruning) traces the
model's dependency graph so that coupled channels - the two sides of a residual add, a
BatchNorm and its convolution, a decoder layer and the next - are removed together; writing
that bookkeeping by hand for every layer type is where hand-rolled pruners go wrong.

The heads' output layers are never pruned: their channels are the contract (classes, w/h,
offset).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ops.detection.model import TrafficQuantizerNet, count_parameters, estimate_gflops

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneSummary:
    ratio: float
    params_before: int
    params_after: int
    gflops_before: float
    gflops_after: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_kept": round(self.params_after / self.params_before, 4),
            "gflops_before": round(self.gflops_before, 4),
            "gflops_after": round(self.gflops_after, 4),
            "gflops_kept": round(self.gflops_after / self.gflops_before, 4),
        }


def prune_channels(model: TrafficQuantizerNet, input_size: int, ratio: float, norm: int = 1) -> PruneSummary:
    """Remove ``ratio`` of the channels of every prunable layer group, in place, by the L-``norm``
    magnitude of each group's weights (the smallest go first)."""
    import torch_pruning as tp

    if not 0.0 < ratio < 1.0:
        raise ValueError(f"pruning ratio must be in (0, 1), got {ratio}")
    model.eval()
    example = torch.zeros(1, 3, input_size, input_size)
    params_before, gflops_before = count_parameters(model), estimate_gflops(model, input_size)
    output_layers = [model.heads.heatmap[-1], model.heads.wh[-1], model.heads.offset[-1]]
    pruner = tp.pruner.MagnitudePruner(
        model,
        example_inputs=example,
        importance=tp.importance.GroupMagnitudeImportance(p=norm),
        pruning_ratio=ratio,
        ignored_layers=output_layers,
        # The detector returns a dict; the tracer needs one tensor to walk back from.
        output_transform=lambda outputs: sum(value.sum() for value in outputs.values()),
    )
    pruner.step()
    summary = PruneSummary(
        ratio=ratio,
        params_before=params_before,
        params_after=count_parameters(model),
        gflops_before=gflops_before,
        gflops_after=estimate_gflops(model, input_size),
    )
    log.info(
        "pruned %.0f %% of channels: %d -> %d parameters, %.3f -> %.3f GFLOPs",
        100 * ratio,
        summary.params_before,
        summary.params_after,
        summary.gflops_before,
        summary.gflops_after,
    )
    return summary
