"""An HRNet backbone (seed 002) for TrafficQuantizerNet: the stride-4 map is kept, not rebuilt.

HRNet (Sun et al. 2019; HRNetV2, Wang et al. 2020) runs branches at strides 4, 8, 16 and 32 side
by side. Each stage adds one lower-resolution branch, runs a few residual blocks on every
branch, and ends with an exchange unit that fuses every branch into every other: strided 3x3
convolutions on the way down, a 1x1 convolution and nearest upsampling on the way up, summed.
The HRNetV2 representation concatenates all branches upsampled to stride 4; a 1x1 convolution
mixes them to the width the prediction heads read. The detector then needs no decoder.

Shapes for input 256x256 and ``width`` C (branches C, 2C, 4C, 8C)::

    stem          2 x (Conv3x3 s2 + BN + ReLU)                 (B, 64, 64, 64)
    stage1        2 x ResidualBlock                            (B, C, 64, 64)
    stage2        branches at strides 4, 8, one exchange        (B, C, 64, 64), (B, 2C, 32, 32)
    stage3        + stride 16, ``stage3_modules`` exchanges     ... (B, 4C, 16, 16)
    stage4        + stride 32, one exchange                     ... (B, 8C, 8, 8)
    fuse          upsample all to stride 4, concat, Conv1x1     (B, out, 64, 64)

Only ops ONNX Runtime quantises well are used (Conv, BN folded into Conv, ReLU, Add, Resize
nearest, Concat); every branch width is a multiple of 8 for the integer kernels.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ops.detection.model import ResidualBlock

NUM_BRANCHES = 4


def conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, relu: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ExchangeUnit(nn.Module):
    """Every branch's output is the sum of every branch's input brought to its resolution and width.

    From a higher-resolution branch j to a lower i: i - j strided 3x3 convs (the last without
    ReLU, as in HRNet); from a lower to a higher: a 1x1 conv + BN, then nearest upsampling.
    """

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        self.paths = nn.ModuleList()
        for i, out_width in enumerate(widths):
            row = nn.ModuleList()
            for j, in_width in enumerate(widths):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:
                    row.append(
                        nn.Sequential(
                            conv_bn(in_width, out_width, 1, relu=False),
                            nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                        )
                    )
                else:
                    steps = [conv_bn(in_width, in_width, 3, stride=2) for _ in range(i - j - 1)]
                    steps.append(conv_bn(in_width, out_width, 3, stride=2, relu=False))
                    row.append(nn.Sequential(*steps))
            self.paths.append(row)
        self.relu = nn.ReLU()

    def forward(self, branches: Sequence[Tensor]) -> list[Tensor]:
        fused = []
        for row in self.paths:
            total = row[0](branches[0])
            for path, branch in zip(row[1:], branches[1:], strict=True):
                total = total + path(branch)
            fused.append(self.relu(total))
        return fused


class HRModule(nn.Module):
    """``blocks`` residual blocks on each branch, then one exchange unit."""

    def __init__(self, widths: Sequence[int], blocks: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*(ResidualBlock(width, width) for _ in range(blocks))) for width in widths
        )
        self.exchange = ExchangeUnit(widths)

    def forward(self, branches: Sequence[Tensor]) -> list[Tensor]:
        return self.exchange([branch(x) for branch, x in zip(self.branches, branches, strict=True)])


class HRNetBackbone(nn.Module):
    """(B, 3, H, W) -> (B, out_channels, H/4, W/4), HRNetV2-style.

    ``width`` is the stride-4 branch's channels (branch k has ``width * 2**k``); ``blocks`` the
    residual blocks per branch in each module; ``stage_modules`` the exchange units of stages
    2, 3 and 4 (HRNet-W18-small: 1, 1, 1 with 2 blocks; the full W18: 1, 4, 3 with 4).
    """

    output_stride = 4

    def __init__(
        self,
        width: int,
        out_channels: int,
        blocks: int = 2,
        stage_modules: Sequence[int] = (1, 1, 1),
        stem_width: int = 64,
    ) -> None:
        super().__init__()
        widths = [width * 2**k for k in range(NUM_BRANCHES)]
        self.branch_widths = tuple(widths)
        self.stem = nn.Sequential(
            conv_bn(3, stem_width, 3, stride=2), conv_bn(stem_width, stem_width, 3, stride=2)
        )
        self.stage1 = nn.Sequential(ResidualBlock(stem_width, width), ResidualBlock(width, width))
        # each transition opens the next, lower-resolution branch from the lowest existing one
        self.transitions = nn.ModuleList(
            conv_bn(widths[k - 1], widths[k], 3, stride=2) for k in range(1, NUM_BRANCHES)
        )
        self.stages = nn.ModuleList(
            nn.Sequential(*(HRModule(widths[: k + 2], blocks) for _ in range(modules)))
            for k, modules in enumerate(stage_modules)
        )
        self.upsample = nn.ModuleList(
            nn.Upsample(scale_factor=2**k, mode="nearest") for k in range(1, NUM_BRANCHES)
        )
        self.fuse = conv_bn(sum(widths), out_channels, 1)
        self.out_channels = out_channels

    def branches(self, x: Tensor) -> list[Tensor]:
        """Every branch's final map (strides 4, 8, 16, 32)."""
        branches = [self.stage1(self.stem(x))]
        for transition, stage in zip(self.transitions, self.stages, strict=True):
            branches = stage([*branches, transition(branches[-1])])
        return branches

    def forward(self, x: Tensor) -> Tensor:
        import torch

        high, *lower = self.branches(x)
        upsampled = [up(branch) for up, branch in zip(self.upsample, lower, strict=True)]
        return self.fuse(torch.cat([high, *upsampled], dim=1))
