"""WideResNet-28-k for CIFAR (pre-activation blocks, BN), as used in the paper.

Widths are (16, 16k, 32k, 64k) times ``width_mult``; the paper's WRN-28 runs use k=1 with
``width_mult`` 0.25 (Small), 1 (Medium) and 6 (Big).  A block uses a 1x1 projection shortcut
whenever its input and output widths or resolutions differ, otherwise an identity: with equal
stem and stage-1 widths, the stem and stage 1 then form one residual width group
(algorithms.md §6.5, "tie stem and group-1 widths").
"""

from __future__ import annotations

import torch
from torch import nn

from archgrow.errors import ArgumentError
from archgrow.models.activations import make_activation
from archgrow.models.init import InitName, initialize
from archgrow.models.scaling import scaled


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, activation: str, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = make_activation(activation)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = make_activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if cin != cout or stride != 1 else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act1(self.bn1(x)))
        out = self.conv2(self.dropout(self.act2(self.bn2(out))))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    def __init__(
        self,
        depth: int = 28,
        widen_factor: float = 1.0,
        num_classes: int = 10,
        *,
        width_mult: float = 1.0,
        in_channels: int = 3,
        activation: str = "modified_relu",
        dropout: float = 0.0,
        init: InitName = "paper",
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ArgumentError(f"WideResNet depth must be 6n+4 (28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [scaled(16, width_mult)] + [scaled(w * widen_factor, width_mult) for w in (16, 32, 64)]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        stages = []
        prev = widths[0]
        for width, stride in zip(widths[1:], (1, 2, 2), strict=True):
            blocks = [
                PreActBlock(prev if j == 0 else width, width, stride if j == 0 else 1, activation, dropout)
                for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            prev = width
        self.stage1, self.stage2, self.stage3 = stages
        self.bn = nn.BatchNorm2d(prev)
        self.act = make_activation(activation)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        initialize(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(self.act(self.bn(x))), 1))


def wrn28(widen_factor: float = 1.0, num_classes: int = 10, *, width_mult: float = 1.0, **kwargs) -> WideResNet:
    return WideResNet(28, widen_factor, num_classes, width_mult=width_mult, **kwargs)
