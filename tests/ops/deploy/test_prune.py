"""Structured pruning really shrinks the network and keeps the output contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ops.deploy.prune import prune_channels
from ops.detection.model import TrafficQuantizerNet, count_parameters


@pytest.mark.parametrize("decoder_skips", [False, True])
def test_pruning_removes_channels_not_just_weights(decoder_skips: bool):
    torch.manual_seed(0)
    model = TrafficQuantizerNet(
        num_classes=4, input_size=128, width_mult=0.25, head_width=16, decoder_skips=decoder_skips
    ).eval()
    convs_before = {name: m.weight.shape for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    summary = prune_channels(model, 128, ratio=0.5)
    assert summary.params_after == count_parameters(model) < 0.4 * summary.params_before
    assert summary.gflops_after < 0.5 * summary.gflops_before
    convs_after = {name: m.weight.shape for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    shrunk = [name for name in convs_before if convs_after[name][0] < convs_before[name][0]]
    assert len(shrunk) > 10  # whole output channels are gone, the tensors are smaller
    # No weight was merely zeroed: every remaining filter still has non-zero weights.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            assert (module.weight.flatten(1).abs().sum(1) > 0).all()
    outputs = model(torch.randn(2, 3, 128, 128))
    assert outputs["heatmap"].shape == (2, 4, 32, 32)
    assert outputs["wh"].shape == outputs["offset"].shape == (2, 2, 32, 32)


def test_pruning_ratio_must_be_a_fraction():
    model = TrafficQuantizerNet(num_classes=1, input_size=64, width_mult=0.25, head_width=8)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        prune_channels(model, 64, ratio=1.0)
