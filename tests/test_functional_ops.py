"""Layer functions called on a module's own tensors (timm's BatchNormAct2d & co.), and traces that
need no batch of two.

fx traces into a torch-layer subclass that computes its own forward and meets ``F.batch_norm(x,
self.running_mean, ..., self.weight, self.bias)`` with each tensor a ``get_attr``: each test
module below does that, and its widths must grow like the module form's (the same tensors, dims,
roles and width attributes), keep the function where the group says so, and train afterwards.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_topologies import check_growth, member, names, trace
from torch import nn

import archgrow
from archgrow.growth.measure import measure, measuring, replay
from archgrow.growth.probes import build_probe

IMG = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def _roles(graph: archgrow.WidthGraph, group: str, module: str) -> dict[tuple[str, int], str]:
    return {(b.tensor, b.dim): b.role for b in graph.group(group).bindings() if b.module_name == module}


# --------------------------------------------------------------------------- F.batch_norm


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: an nn.BatchNorm2d subclass calling F.batch_norm itself, then an act."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1, self.eps)
        return self.act(x)


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = BatchNormAct(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = BatchNormAct(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def _stats_warmed(model: nn.Module) -> nn.Module:
    """Running statistics away from their reset values, so that growth is tested against real ones."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 8, 8))
    return model.eval()


def test_functional_batch_norm_binds_like_the_module_form() -> None:
    g = trace(lambda: _stats_warmed(BNNet()), IMG)
    conv1 = g.group("conv1")
    assert conv1.growable and conv1.preserves_function
    assert names(conv1.producers) == {"conv1"} and names(conv1.consumers) == {"conv2"}
    assert member(conv1.followers, "bn1").module_type == "BatchNormAct"
    assert _roles(g, "conv1", "bn1") == {
        ("weight", 0): "one", ("bias", 0): "zero", ("running_mean", 0): "zero", ("running_var", 0): "one",
    }  # fmt: skip
    # the same records as the module traced as a leaf
    leaf = trace(lambda: _stats_warmed(BNNet()), IMG, leaf_modules=[BatchNormAct])
    assert _roles(leaf, "conv1", "bn1") == _roles(g, "conv1", "bn1")
    assert [(grp.name, grp.growable, grp.width) for grp in leaf.groups] == [
        (grp.name, grp.growable, grp.width) for grp in g.groups
    ]
    check_growth(lambda: _stats_warmed(BNNet()), IMG, ["conv1", "conv2"])
    torch.manual_seed(0)
    model = _stats_warmed(BNNet())
    archgrow.grow(archgrow.trace(model, IMG[:1]), "conv1", 3)
    assert model.bn1.num_features == 11 and model.bn1.running_var.shape == (11,)
    assert torch.equal(model.bn1.running_var[8:], torch.ones(3)) and torch.equal(model.bn1.weight[8:], torch.ones(3))


class RenamedBatchNorm(nn.Module):
    """A module of its own (not a BatchNorm subclass) keeping batch-norm tensors under other names."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(n) + 0.5)
        self.shift = nn.Parameter(torch.randn(n))
        self.register_buffer("mean", torch.randn(n))
        self.register_buffer("var", torch.rand(n) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.mean, self.var, self.scale, self.shift, False)


class RenamedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = RenamedBatchNorm(8)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.norm(self.conv1(x))))


def test_functional_batch_norm_on_tensors_with_other_names() -> None:
    g = trace(RenamedNet, IMG)
    assert _roles(g, "conv1", "norm") == {("scale", 0): "one", ("shift", 0): "zero", ("mean", 0): "zero", ("var", 0): "one"}
    assert {a.module for a in g.attr_bindings(g.group("conv1"))} == {"conv1", "conv2"}  # no num_features on it
    check_growth(RenamedNet, IMG, ["conv1"])
    torch.manual_seed(0)
    model = RenamedNet()
    archgrow.grow(archgrow.trace(model, IMG), "conv1", 2)
    assert model.norm.mean.shape == (10,) and not hasattr(model.norm, "num_features")


# --------------------------------------------------------------------------- F.layer_norm, F.group_norm


class LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: channels last, F.layer_norm, channels first again."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GroupNormAct(nn.GroupNorm):
    """timm's GroupNormAct: F.group_norm on the module's tensors, then an activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


class NormsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.ln = LayerNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.gn = GroupNormAct(4, 12)
        self.conv3 = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.gn(self.conv2(self.ln(self.conv1(x)))))


def _randomised(model: nn.Module) -> nn.Module:
    with torch.no_grad():  # norm weights away from 1 and 0: growth must not disturb the old ones
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p))
    return model


def test_functional_layer_norm_and_group_norm() -> None:
    g = trace(lambda: _randomised(NormsNet()), IMG)
    conv1 = g.group("conv1")
    assert conv1.growable and not conv1.preserves_function  # a new channel changes the layer norm's statistics
    assert any("LayerNorm2d 'ln' normalises over it" in r for r in conv1.not_preserving_reasons)
    assert member(conv1.followers, "ln").module_type == "LayerNorm2d"
    assert _roles(g, "conv1", "ln") == {("weight", 0): "one", ("bias", 0): "zero"}
    conv2 = g.group("conv2")
    assert conv2.growable and conv2.preserves_function and conv2.step == 3  # new channels form new groups of 3
    assert _roles(g, "conv2", "gn") == {("weight", 0): "one", ("bias", 0): "zero"}
    check_growth(lambda: _randomised(NormsNet()), IMG, ["conv1", "conv2"])
    torch.manual_seed(0)
    model = _randomised(NormsNet())
    graph = archgrow.trace(model, IMG)
    archgrow.grow(graph, "conv1", 2)
    archgrow.grow(graph, "conv2", 6)
    assert model.ln.normalized_shape == (10,) and model.gn.num_channels == 18 and model.gn.num_groups == 6


# --------------------------------------------------------------------------- F.linear, F.conv2d


class FnLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class SameConv(nn.Conv2d):
    """timm's Conv2dSame: pad in the forward, then F.conv2d on the module's tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class ConvLinearNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = SameConv(3, 8, 3)
        self.dw = SameConv(8, 8, 3, groups=8)
        self.pw = SameConv(8, 6, 1, padding=0)
        self.fc1 = FnLinear(6, 10)
        self.fc2 = FnLinear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.pw(F.relu(self.dw(F.relu(self.stem(x))))))
        return self.fc2(F.relu(self.fc1(x.mean((2, 3)))))


def test_functional_linear_and_conv() -> None:
    g = trace(ConvLinearNet, IMG)
    assert [grp.name for grp in g.groups] == ["stem", "pw", "fc1", "fc2"]
    stem = g.group("stem")
    assert stem.growable and member(stem.producers, "stem").module_type == "SameConv"
    assert names(stem.followers) == {"dw"} and names(stem.consumers) == {"pw"}  # depthwise: follows its input
    assert _roles(g, "stem", "dw") == {("weight", 0): "fan_in", ("bias", 0): "zero"}
    assert _roles(g, "fc1", "fc1") == {("weight", 0): "fan_in", ("bias", 0): "zero"}
    assert _roles(g, "fc1", "fc2") == {("weight", 1): "fan_out"}
    assert not g.group("fc2").growable
    check_growth(ConvLinearNet, IMG, ["stem", "pw", "fc1"])
    torch.manual_seed(0)
    model = ConvLinearNet()
    archgrow.grow(archgrow.trace(model, IMG), "stem", 2)
    assert (model.dw.groups, model.dw.in_channels, model.pw.in_channels) == (10, 10, 10)


class SharedFn(nn.Module):
    """One functional layer called twice: its inputs are tied, like a module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 6)
        self.b = nn.Linear(5, 6)
        self.shared = FnLinear(6, 7)
        self.head = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.shared(F.relu(self.a(x)))) + F.relu(self.shared(F.relu(self.b(x)))))


def test_functional_layer_called_twice_ties_its_inputs() -> None:
    x = torch.randn(2, 5)
    g = trace(SharedFn, x)
    a = g.group("a")
    assert names(a.producers) == {"a", "b"} and names(a.consumers) == {"shared"}
    assert len(g.group("shared").bindings()) == 3  # weight rows, bias, head's columns: bound once
    check_growth(SharedFn, x, ["a", "shared"])


class MaskedConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * 0.5, self.bias, padding=1)


def test_computed_weight_freezes_and_names_the_leaf_way_out() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.masked = MaskedConv(8, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.masked(F.relu(self.conv1(x)))

    g = trace(Net, IMG)
    conv1 = g.group("conv1")
    assert not conv1.growable
    assert "F.conv2d with a weight computed in the forward" in conv1.reason
    assert "leaf_modules=[MaskedConv]" in conv1.reason and "Conv2d" in conv1.reason


# --------------------------------------------------------------------------- no batch of two


class PooledBN(nn.Module):
    """A functional batch norm on 1x1 maps: training-mode statistics of one sample do not exist."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = BatchNormAct(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(F.adaptive_avg_pool2d(self.conv(x), 1)).flatten(1))


def test_trace_needs_no_batch_of_two_and_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = _stats_warmed(PooledBN())
    model.train()
    model.fc.eval()  # mixed flags come back exactly
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = archgrow.trace(model, torch.randn(1, 3, 8, 8))
    assert g.group("conv").growable
    assert model.training and model.bn.training and not model.fc.training
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state), "tracing changed a buffer (statistics, batch count)"


# --------------------------------------------------------------------------- probes through F.batch_norm


def test_probe_replays_a_functional_norm_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = _stats_warmed(BNNet()).train()
    g = archgrow.trace(model, IMG[:1])
    probe = build_probe(g, g.group("conv1"))
    assert not probe.stateless and probe.in_eval  # F.batch_norm depends on the mode
    stats = model.bn1.running_mean.clone()
    with measuring(model):
        m = measure(model, [probe], (IMG,))["conv1"]
        expected = model.bn1.eval()(model.conv1(IMG))  # running statistics, not the batch's
        new = replay(model, probe, torch.randn(2, 3, 8, 8), candidates=True)  # 3 new channels
    model.bn1.train()
    torch.testing.assert_close(m.h, expected)
    assert torch.equal(model.bn1.running_mean, stats)
    assert new.shape == (2, 3, 8, 8)


def test_probe_stops_at_a_functional_consumer() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.same = SameConv(8, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.same(F.relu(self.conv(x)))

    g = trace(Net, IMG)
    probe = build_probe(g, g.group("conv"))
    assert "conv2d" not in [n.name for n in probe.chain] and probe.chain[0].name == "relu"


class Blur(nn.Module):
    """timm's BlurPool2d: a fixed depthwise filter, a buffer, with ``groups`` from an attribute."""

    def __init__(self, groups: str) -> None:
        super().__init__()
        self.how = groups
        self.stem = nn.Conv2d(3, 8, 1)
        self.channels = 8
        self.register_buffer("filt", torch.full((8, 1, 3, 3), 1 / 9))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        groups = {"attribute": self.channels, "shape": y.shape[1], "number": 8}[self.how]
        return self.head(F.conv2d(y, self.filt, padding=1, groups=groups))


@pytest.mark.parametrize("groups", ["attribute", "shape"])
def test_depthwise_functional_conv_groups_follow(groups: str) -> None:
    g = trace(lambda: Blur(groups), IMG)
    assert g.group("stem").growable
    check_growth(lambda: Blur(groups), IMG, ["stem"])
    torch.manual_seed(0)
    model = Blur(groups)
    archgrow.grow(archgrow.trace(model, IMG[:1]), "stem", 2)
    assert model.filt.shape == (10, 1, 3, 3) and (groups != "attribute" or model.channels == 10)


def test_depthwise_functional_conv_with_groups_written_as_a_number_freezes() -> None:
    g = trace(lambda: Blur("number"), IMG)
    assert not g.group("stem").growable and "groups=8 fixed in the code" in g.group("stem").reason
