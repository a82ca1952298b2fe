"""Widths frozen because something upstream never grows name that something.

timm's MixNet, GhostNet and Res2NeXt feed depthwise / grouped convs with slices and hard-coded
splits, and CSPNet adds a block's output to a part of a hard-coded split: the conv's grouping, or
the add, is not what a user should change there, the slice or split is.
"""

from __future__ import annotations

import torch
from torch import nn

import archgrow


class SlicedDepthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(16, 32, 1, groups=2)  # 8 in / 16 out per group
        self.head = nn.Conv2d(40, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return self.head(torch.cat([self.dw(y[:, :8]), self.grouped(y)], 1))


def test_grouped_conv_on_a_fixed_input_names_the_input() -> None:
    g = archgrow.trace(SlicedDepthwise(), torch.randn(1, 3, 8, 8))
    dw = g.group("dw")
    assert not dw.growable
    assert dw.reasons[0].startswith("grouped conv 'dw' (groups=8) reads a fixed number of channels from node 'getitem"), dw.reasons
    assert "can only grow with its input" in dw.reasons[0]
    # a grouped conv with a growing input keeps the reason about its grouping
    grouped = g.group("grouped")
    assert any("8 in / 16 out per group) cannot add channels" in r for r in grouped.reasons), grouped.reasons


class HardSplitResidual(nn.Module):
    """CSPNet's pattern: a split with a hard-coded size, then a residual add onto one part."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1)
        self.conv = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.stem(x).split(8, dim=1)
        return self.head(torch.cat([a, self.conv(b) + b], 1))


def test_a_width_tied_to_a_fixed_operand_names_that_operand() -> None:
    g = archgrow.trace(HardSplitResidual(), torch.randn(1, 3, 4, 4))
    conv = g.group("conv")
    assert not conv.growable
    first = conv.reasons[0]
    assert first.startswith("tied to a fixed-size dimension at node 'add': dim of size 8 of node 'getitem_1'"), first
    assert "split" in g.group("stem").reasons[0]
