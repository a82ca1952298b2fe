"""Width groups on one tiny model per topology, and growth of every growable group.

Each test traces a small model, checks the grouping (members, frozen groups and their reasons,
``step``, consumer slots), then grows every growable group on fresh copies of the model with
:func:`check_growth`: function preservation in eval mode, forward + backward + an Adam step after
growth, and a re-trace that agrees with the grown graph.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archgrow
from archgrow import Slot

# --------------------------------------------------------------------------- helpers


def _tensors(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def _loss(out: object) -> torch.Tensor:
    return sum(t.float().square().mean() for t in _tensors(out))


def _as_tuple(inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def assert_same_outputs(before: object, after: object, tol: float = 1e-5) -> None:
    b_list, a_list = _tensors(before), _tensors(after)
    for b, a in zip(b_list, a_list, strict=True):
        assert a.shape == b.shape
        rel = (a - b).abs().max() / b.abs().max().clamp_min(1e-12)
        assert rel <= tol, f"output changed by a relative {rel:.3g}"


def names(members: Iterable[archgrow.Member]) -> set[str]:
    return {m.name for m in members}


def member(members: Iterable[archgrow.Member], name: str) -> archgrow.Member:
    found = [m for m in members if m.name == name]
    assert len(found) == 1, f"{name} not exactly once in {[m.name for m in members]}"
    return found[0]


def grown_groups(make_model: Callable[[], nn.Module], inputs, **trace_kw) -> list[str]:
    """Grow every growable group by ``step`` and ``3*step``, each on a fresh model; check invariants.

    The model is traced on the first sample only (a batch of one is enough) and run on the batch.
    """
    inputs = _as_tuple(inputs)
    example = tuple(t[:1] for t in inputs)
    torch.manual_seed(0)
    ref = archgrow.trace(make_model(), example, **trace_kw)
    grown = [g.name for g in ref.groups if g.growable]
    for name in grown:
        for mult in (1, 3):
            torch.manual_seed(0)
            model = make_model()
            g = archgrow.trace(model, example, **trace_kw)
            group = g.group(name)
            k = mult * group.step
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            model.train()
            _loss(model(*inputs)).backward()  # gradients stay: grow must pad them too
            opt.step()
            model.eval()
            with torch.no_grad():
                before = model(*inputs)
            expected = g.widths()
            expected[name] += k
            assert archgrow.grow(g, name, k, optimizer=opt) is group
            assert group.width == expected[name]
            assert g.widths() == expected, f"growing {name} changed other groups"
            with torch.no_grad():
                after = model(*inputs)
            if group.preserves_function:
                assert_same_outputs(before, after)
            else:
                assert [t.shape for t in _tensors(after)] == [t.shape for t in _tensors(before)]
            model.train()
            _loss(model(*inputs)).backward()
            opt.step()
            opt.zero_grad()
            _loss(model(*inputs)).backward()
            opt.step()
            for p in model.parameters():
                assert torch.isfinite(p).all()
            assert g.retrace().widths() == g.widths(), f"re-trace after growing {name} by {k} disagrees"
    return grown


def check_growth(make_model: Callable[[], nn.Module], inputs, expected: Iterable[str], **trace_kw) -> None:
    """Like :func:`grown_groups`, and the growable groups are exactly ``expected``."""
    assert sorted(grown_groups(make_model, inputs, **trace_kw)) == sorted(expected)


def trace(model_cls: Callable[[], nn.Module], inputs, **kw) -> archgrow.WidthGraph:
    torch.manual_seed(0)
    return archgrow.trace(model_cls(), inputs, **kw)


IMG = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread: None) -> None:
    """Tiny models: see the conftest's ``one_thread``."""


# --------------------------------------------------------------------------- 1. residual adds


class ChainedResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3, self.bn3 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + F.relu(self.bn1(self.c1(x)))
        x = torch.add(x, F.relu(self.bn2(self.c2(x))))
        out = self.bn3(self.c3(x))
        out += x  # torchvision ResNet style in-place residual
        return self.head(F.relu(out))


def test_chained_residual_adds() -> None:
    g = trace(ChainedResidual, IMG)
    assert [grp.name for grp in g.groups] == ["stem", "head"]
    stem = g.group("stem")
    assert names(stem.producers) == {"stem", "c1", "c2", "c3"}
    assert names(stem.consumers) == {"c1", "c2", "c3", "head"}
    assert names(stem.followers) == {"bn1", "bn2", "bn3"}
    assert stem.growable and stem.preserves_function and stem.step == 1 and stem.width == 8
    head = g.group("head")
    assert not head.growable and "output" in head.reason
    check_growth(ChainedResidual, IMG, ["stem"])


# --------------------------------------------------------------------------- 2. residual MLP


class ResidualMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a1, self.a2 = nn.Linear(8, 12), nn.Linear(12, 8)  # skip from the model input
        self.b0 = nn.Linear(8, 16)
        self.b1, self.b2 = nn.Linear(16, 10), nn.Linear(10, 16)  # skip between hidden layers
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.a2(F.relu(self.a1(x)))
        h = F.relu(self.b0(x))
        h = h + self.b2(F.relu(self.b1(h)))
        return self.head(h)


def test_mlp_residual() -> None:
    x = torch.randn(2, 8)
    g = trace(ResidualMLP, x)
    assert set(g.widths()) == {"a1", "a2", "b0", "b1", "head"}
    a2 = g.group("a2")
    assert not a2.growable and "fixed-size" in a2.reason
    assert names(a2.consumers) == {"b0"}
    b0 = g.group("b0")
    assert names(b0.producers) == {"b0", "b2"} and names(b0.consumers) == {"b1", "head"}
    assert b0.growable
    assert g.group("a1").growable and names(g.group("a1").consumers) == {"a2"}
    assert not g.group("head").growable
    check_growth(ResidualMLP, x, ["a1", "b0", "b1"])


# --------------------------------------------------------------------------- 3. concatenation


class DenseConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.l1 = nn.Conv2d(4, 2, 3, padding=1)
        self.l2 = nn.Conv2d(6, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(9)
        self.trans = nn.Conv2d(9, 5, 1)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([x, F.relu(self.l1(x))], 1)
        x = torch.cat([x, F.relu(self.l2(x))], 1)
        x = self.trans(F.relu(self.bn(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_densenet_concat() -> None:
    g = trace(DenseConcat, IMG)
    assert [grp.name for grp in g.groups] == ["stem", "l1", "l2", "trans", "head"]
    expected = {"stem": (4, 0), "l1": (2, 4), "l2": (3, 6)}
    for name, (width, offset) in expected.items():
        grp = g.group(name)
        assert grp.growable and grp.width == width and names(grp.producers) == {name}
        assert member(grp.followers, "bn").slots == (Slot(offset, 1),)
        assert member(grp.consumers, "trans").slots == (Slot(offset, 1),)
    assert names(g.group("stem").consumers) == {"l1", "l2", "trans"}
    assert member(g.group("l1").consumers, "l2").slots == (Slot(4, 1),)
    assert names(g.group("l2").consumers) == {"trans"}
    check_growth(DenseConcat, IMG, ["stem", "l1", "l2", "trans"])


class CascadedConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 3, padding=1)
        self.b = nn.Conv2d(3, 3, 3, padding=1)
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.out = nn.Conv2d(9, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.cat([self.a(x), self.b(x)], dim=1), self.c(x)], dim=1)
        return self.out(F.relu(y))


def test_cascaded_concat_offsets() -> None:
    g = trace(CascadedConcat, IMG)
    for name, offset in {"a": 0, "b": 2, "c": 5}.items():
        assert g.group(name).growable
        assert g.group(name).consumers == (archgrow.Member("out", "Conv2d", (Slot(offset, 1),)),)
    check_growth(CascadedConcat, IMG, ["a", "b", "c"])
    # growth of the first part moves the later parts along
    torch.manual_seed(0)
    model = CascadedConcat()
    g = archgrow.trace(model, IMG)
    archgrow.grow(g, "a", 3)
    g2 = g.retrace()
    assert member(g2.group("b").consumers, "out").slots == (Slot(5, 1),)
    assert member(g2.group("c").consumers, "out").slots == (Slot(8, 1),)


# --------------------------------------------------------------------------- 4. concat along a spatial dim


class SpatialConcat(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 3, padding=1)
        self.c3 = nn.Conv2d(4, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.relu(self.c1(x)), F.relu(self.c2(x))], dim=self.dim)
        return self.c3(y).mean((2, 3))


@pytest.mark.parametrize("dim", [2, 3, -1])
def test_concat_along_spatial_dim(dim: int) -> None:
    """Concatenating along H or W does not put the parts' channels side by side: the channel dim of
    both parts is the *same* dim of the result (channel c of c1 and of c2 land in channel c), so
    c1 and c2 share one group of width 4 and c3 reads it once at offset 0 (no (4, 1) slot)."""
    g = trace(lambda: SpatialConcat(dim), IMG)
    assert [grp.name for grp in g.groups] == ["c1", "c3"]
    grp = g.group("c1")
    assert grp.growable and grp.width == 4
    assert names(grp.producers) == {"c1", "c2"}
    assert grp.consumers == (archgrow.Member("c3", "Conv2d", (Slot(0, 1),)),)
    check_growth(lambda: SpatialConcat(dim), IMG, ["c1"])


# --------------------------------------------------------------------------- 5. split then concat


class SplitConcat(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c1(x)
        if self.how == "split":
            a, b = x.split(4, dim=1)
        else:
            a, b = torch.chunk(x, 2, dim=1)
        x = torch.cat([b, F.relu(a)], dim=1)
        return self.c3(F.relu(self.c2(x)))


@pytest.mark.parametrize("how", ["split", "chunk"])
def test_split_then_concat(how: str) -> None:
    """Equal chunks grow (each half at its own end); a split size written in the code does not."""
    g = trace(lambda: SplitConcat(how), IMG)
    c1 = g.group("c1")
    if how == "chunk":
        assert c1.growable and c1.width == 4
        assert member(c1.producers, "c1").slots == (Slot(0, 1), Slot(4, 1))
        assert member(c1.consumers, "c2").slots == (Slot(0, 1), Slot(4, 1))
    else:
        assert not c1.growable and "split size 4" in c1.reason and "x.chunk(n, dim)" in c1.reason
    assert g.group("c2").growable
    assert not g.group("c3").growable
    check_growth(lambda: SplitConcat(how), IMG, ["c1", "c2"] if how == "chunk" else ["c2"])


# --------------------------------------------------------------------------- 6. depthwise separable


class DepthwiseSeparable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 12, 1)
        self.head = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv(x)))
        x = F.relu(self.bn2(self.dw(x)))
        x = F.relu(self.pw(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_depthwise_separable() -> None:
    g = trace(DepthwiseSeparable, IMG)
    assert [grp.name for grp in g.groups] == ["conv", "pw", "head"]
    conv = g.group("conv")
    assert names(conv.producers) == {"conv"}
    assert names(conv.followers) == {"bn1", "dw", "bn2"}
    assert names(conv.consumers) == {"pw"}
    assert conv.growable and conv.step == 1
    check_growth(DepthwiseSeparable, IMG, ["conv", "pw"])
    torch.manual_seed(0)
    model = DepthwiseSeparable()
    archgrow.grow(archgrow.trace(model, IMG), "conv", 3)
    assert model.dw.weight.shape == (11, 1, 3, 3)
    assert model.dw.groups == model.dw.in_channels == model.dw.out_channels == 11


# --------------------------------------------------------------------------- 7. grouped convs


class GroupedChain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.g1 = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.g2 = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.out = nn.Conv2d(16, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        x = F.relu(self.g1(x))
        x = F.relu(self.g2(x))
        return self.out(x)


def test_grouped_conv_chain() -> None:
    """Every group of a grouped conv widens alike: its input is cut into one part per group, and
    its output is one width repeated per group (as Torch-Pruning groups them)."""
    g = trace(GroupedChain, IMG)
    assert [grp.name for grp in g.groups] == ["conv", "g1", "g2", "out"]
    conv, g1 = g.group("conv"), g.group("g1")
    assert conv.width == 4 and member(conv.producers, "conv").slots == tuple(Slot(i * 4, 1) for i in range(4))
    assert names(conv.consumers) == {"g1"} and names(g1.consumers) == {"g2"}
    assert conv.growable and conv.step == 1 and g1.growable and g1.width == 4
    check_growth(GroupedChain, IMG, ["conv", "g1", "g2"])
    torch.manual_seed(0)
    model = GroupedChain()
    g = archgrow.trace(model, IMG)
    archgrow.grow(g, "conv", 2)
    assert model.conv.out_channels == 24 and model.g1.weight.shape == (16, 6, 3, 3) and model.g1.groups == 4
    archgrow.grow(g, "g1", 1)
    assert model.g1.out_channels == 20 and model.g2.weight.shape == (16, 5, 3, 3)
    assert g.retrace().widths() == g.widths()


class ChannelMultiplier(nn.Module):
    """A depthwise conv with two outputs per input (FastViT, PiT), and one reading the image."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Conv2d(3, 6, 3, padding=1, groups=3)
        self.conv = nn.Conv2d(6, 8, 1)
        self.multiply = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.multiply(F.relu(self.conv(F.relu(self.image(x)))))))


def test_depthwise_conv_multiplying_channels() -> None:
    g = trace(ChannelMultiplier, IMG)
    image, conv, multiply = g.group("image"), g.group("conv"), g.group("multiply")
    assert (image.width, conv.width, multiply.width) == (2, 1, 2)  # per group
    assert image.growable and conv.growable and multiply.growable
    check_growth(ChannelMultiplier, IMG, ["image", "conv", "multiply"])
    torch.manual_seed(0)
    model = ChannelMultiplier()
    g = archgrow.trace(model, IMG)
    archgrow.grow(g, "conv", 1)  # one more input per group: never a plain depthwise conv again
    assert model.multiply.weight.shape == (16, 2, 3, 3) and model.conv.out_channels == 16
    assert g.retrace().widths() == g.widths()


class EfficientChannelAttention(nn.Module):
    """ECA: a conv1d slides along the channels of the pooled features (same padding, stride 1)."""

    def __init__(self, padding: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.eca = nn.Conv1d(1, 1, 3, padding=padding, stride=stride, bias=False)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        y = self.eca(x.mean((2, 3)).view(x.shape[0], 1, -1))
        return self.out(x * y.view(x.shape[0], -1, 1, 1).sigmoid())


def test_conv1d_sliding_over_the_channels() -> None:
    g = trace(EfficientChannelAttention, IMG)
    conv = g.group("conv")
    assert conv.growable and not conv.preserves_function
    assert "slides its kernel over this width" in conv.not_preserving_reasons[0]
    check_growth(EfficientChannelAttention, IMG, ["conv"])


@pytest.mark.parametrize(("padding", "stride"), [(0, 1), (1, 2)])
def test_conv1d_sliding_over_the_channels_needs_same_length(padding: int, stride: int) -> None:
    class Shrinking(EfficientChannelAttention):
        def __init__(self) -> None:
            super().__init__(padding, stride)
            self.out = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.conv(x))
            return self.eca(x.mean((2, 3)).view(x.shape[0], 1, -1)).mean(-1) + self.out(x).mean((2, 3))

    g = trace(Shrinking, IMG)
    assert not g.group("conv").growable and "without 'same' padding" in g.group("conv").reason


# --------------------------------------------------------------------------- 8. GroupNorm


class ConvGroupNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.out = nn.Conv2d(16, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.gn(self.conv(x))))


def test_groupnorm_step() -> None:
    g = trace(ConvGroupNorm, IMG)
    conv = g.group("conv")
    assert names(conv.followers) == {"gn"}
    assert conv.growable and conv.preserves_function and conv.step == 4
    check_growth(ConvGroupNorm, IMG, ["conv"])
    torch.manual_seed(0)
    model = ConvGroupNorm()
    archgrow.grow(archgrow.trace(model, IMG), "conv", 12)
    assert model.gn.num_groups == 7 and model.gn.num_channels == 28


# --------------------------------------------------------------------------- 9. squeeze-and-excitation


class SqueezeExcite(nn.Module):
    def __init__(self, linear: bool) -> None:
        super().__init__()
        self.linear = linear
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        if linear:
            self.fc1, self.fc2 = nn.Linear(16, 4), nn.Linear(4, 16)
        else:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.out = nn.Conv2d(16, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        if self.linear:
            b, c, _, _ = x.size()
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3)))))).view(b, c, 1, 1)
        else:
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(self.pool(x)))))
        return self.out(x * s)


@pytest.mark.parametrize("linear", [True, False], ids=["linear", "conv1x1"])
def test_squeeze_excitation(linear: bool) -> None:
    g = trace(lambda: SqueezeExcite(linear), IMG)
    assert [grp.name for grp in g.groups] == ["conv", "fc1", "out"]
    conv = g.group("conv")
    assert names(conv.producers) == {"conv", "fc2"}
    assert names(conv.consumers) == {"fc1", "out"}
    assert names(conv.followers) == {"bn"}
    assert conv.growable and conv.preserves_function
    fc1 = g.group("fc1")
    assert fc1.growable and names(fc1.consumers) == {"fc2"}
    check_growth(lambda: SqueezeExcite(linear), IMG, ["conv", "fc1"])


# --------------------------------------------------------------------------- 10. LeNet flatten


class LeNet(nn.Module):
    def __init__(self, flatten: str) -> None:
        super().__init__()
        self.flatten = flatten
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 12)
        self.fc2 = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        if self.flatten == "torch.flatten":
            x = torch.flatten(x, 1)
        elif self.flatten == "view_size":
            x = x.view(x.size(0), -1)
        else:
            x = x.view(-1, 16 * 5 * 5)
        return self.fc2(F.relu(self.fc1(x)))


DIGITS = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("flatten", ["torch.flatten", "view_size"])
def test_lenet_flatten(flatten: str) -> None:
    g = trace(lambda: LeNet(flatten), DIGITS)
    assert [grp.name for grp in g.groups] == ["conv1", "conv2", "fc1", "fc2"]
    conv2 = g.group("conv2")
    assert conv2.growable
    assert conv2.consumers == (archgrow.Member("fc1", "Linear", (Slot(0, 25),)),)
    check_growth(lambda: LeNet(flatten), DIGITS, ["conv1", "conv2", "fc1"])
    torch.manual_seed(0)
    model = LeNet(flatten)
    archgrow.grow(archgrow.trace(model, DIGITS), "conv2", 3)
    assert model.fc1.weight.shape == (12, 19 * 25) and model.fc1.in_features == 19 * 25


def test_lenet_hard_coded_view_is_frozen() -> None:
    g = trace(lambda: LeNet("view_400"), DIGITS)
    conv2 = g.group("conv2")
    assert not conv2.growable
    assert "hard-codes" in conv2.reason and "400" in conv2.reason
    check_growth(lambda: LeNet("view_400"), DIGITS, ["conv1", "fc1"])


# --------------------------------------------------------------------------- 11. Linear -> view -> ConvTranspose


class LinearToDeconv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16 * 4 * 4)
        self.deconv = nn.ConvTranspose2d(16, 6, 4, stride=2, padding=1)
        self.out = nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc(z)).view(-1, 16, 4, 4)
        return self.out(F.relu(self.deconv(x)))


def test_linear_view_conv_transpose() -> None:
    z = torch.randn(2, 8)
    g = trace(LinearToDeconv, z)
    assert [grp.name for grp in g.groups] == ["fc", "deconv", "out"]
    fc = g.group("fc")
    assert not fc.growable and "splits a width dim" in fc.reason
    deconv = g.group("deconv")
    assert deconv.growable and deconv.consumers == (archgrow.Member("out", "Conv2d", (Slot(0, 1),)),)
    check_growth(LinearToDeconv, z, ["deconv"])
    torch.manual_seed(0)
    model = LinearToDeconv()
    archgrow.grow(archgrow.trace(model, z), "deconv", 2)
    assert model.deconv.weight.shape == (16, 8, 4, 4) and model.deconv.out_channels == 8


# --------------------------------------------------------------------------- 12. ConvNeXt-style channels-last


class ConvNeXtBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = nn.LayerNorm(8)
        self.pw1 = nn.Linear(8, 32)
        self.pw2 = nn.Linear(32, 8)
        self.gamma = nn.Parameter(torch.full((8,), 0.1))  # layer scale
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(y))))
        x = x + y.permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


def test_convnext_channels_last() -> None:
    g = trace(ConvNeXtBlock, IMG)
    assert [grp.name for grp in g.groups] == ["stem", "pw1", "head"]
    stem = g.group("stem")
    assert names(stem.producers) == {"stem", "pw2"}
    assert names(stem.followers) == {"dw", "norm", "gamma"}
    assert member(stem.followers, "gamma").module_type == "Parameter"
    assert names(stem.consumers) == {"pw1", "head"}
    assert stem.growable and not stem.preserves_function
    assert any("LayerNorm" in r and "norm" in r for r in stem.not_preserving_reasons)
    pw1 = g.group("pw1")
    assert pw1.growable and pw1.preserves_function and pw1.width == 32
    check_growth(ConvNeXtBlock, IMG, ["stem", "pw1"])
    torch.manual_seed(0)
    model = ConvNeXtBlock()
    archgrow.grow(archgrow.trace(model, IMG), "stem", 3)
    assert model.gamma.shape == (11,) and model.norm.normalized_shape == (11,)
    assert torch.equal(model.norm.weight[8:], torch.ones(3))


class ConvLayerNorm2d(nn.Module):
    """torchvision ConvNeXt's LayerNorm2d: an nn.LayerNorm subclass calling F.layer_norm itself."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.convnext import LayerNorm2d

        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = LayerNorm2d(8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.conv(x)))


def test_layernorm2d_new_channels_at_identity() -> None:
    pytest.importorskip("torchvision")
    g = trace(ConvLayerNorm2d, IMG)
    conv = g.group("conv")
    assert conv.growable and not conv.preserves_function
    # F.layer_norm on the module's own tensors: the module is the member, as when it is a leaf
    assert member(conv.followers, "norm").module_type == "LayerNorm2d"
    check_growth(ConvLayerNorm2d, IMG, ["conv"])
    torch.manual_seed(0)
    model = ConvLayerNorm2d()
    archgrow.grow(archgrow.trace(model, IMG), "conv", 3)
    assert model.norm.normalized_shape == (11,)
    assert torch.equal(model.norm.bias[8:], torch.zeros(3))
    assert torch.equal(model.norm.weight[8:], torch.ones(3))  # like nn.LayerNorm and BN: identity


class Rolled(nn.Module):
    """Swin's shifted windows: a channels-last map rolled along its spatial dims (or, wrongly, its
    channels)."""

    def __init__(self, dims: tuple[int, ...], how: str = "roll") -> None:
        super().__init__()
        self.dims, self.how = dims, how
        self.stem = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x).permute(0, 2, 3, 1)
        y = torch.roll(y, shifts=(1,) * len(self.dims), dims=self.dims) if self.how == "roll" else y.flip(self.dims)
        return self.head(F.relu(self.fc(y))).mean((1, 2))


@pytest.mark.parametrize("how", ["roll", "flip"])
def test_rolling_positions(how: str) -> None:
    g = trace(lambda: Rolled((1, 2), how), IMG)
    assert g.group("stem").growable
    check_growth(lambda: Rolled((1, 2), how), IMG, ["stem", "fc"])
    g = trace(lambda: Rolled((3,), how), IMG)
    assert not g.group("stem").growable and "moves positions along a width dim" in g.group("stem").reason


class DropPath(nn.Module):
    """timm's stochastic depth, as traced in training mode: a per-sample mask from ``new_empty``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.conv(x)
        if self.training:
            shape = (y.shape[0],) + (1,) * (y.ndim - 1)
            y = y.div(0.9) * y.new_empty(shape).bernoulli_(0.9)
        return self.head(x + y)


def test_per_sample_mask_from_new_empty() -> None:
    g = trace(DropPath, IMG)
    assert g.group("stem").growable
    check_growth(DropPath, IMG, ["stem"])


class EinsumAttention(nn.Module):
    """Attention written with einsum (torchvision's MaxViT): q and k share the summed letter."""

    def __init__(self, ellipsis: bool = False) -> None:
        super().__init__()
        self.ellipsis = ellipsis
        self.q, self.k, self.v = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(6, 5)
        self.proj = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.ellipsis:
            scores = torch.einsum("...nd,...md->...nm", q, k)
        else:
            scores = torch.einsum("bnd,bmd->bnm", q, k)
        out = torch.einsum("bnm,bmd->bnd", scores.softmax(-1), v)
        return self.proj(out)


def test_einsum() -> None:
    x = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(4))
    g = trace(EinsumAttention, x[:1])
    qk, v = g.group("q"), g.group("v")
    assert qk.growable and names(qk.producers) == {"q", "k"} and not qk.preserves_function
    assert "sums over it" in qk.not_preserving_reasons[0]
    assert v.growable and v.preserves_function and names(v.consumers) == {"proj"}
    check_growth(EinsumAttention, x, ["q", "v"])
    g = trace(lambda: EinsumAttention(ellipsis=True), x[:1])
    assert not g.group("q").growable and "'...'" in g.group("q").reason


# --------------------------------------------------------------------------- 13. broadcast mask


class MaskedFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Conv2d(3, 8, 3, padding=1)
        self.mask = nn.Conv2d(3, 1, 3, padding=1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.feat(x)) * torch.sigmoid(self.mask(x)))


def test_broadcast_mask_multiply() -> None:
    g = trace(MaskedFeatures, IMG)
    assert [grp.name for grp in g.groups] == ["feat", "mask", "out"]
    feat = g.group("feat")
    assert feat.growable and names(feat.producers) == {"feat"} and names(feat.consumers) == {"out"}
    mask = g.group("mask")
    assert mask.width == 1 and names(mask.producers) == {"mask"}
    assert not mask.growable and "broadcast" in mask.reason
    check_growth(MaskedFeatures, IMG, ["feat"])


# --------------------------------------------------------------------------- 14. shared weights


class SharedLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre1 = nn.Linear(6, 5)
        self.pre2 = nn.Linear(6, 5)
        self.shared = nn.Linear(5, 7)
        self.head = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = self.shared(F.relu(self.pre1(x)))
        h2 = self.shared(torch.tanh(self.pre2(x)))
        return self.head(F.relu(h1) * h2)


def test_module_called_twice_ties_call_sites() -> None:
    x = torch.randn(2, 6)
    g = trace(SharedLinear, x)
    assert [grp.name for grp in g.groups] == ["pre1", "shared", "head"]
    pre = g.group("pre1")
    assert names(pre.producers) == {"pre1", "pre2"} and names(pre.consumers) == {"shared"}
    assert pre.growable
    shared = g.group("shared")
    assert names(shared.producers) == {"shared"} and names(shared.consumers) == {"head"}
    check_growth(SharedLinear, x, ["pre1", "shared"])


# --------------------------------------------------------------------------- 15. one ReLU reused


class ReusedReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 6, 3, padding=1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.c1(x))
        x = self.act(self.c2(x))
        x = self.act(self.c3(x))
        return self.out(x)


def test_reused_relu_does_not_tie() -> None:
    g = trace(ReusedReLU, IMG)
    assert [grp.name for grp in g.groups] == ["c1", "c2", "c3", "out"]
    for name in ("c1", "c2", "c3"):
        assert names(g.group(name).producers) == {name}
        assert g.group(name).growable
    check_growth(ReusedReLU, IMG, ["c1", "c2", "c3"])


class ReusedInstanceNorm(nn.Module):
    """One InstanceNorm2d without weights or running statistics, applied to widths 6 and 8."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(6)  # affine=False, track_running_stats=False: no state at all
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.c1(x)))
        x = F.relu(self.norm(self.c2(x)))
        return self.out(x)


@pytest.mark.filterwarnings("ignore:input's size at dim=1 does not match num_features")
def test_reused_parameter_free_norm_does_not_tie() -> None:
    g = trace(ReusedInstanceNorm, IMG)
    assert [grp.name for grp in g.groups] == ["c1", "c2", "out"]
    assert g.group("c1").growable and g.group("c2").growable


# --------------------------------------------------------------------------- 16. two inputs, two outputs


class TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fa = nn.Linear(4, 8)
        self.fb = nn.Linear(6, 8)
        self.mid = nn.Linear(8, 5)
        self.out1 = nn.Linear(8, 3)
        self.out2 = nn.Linear(5, 2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.fa(a)) + F.relu(self.fb(b))
        return self.out1(h), self.out2(F.relu(self.mid(h)))


def test_two_inputs_two_outputs() -> None:
    inputs = (torch.randn(2, 4), torch.randn(2, 6))
    g = trace(TwoInTwoOut, inputs)
    assert [grp.name for grp in g.groups] == ["fa", "out1", "mid", "out2"]  # order of the calls
    fa = g.group("fa")
    assert names(fa.producers) == {"fa", "fb"} and names(fa.consumers) == {"mid", "out1"}
    assert not g.group("out1").growable and not g.group("out2").growable
    check_growth(TwoInTwoOut, inputs, ["fa", "mid"])


# --------------------------------------------------------------------------- 17. parameter used functionally


class FunctionalWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(6, 8)
        self.fc = nn.Linear(8, 8)
        self.post = nn.Linear(8, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.pre(x))
        y = self.fc(h) + F.linear(h, self.fc.weight)
        return self.head(F.relu(self.post(y)))


def test_parameter_used_functionally() -> None:
    x = torch.randn(2, 6)
    g = trace(FunctionalWeight, x)
    fc = g.group("fc")
    assert not fc.growable and "fc.weight" in fc.reason and "linear" in fc.reason
    assert not g.group("pre").growable  # fc's input width is fc.weight's dim 1
    assert g.group("post").growable
    check_growth(FunctionalWeight, x, ["post"])


class MethodWeight(FunctionalWeight):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.pre(x))
        y = self.fc(h) + h @ self.fc.weight.t()
        return self.head(F.relu(self.post(y)))


def test_parameter_used_through_a_method_names_the_node() -> None:
    x = torch.randn(2, 6)
    g = trace(MethodWeight, x)
    fc = g.group("fc")
    assert not fc.growable and "fc.weight" in fc.reason
    assert "'?'" not in fc.reason


# --------------------------------------------------------------------------- 18. ViT block


class TinyViT(nn.Module):
    def __init__(self, dim: int = 16, patch: int = 4, img: int = 8, hidden: int = 24) -> None:
        super().__init__()
        n = (img // patch) ** 2
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(self.norm(x)[:, 0])


def test_vit_block() -> None:
    g = trace(TinyViT, IMG)
    assert [grp.name for grp in g.groups] == ["patch", "fc1", "head"]
    stream = g.group("patch")
    assert names(stream.producers) == {"patch", "fc2", "attn"}
    assert {"cls_token", "pos_embed", "norm1", "norm2", "norm"} <= names(stream.followers)
    assert member(stream.followers, "cls_token").module_type == "Parameter"
    # nn.MultiheadAttention's heads are its embedding: the stream grows by whole heads (of 8)
    assert stream.growable and stream.width == 2 and not stream.preserves_function
    assert "LayerNorm" in " ".join(stream.not_preserving_reasons)
    fc1 = g.group("fc1")
    assert fc1.growable and fc1.preserves_function
    assert names(fc1.producers) == {"fc1"} and names(fc1.consumers) == {"fc2"}
    check_growth(TinyViT, IMG, ["patch", "fc1"])


# --------------------------------------------------------------------------- 19. shuffles


class Shuffle(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2) if how == "PixelShuffle" else nn.ChannelShuffle(4)
        self.c2 = nn.Conv2d(4 if how == "PixelShuffle" else 16, 6, 3, padding=1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c1(x))
        if self.how == "view":
            b, c, h, w = x.size()
            x = x.view(b, 4, c // 4, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
        else:
            x = self.shuffle(x)
        return self.out(F.relu(self.c2(x)))


@pytest.mark.parametrize(("how", "word"), [("PixelShuffle", "PixelShuffle"), ("ChannelShuffle", "ChannelShuffle")])
def test_shuffles_are_frozen(how: str, word: str) -> None:
    g = trace(lambda: Shuffle(how), IMG)
    c1 = g.group("c1")
    assert not c1.growable and word in c1.reason
    assert g.group("c2").growable
    check_growth(lambda: Shuffle(how), IMG, ["c2"])


def test_channel_shuffle_written_as_views_grows() -> None:
    """ShuffleNet's ``x.view(b, g, c // g, h, w).transpose(1, 2).view(b, -1, h, w)``: the width is
    ``g`` equal parts, interleaved; growth adds a channel to every part, and the shuffled output
    gains whole blocks of ``g`` channels at its end."""
    g = trace(lambda: Shuffle("view"), IMG)
    c1 = g.group("c1")
    assert c1.growable and c1.width == 4 and member(c1.producers, "c1").slots == tuple(Slot(i * 4, 1) for i in range(4))
    assert member(c1.consumers, "c2").slots == (Slot(0, 4),)
    check_growth(lambda: Shuffle("view"), IMG, ["c1", "c2"])


# --------------------------------------------------------------------------- 20. untraceable submodule


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return x


class WithUntraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(4, 8)
        self.body = nn.Sequential(nn.ReLU(), DataDependent())
        self.mid = nn.Linear(8, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.mid(self.body(self.pre(x)))))


def test_untraceable_submodule() -> None:
    x = torch.randn(2, 4)
    torch.manual_seed(0)
    with pytest.raises(archgrow.TraceError) as info:
        archgrow.trace(WithUntraceable(), x)
    msg = str(info.value)
    assert "'body.1'" in msg and "DataDependent" in msg and "leaf_modules" in msg
    g = trace(WithUntraceable, x, leaf_modules=[DataDependent])
    pre = g.group("pre")
    assert not pre.growable and "body.1" in pre.reason
    assert g.group("mid").growable
    check_growth(WithUntraceable, x, ["mid"], leaf_modules=[DataDependent])


# --------------------------------------------------------------------------- 21. embedding


class TokenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 6)
        self.head = nn.Linear(6, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc(self.emb(tokens)))
        return self.head(h.mean(1))


def test_embedding_linear() -> None:
    tokens = torch.randint(0, 20, (2, 7), generator=torch.Generator().manual_seed(3))
    g = trace(TokenModel, tokens)
    assert [grp.name for grp in g.groups] == ["emb", "fc", "head"]
    emb = g.group("emb")
    assert emb.growable and emb.width == 8 and names(emb.consumers) == {"fc"}
    assert member(emb.producers, "emb").module_type == "Embedding"
    check_growth(TokenModel, tokens, ["emb", "fc"])
    torch.manual_seed(0)
    model = TokenModel()
    old = model.emb.weight.detach().clone()
    archgrow.grow(archgrow.trace(model, tokens), "emb", 3)
    assert model.emb.weight.shape == (20, 11) and model.emb.embedding_dim == 11
    assert torch.equal(model.emb.weight[:, :8], old)
    assert model.fc.weight.shape == (6, 11)


class PaddedTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8, padding_idx=0)
        self.head = nn.Linear(8, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(tokens).mean(1))


def test_embedding_padding_row_stays_zero() -> None:
    tokens = torch.tensor([[0, 3, 5, 0], [7, 0, 2, 9]])
    torch.manual_seed(0)
    model = PaddedTokens()
    archgrow.grow(archgrow.trace(model, tokens), "emb", 3)
    assert model.emb.weight.shape == (20, 11)
    assert torch.equal(model.emb.weight[0], torch.zeros(11))


class TiedWeights(nn.Module):
    """Language-model weight tying: the output projection shares the embedding matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(self.emb(tokens))))


def test_tied_weights_are_never_rewritten_wrongly() -> None:
    tokens = torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(4))
    grown_groups(TiedWeights, tokens)  # every group it calls growable must grow consistently


# --------------------------------------------------------------------------- keyword arguments


class CatAxis(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat((self.a(x), self.b(x)), axis=1))  # numpy-style alias of dim


def test_concat_axis_keyword() -> None:
    g = trace(CatAxis, IMG)
    assert member(g.group("a").consumers, "out").slots == (Slot(0, 1),)
    assert member(g.group("b").consumers, "out").slots == (Slot(4, 1),)
    check_growth(CatAxis, IMG, ["a", "b"])


class KeywordDims(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 6, 1)
        self.fc = nn.Linear(6, 4)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "permute":
            y = self.conv(x).permute(dims=(0, 2, 3, 1))
        else:
            y = self.conv(x).transpose(dim0=1, dim1=3)
        y = F.relu(self.fc(y))
        return self.out(y.permute(0, 3, 1, 2) if self.how == "permute" else y.transpose(1, 3))


@pytest.mark.parametrize("how", ["permute", "transpose"])
def test_permute_transpose_keywords(how: str) -> None:
    g = trace(lambda: KeywordDims(how), IMG)
    assert g.group("conv").growable and names(g.group("conv").consumers) == {"fc"}
    check_growth(lambda: KeywordDims(how), IMG, ["conv", "fc"])


# --------------------------------------------------------------------------- more small cases


class InputConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([x, F.relu(self.conv(x))], 1))


def test_concat_with_model_input() -> None:
    g = trace(InputConcat, IMG)
    conv = g.group("conv")
    assert conv.growable and conv.consumers == (archgrow.Member("out", "Conv2d", (Slot(3, 1),)),)
    check_growth(InputConcat, IMG, ["conv"])


class SoftmaxHidden(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.b(F.softmax(self.a(x), dim=-1))))


def test_softmax_over_hidden_dim() -> None:
    x = torch.randn(2, 4)
    g = trace(SoftmaxHidden, x)
    a = g.group("a")
    assert a.growable and not a.preserves_function
    assert any("softmax" in r for r in a.not_preserving_reasons)
    assert g.group("b").preserves_function
    check_growth(SoftmaxHidden, x, ["a", "b"])


# --------------------------------------------------------------------------- graph API and side effects


def test_unknown_group_lists_names() -> None:
    g = trace(ResidualMLP, torch.randn(2, 8))
    with pytest.raises(archgrow.UnknownGroupError) as info:
        g.group("nope")
    msg = str(info.value)
    assert "nope" in msg
    for name in ("a1", "a2", "b0", "b1", "head"):
        assert name in msg
    assert isinstance(info.value, KeyError)
    assert "b0" in g.summary()


def test_freeze_keeps_a_group_out_of_growth() -> None:
    g = trace(ResidualMLP, torch.randn(2, 8))
    frozen = g.freeze("a1", "kept at its width by the user")
    assert g.group("a1") is frozen and not frozen.growable and frozen.reason == "kept at its width by the user"
    assert [grp for grp in g.groups if grp.name == "a1"] == [frozen]
    with pytest.raises(archgrow.GrowthError, match="'a1' is frozen: kept at its width by the user"):
        archgrow.grow(g, "a1", 1)
    with pytest.raises(archgrow.UnknownGroupError, match="nope"):
        g.freeze("nope", "x")
    other = trace(ResidualMLP, torch.randn(2, 8))
    with pytest.raises(archgrow.GrowthError, match="belongs to another WidthGraph"):
        g.freeze(other.group("a2"), "x")


class BNDropNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(F.relu(self.bn(self.conv(x))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_trace_has_no_side_effects(mode: str) -> None:
    torch.manual_seed(0)
    model = BNDropNet()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    model.train(mode != "eval")
    if mode == "mixed":
        model.bn.eval()
    flags = {name: m.training for name, m in model.named_modules()}
    state = copy.deepcopy(model.state_dict())
    rng = torch.random.get_rng_state()
    g = archgrow.trace(model, IMG)
    assert g.group("conv").growable
    assert {name: m.training for name, m in model.named_modules()} == flags
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(after[key], value), key
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
