"""Slices and splits at positions the code reads from module attributes (DPN, CSPNet, GhostNet,
MixNet, ReXNet, SKNet), and the traced ints that remember their attribute.

fx bakes ``x[:, :self.n]`` into a number; archgrow traces it back to ``self.n``, cuts the width
there into runs that grow apart, and rewrites the attribute on growth, so the user's own forward
cuts in the right place afterwards.  Each growable case goes through :func:`check_growth`
(function kept, training steps after growth, a re-trace agrees, which it can only if the
attributes were rewritten).  Positions written as numbers still freeze, with a reason saying what
would follow growth.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from test_topologies import IMG, check_growth, member, names, trace
from torch import nn

import archgrow
from archgrow import Slot
from archgrow.ir.attribute_sizes import AttributeInt, SizeSource, attribute_ints, size_source


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread: None) -> None:
    """Tiny models: see the conftest's ``one_thread``."""


# --------------------------------------------------------------------------- traced ints


def _attr(value: int = 12) -> AttributeInt:
    return AttributeInt(value, SizeSource("block", "chs", None, value, Fraction(1)))


def test_attribute_ints_stay_affine() -> None:
    a = _attr(12)
    half = a // 2
    assert half == 6 and size_source(half).scale == Fraction(1, 2) and size_source(half).period == 2
    assert size_source(half).step() == 1  # it moves by 1 as the attribute moves by 2
    assert size_source(3 * a + 1).scale == 3 and 3 * a + 1 == 37
    assert size_source(a - 4).scale == 1 and size_source(20 - a).scale == -1
    assert size_source(a + a).scale == 2
    twice_half = (a // 2) * 2
    assert size_source(twice_half).step() == 2  # the attribute must move by 2 for the number to move at all


def test_attribute_ints_lose_their_source_when_combined() -> None:
    other = AttributeInt(4, SizeSource("block", "other", None, 4, Fraction(1)))
    assert size_source(_attr() + other) is None  # which one grows is unknown
    assert size_source(_attr() * other) is None
    assert size_source(_attr() % 5) is None and size_source(int(_attr())) is None
    assert size_source(_attr() // other) is not None  # a size divided by a count: the count is fixed
    assert size_source(_attr() / 2) is None  # a float


def test_attribute_ints_are_restored_after_tracing() -> None:
    block = nn.Module()
    block.n, block.sizes, block.flag, block.name = 5, [2, 3], True, "x"
    saved = (block.n, block.sizes, block.flag)
    with attribute_ints(block, lambda m, path: True):
        assert isinstance(block.n, AttributeInt) and isinstance(block.sizes[1], AttributeInt)
        assert type(block.sizes) is list and block.flag is True  # bools are not sizes
        assert size_source(block.sizes[1]).index == 1
    assert all(a is b for a, b in zip((block.n, block.sizes, block.flag), saved, strict=True))


# --------------------------------------------------------------------------- DPN: two slices


class DualPath(nn.Module):
    """DPN's block: one conv's channels cut at ``self.num_res`` into a residual and a dense part."""

    def __init__(self) -> None:
        super().__init__()
        self.num_res = 5
        self.stem = nn.Conv2d(3, 8, 1)
        self.proj = nn.Conv2d(3, 5, 1)
        self.out = nn.Conv2d(5 + 3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        resid = y[:, : self.num_res] + self.proj(x)
        dense = y[:, self.num_res :, :, :]
        return self.out(torch.cat([resid, dense], dim=1)).mean((2, 3))


def test_slices_at_an_attribute_cut_the_width() -> None:
    g = trace(DualPath, IMG)
    res, dense = g.group("stem[0]"), g.group("stem[1]")
    assert res.growable and res.width == 5 and names(res.producers) == {"stem", "proj"}
    assert dense.growable and dense.width == 3
    assert member(res.producers, "stem").slots == (Slot(0, 1),)
    assert member(dense.producers, "stem").slots == (Slot(5, 1),)
    check_growth(DualPath, IMG, ["stem[0]", "stem[1]"])


def test_growth_rewrites_the_attribute() -> None:
    torch.manual_seed(0)
    model = DualPath().eval()
    g = archgrow.trace(model, IMG[:1])
    before = model(IMG)
    archgrow.grow(g, "stem[0]", 2)
    assert model.num_res == 7 and model.stem.out_channels == 10 and type(model.num_res) is int
    torch.testing.assert_close(model(IMG), before, rtol=0, atol=1e-6)
    archgrow.grow(g, "stem[1]", 3)
    assert model.num_res == 7 and model.stem.out_channels == 13
    torch.testing.assert_close(model(IMG), before, rtol=0, atol=1e-6)


class WrittenSlice(nn.Module):
    def __init__(self, stop: str) -> None:
        super().__init__()
        self.stop = stop
        self.stem = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8 if stop == "image" else 5, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        if self.stop == "image":  # the image's channels back from a concatenation: they never grow
            return self.head(torch.cat([x, y], 1)[:, 3:]).mean((2, 3)) + torch.cat([x, y], 1)[:, :3].mean()
        return self.head(y[:, :5]).mean((2, 3))


def test_a_slice_position_written_in_the_code_freezes_the_channels_before_it() -> None:
    g = trace(lambda: WrittenSlice("number"), IMG)
    before, after = g.group("stem[0]"), g.group("stem[1]")
    assert not before.growable and before.width == 5
    assert "position 5 written in the code" in before.reason and "self.n" in before.reason and "node '" in before.reason
    assert after.growable and after.width == 3  # new channels after the position leave the slice alone
    check_growth(lambda: WrittenSlice("number"), IMG, ["stem[1]"])


def test_a_slice_of_fixed_channels_needs_no_attribute() -> None:
    g = trace(lambda: WrittenSlice("image"), IMG)
    assert g.group("stem").growable
    check_growth(lambda: WrittenSlice("image"), IMG, ["stem"])


# --------------------------------------------------------------------------- GhostNet


class Ghost(nn.Module):
    """GhostNet's module: a conv and a cheap depthwise copy, concatenated and cut to ``out_chs``."""

    def __init__(self, out_chs: int) -> None:
        super().__init__()
        self.out_chs = out_chs
        init = (out_chs + 1) // 2
        self.primary = nn.Conv2d(3, init, 1)
        self.cheap = nn.Conv2d(init, init, 3, padding=1, groups=init)
        self.head = nn.Conv2d(out_chs, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(x)
        out = torch.cat([x1, self.cheap(x1)], dim=1)
        return self.head(out[:, : self.out_chs, :, :]).mean((2, 3))


@pytest.mark.parametrize("out_chs", [8, 7])
def test_ghost_module(out_chs: int) -> None:
    g = trace(lambda: Ghost(out_chs), IMG)
    growable = [grp for grp in g.groups if grp.growable]
    assert growable, [grp.reason for grp in g.groups]
    check_growth(lambda: Ghost(out_chs), IMG, [grp.name for grp in growable])
    torch.manual_seed(0)
    model = Ghost(out_chs)
    g = archgrow.trace(model, IMG[:1])
    archgrow.grow(g, growable[0].name, growable[0].step)
    assert model.out_chs == model.head.in_channels  # the cut moved with the channels


# --------------------------------------------------------------------------- CSPNet, ReXNet


class CrossStage(nn.Module):
    """CSPNet: ``x.split(self.expand_chs // 2, dim=1)``, two equal halves of one attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.expand_chs = 8
        self.expand = nn.Conv2d(3, 8, 1)
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.transition = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs, xb = self.expand(x).split(self.expand_chs // 2, dim=1)
        return self.transition(torch.cat([xs, F.relu(self.block(xb)) + xb], dim=1)).mean((2, 3))


def test_split_by_half_an_attribute() -> None:
    g = trace(CrossStage, IMG)
    grp = g.group("expand")
    assert grp.growable and grp.width == 4 and member(grp.producers, "expand").slots == (Slot(0, 1), Slot(4, 1))
    assert names(grp.producers) == {"expand", "block"}
    check_growth(CrossStage, IMG, ["expand"])
    torch.manual_seed(0)
    model = CrossStage()
    g = archgrow.trace(model, IMG[:1])
    archgrow.grow(g, "expand", 3)
    assert model.expand_chs == 14 == model.expand.out_channels


class Rexnet(nn.Module):
    """ReXNet's partial residual: ``cat([x[:, 0:self.in_channels] + shortcut, x[:, self.in_channels:]])``."""

    def __init__(self) -> None:
        super().__init__()
        self.in_channels = 4
        self.stem = nn.Conv2d(3, 4, 1)
        self.expand = nn.Conv2d(4, 6, 1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.stem(x)
        y = self.expand(F.relu(shortcut))
        y = torch.cat([y[:, 0 : self.in_channels] + shortcut, y[:, self.in_channels :]], dim=1)
        return self.head(y).mean((2, 3))


def test_partial_residual() -> None:
    g = trace(Rexnet, IMG)
    assert g.group("stem").width == 4 and g.group("expand").width == 2
    check_growth(Rexnet, IMG, ["stem", "expand"])


# --------------------------------------------------------------------------- MixNet


class MixedConv(nn.Module):
    """MixNet: ``torch.split(x, self.splits, 1)`` into unequal parts, one depthwise conv each,
    concatenated and gated by a squeeze-excitation conv that knows nothing of the parts."""

    def __init__(self) -> None:
        super().__init__()
        self.splits = [3, 5]
        self.pw = nn.Conv2d(3, 8, 1)
        self.dw = nn.ModuleList([nn.Conv2d(3, 3, 3, padding=1, groups=3), nn.Conv2d(5, 5, 5, padding=2, groups=5)])
        self.se = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(self.pw(x), self.splits, 1)
        y = torch.cat([conv(parts[i]) for i, conv in enumerate(self.dw)], 1)
        y = y * torch.sigmoid(self.se(y.mean((2, 3), keepdim=True)))
        return self.head(y).mean((2, 3))


def test_unequal_split_sizes_from_a_list_attribute() -> None:
    g = trace(MixedConv, IMG)
    first, second = g.group("pw[0]"), g.group("pw[1]")
    assert first.width == 3 and second.width == 5 and first.growable and second.growable
    assert member(first.producers, "se").slots == (Slot(0, 1),)  # the gate is cut like the parts
    assert member(second.producers, "se").slots == (Slot(3, 1),)
    check_growth(MixedConv, IMG, ["pw[0]", "pw[1]"])
    torch.manual_seed(0)
    model = MixedConv()
    g = archgrow.trace(model, IMG[:1])
    archgrow.grow(g, "pw[1]", 2)
    assert model.splits == [3, 7] and type(model.splits) is list


# --------------------------------------------------------------------------- SKNet


class SelectiveKernel(nn.Module):
    """SKNet's attention: ``x.view(B, self.num_paths, C // self.num_paths, H, W)``."""

    def __init__(self) -> None:
        super().__init__()
        self.num_paths = 2
        self.paths = nn.ModuleList([nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 5, padding=2)])
        self.select = nn.Conv2d(4, 8, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack([p(x) for p in self.paths], dim=1)
        a = self.select(stacked.sum(1).mean((2, 3), keepdim=True))
        B, C, H, W = a.shape
        a = torch.softmax(a.view(B, self.num_paths, C // self.num_paths, H, W), dim=1)
        return self.head((stacked * a).sum(1)).mean((2, 3))


def test_view_into_a_count_of_equal_parts() -> None:
    g = trace(SelectiveKernel, IMG)
    grp = g.group("paths.0")
    assert grp.growable and member(grp.producers, "select").slots == (Slot(0, 1), Slot(4, 1))
    check_growth(SelectiveKernel, IMG, ["paths.0"])


# --------------------------------------------------------------------------- FocalNet


class FocalModulation(nn.Module):
    """FocalNet: one projection split into query, context and gates, the gates sliced one by one
    at loop positions (numbers in the code), so each gate channel is fixed while q and ctx grow."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.focal_level, self.dim = how, 2, 4
        self.input_split = [4, 4, 3]
        self.f = nn.Conv2d(3, 11, 1)
        self.focal = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.h = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.f(x)
        if self.how == "attribute":
            q, ctx, gates = torch.split(x, self.input_split, 1)
        else:  # sizes read from another tensor and a number
            c = self.h(x[:, :4] * 0).shape[1]
            q, ctx, gates = torch.split(x, (c, c, 3), 1)
        ctx = self.focal(ctx)
        out = ctx * gates[:, 0:1] + ctx.mean((2, 3), keepdim=True) * gates[:, self.focal_level :]
        out = out / (self.focal_level + 1)  # focal_level is read for more than the slice
        return self.head(q * self.h(out)).mean((2, 3))


def test_split_into_parts_that_grow_and_parts_that_stay() -> None:
    g = trace(lambda: FocalModulation("attribute"), IMG)
    q, ctx = g.group("f[0]"), g.group("f[1]")
    assert q.growable and ctx.growable and q.width == ctx.width == 4
    gates = [grp for grp in g.groups if grp.name.startswith("f[") and grp.name not in ("f[0]", "f[1]")]
    assert len(gates) == 3 and not any(grp.growable for grp in gates)  # cut at numbers: each gate stays
    # the channel before gates[:, self.focal_level:] could move that position, but the forward
    # also divides by focal_level + 1, which growth would change as well
    assert "also reads it at node 'truediv'" in g.group("f[3]").reason
    check_growth(lambda: FocalModulation("attribute"), IMG, ["f[0]", "f[1]"])
    torch.manual_seed(0)
    model = FocalModulation("attribute")
    archgrow.grow(archgrow.trace(model, IMG[:1]), "f[1]", 2)
    assert model.input_split == [4, 6, 3] and model.f.out_channels == 13


class Condition(nn.Module):
    """An attribute that is a cut position and also decides a branch: growth cannot rewrite it."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 2
        self.stem = nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        first = y[:, : self.n]
        if self.n > 1:
            first = first * 0.5
        return self.head(torch.cat([first, y[:, self.n :]], 1)).mean((2, 3))


def test_an_attribute_used_in_a_condition_is_not_rewritten() -> None:
    g = trace(Condition, IMG)
    before = g.group("stem[0]")
    assert not before.growable and "also uses as a comparison" in before.reason
    assert g.group("stem[1]").growable
    check_growth(Condition, IMG, ["stem[1]"])


class LoopCount(Condition):
    """An attribute that is a cut position and also a loop count, which tracing cannot see: the
    check run after tracing (grow once, run the forward, undo) finds that the output changed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        first = y[:, : self.n]
        for _ in range(self.n):
            first = first * 0.5
        return self.head(torch.cat([first, y[:, self.n :]], 1)).mean((2, 3))


def test_an_attribute_also_used_as_a_loop_count_is_caught_by_the_growth_check() -> None:
    torch.manual_seed(0)
    model = LoopCount()
    x = IMG
    before = model(x)
    g = archgrow.trace(model, x[:1])
    first = g.group("stem[0]")
    assert not first.growable and "growing it breaks the model's own forward (the output changed" in first.reason
    assert "loop count" in first.reason
    assert g.group("stem[1]").growable and model.n == 2  # the check left nothing changed
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    check_growth(LoopCount, IMG, ["stem[1]"])
