"""Widths frozen because something upstream never grows name that something.

A slice or split at a position written as a number freezes the width it cuts (timm's models read
such positions from attributes, which grow: see test_attribute_cuts.py), and an add onto one
part of a hard-coded split names the split: the add is not what a user should change there, the
split is.  Grouped convs reading such parts still widen their groups.
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


def test_grouped_conv_after_a_fixed_slice_grows_its_groups() -> None:
    """The slice at a number freezes the channels before it, naming the position (the grouped conv
    ties both halves, so all of the stem); the grouped conv still widens every group's outputs."""
    model = SlicedDepthwise()
    x = torch.randn(2, 3, 8, 8)
    g = archgrow.trace(model, x[:1])
    stem = g.group("stem")
    assert not stem.growable and "position 8 written in the code" in stem.reason and "self.n" in stem.reason
    grouped = g.group("grouped")
    assert grouped.growable and grouped.width == 16  # per group
    before = model(x)
    archgrow.grow(g, "grouped", 2)
    assert model.grouped.weight.shape == (36, 8, 1, 1) and model.head.in_channels == 44
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)


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
