"""The fx front-end's own mechanics: scoped interception, the user's model left as it was, and the
shape-recording loop (inputs with defaults, errors naming the node)."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import archgrow
from archgrow.errors import TraceError
from archgrow.graph.fx_patching import scoped_to


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.scale = nn.Parameter(torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale  # ``self.scale`` read through Module.__getattr__


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _Block()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.block(x)))


class _OwnGetattr(_Block):
    """A module class with its own ``__getattr__`` (as some libraries write): fx must patch the base."""

    def __getattr__(self, name: str):
        return super().__getattr__(name)


def _own_methods(cls: type) -> set[str]:
    return {n for n in ("__call__", "__getattr__") if n in vars(cls)}


def test_tracing_patches_only_the_models_classes_and_restores_them() -> None:
    base = (vars(nn.Module)["__call__"], vars(nn.Module)["__getattr__"])
    seen_inside: dict[type, set[str]] = {}

    class Spy(nn.Module):
        """Notes, while fx runs the forward, which classes carry fx's interception."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for cls in (_Net, _Block, nn.Linear, nn.Conv2d):
                seen_inside[cls] = _own_methods(cls)
            seen_inside[nn.Module] = {n for n in ("__call__", "__getattr__") if vars(nn.Module)[n] not in base}
            return x

    class Spied(_Net):
        def __init__(self) -> None:
            super().__init__()
            self.spy = Spy()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.spy(super().forward(x))

    graph = archgrow.trace(Spied(), torch.randn(2, 4))
    assert seen_inside[_Block] == {"__call__", "__getattr__"}  # the model's classes, while tracing
    assert seen_inside[nn.Module] == set() and seen_inside[nn.Conv2d] == set()  # no other class
    for cls in (Spied, Spy, _Block, nn.Linear):
        assert _own_methods(cls) == set(), cls
    assert (vars(nn.Module)["__call__"], vars(nn.Module)["__getattr__"]) == base
    assert graph.group("block.fc").growable  # the parameter read through __getattr__ was seen


def test_a_class_with_its_own_getattr_falls_back_to_fx_patching_the_base() -> None:
    model = nn.Sequential(_OwnGetattr(), nn.ReLU(), nn.Linear(8, 3))
    with scoped_to(model) as scoped:
        assert scoped is False
    with scoped_to(_Net()) as scoped:
        assert scoped is True
    graph = archgrow.trace(model, torch.randn(2, 4))
    group = graph.group("0.fc")
    assert group.growable
    assert {m.name for m in group.consumers} >= {"2"}
    archgrow.grow(graph, group, 2)
    assert model(torch.randn(5, 4)).shape == (5, 3)
    assert _own_methods(_OwnGetattr) == {"__getattr__"}  # its own method kept


class _TwoLinears(nn.Module):
    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.a = nn.Linear(features, hidden)
        self.b = nn.Linear(hidden, 2)


def test_constant_tensors_made_in_the_forward_stay_off_the_users_model() -> None:
    class WithConstant(_TwoLinears):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x) + torch.tensor([1.0, 2.0, 3.0, 4.0]))

    model = WithConstant(2, 4)
    before = set(vars(model))
    for _ in range(2):
        graph = archgrow.trace(model, torch.randn(1, 2))
    assert set(vars(model)) == before
    # the constant's fixed size still ties the width it is added to
    assert not graph.group("a").growable
    assert "never grows" in graph.group("a").reason


def test_recording_takes_defaults() -> None:
    class Flexible(_TwoLinears):
        def forward(self, x: torch.Tensor, scale: torch.Tensor | float = 2.0) -> torch.Tensor:
            return self.b(torch.relu(self.a(x))) * scale

    model = Flexible(3, 6)
    x = torch.randn(1, 3)
    assert archgrow.trace(model, x, frontend="fx").group("a").growable  # the default scale
    assert archgrow.trace(model, (x, torch.ones(2)), frontend="fx").group("a").growable
    with pytest.raises(TraceError, match=r"takes 1 to 2 input\(s\) but example_inputs has 3"):
        archgrow.trace(model, (x, torch.ones(2), x), frontend="fx")
    with pytest.raises(TraceError, match=r"takes 1 to 2 input\(s\) but example_inputs has 0"):
        archgrow.trace(model, (), frontend="fx")


def test_a_failing_node_is_named_with_the_way_out() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(TraceError, match=r"failed at node '_0'.*Check that example_inputs match"):
        archgrow.trace(model, torch.randn(1, 5), frontend="fx")


def test_graph_module_lookup_follows_replaced_modules_and_is_indexed_only_within_modules_fixed() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    model.add_module("first", shared)
    model.add_module("second", shared)  # named_modules() lists it once, as 'first'
    model.add_module("head", nn.Linear(4, 2))
    graph = archgrow.trace(model, torch.randn(1, 3))
    assert graph.module("first") is shared and graph.module("second") is shared and graph.module("") is model
    with pytest.raises(AttributeError, match="no attribute `missing`"):
        graph.module("missing")
    with graph.modules_fixed():
        assert graph.module("second") is shared  # not in the index: looked up
        indexed = graph.module("0")
        model[0] = nn.Linear(3, 4)  # nothing replaces modules inside (the growth check): the index answers
        assert graph.module("0") is indexed
    assert graph.module("0") is model[0] is not indexed  # outside, the model as it is now


def test_growth_after_the_user_replaced_a_bound_module_edits_the_new_one() -> None:
    """A module swapped between two growth events (a reload, a conversion) is the one grown."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 4, 1)).eval()  # fmt: skip
    x = torch.randn(1, 3, 5, 5)
    graph = archgrow.trace(model, x)
    archgrow.grow(graph, "0", 2)
    model[3] = copy.deepcopy(model[3])
    archgrow.grow(graph, "2", 2)
    assert model[3].num_features == 8 and model[3].running_mean.shape == (8,) and model(x).shape == (1, 4, 5, 5)


def test_tracing_restores_the_training_flag_of_torchscript_submodules() -> None:
    """A scripted module keeps its flag in C++: set through its own __setattr__, not around it."""
    scripted = torch.jit.script(nn.Sequential(nn.ReLU()))
    model = nn.Sequential(nn.Linear(3, 4), scripted, nn.Linear(4, 2)).eval()
    archgrow.trace(model, torch.randn(1, 3), leaf_modules=[scripted])
    assert "training" not in vars(scripted) and not scripted.training
    model.train()
    assert scripted.training and all(m.training for m in model.modules())


class _SingleChannelMap(nn.Module):
    """A one-channel map (a spatial attention, ECA's conv1d) whose channel dim the code removes."""

    def __init__(self, squeeze: bool) -> None:
        super().__init__()
        self.squeeze = squeeze
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.fc = nn.Linear(6 if squeeze else 36, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc(y.squeeze(1) if self.squeeze else y.view(x.shape[0], -1))


@pytest.mark.parametrize("squeeze", [True, False], ids=["squeeze", "view"])
def test_a_single_channel_width_whose_dim_is_removed_says_how_to_make_it_growable(squeeze: bool) -> None:
    group = archgrow.trace(_SingleChannelMap(squeeze), torch.randn(1, 3, 6, 6)).group("conv")
    assert not group.growable and group.width == 1
    assert "removes a size-1 dim that is a width of one channel" in group.reason
    assert "give that layer 2 or more channels" in group.reason


# --------------------------------------------------------------------------- shapes without layer arithmetic


class Layers(nn.Module):
    """Every setting that shapes a conv or linear output: stride, dilation, padding as ints, tuples,
    'same' and 'valid', reflect padding, groups, 1-d and 3-d convs, an unbatched conv input, and a
    linear layer on a 3-d input."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
        self.b = nn.Conv2d(8, 8, 3, padding="same", groups=4, padding_mode="reflect")
        self.c = nn.Conv2d(8, 6, 2, padding="valid", stride=2)
        self.d = nn.Conv1d(6, 4, 3, stride=2, padding=1)
        self.e = nn.Conv3d(1, 2, (1, 2, 2))
        self.f = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(self.b(self.a(x)))
        z = self.d(y.flatten(2))
        w = self.e(y[:1, :1])  # (1, 1, H, W) taken as an unbatched 3-d input
        return torch.cat([self.f(z.transpose(1, 2)).flatten(), w.flatten()])


class ZerosBreakIt(nn.Module):
    """An op that fails on the zeros the recorder gives for a layer (Cholesky of a zero matrix)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return torch.linalg.cholesky(h.T @ h)  # positive definite for 8 random rows, not for zeros


class SizedByValues(nn.Module):
    """Sizes taken from values: a tensor as ``arange``'s end, a boolean mask as index, ``nonzero``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x).abs()
        if self.how == "arange":
            return torch.arange(h.sum().ceil().long() + 3)
        if self.how == "mask":
            return h[h > h.mean()]
        return h.flatten().nonzero()


def _skeletons(model: nn.Module, x: torch.Tensor, compute_layers: bool | None) -> dict[str, object]:
    """Each node's recorded skeleton: as ``record_shapes`` records it (None), or from one run that
    computes every layer (True) or gives plain layers as zeros (False)."""
    tracing = importlib.import_module("archgrow.graph.trace")
    from archgrow.ops.registry import OPS

    graph = tracing.symbolic_trace(model, is_leaf=OPS.is_leaf)
    if compute_layers is None:
        values = tracing.record_shapes(graph, model, (x,), OPS)
    else:
        with torch.no_grad():
            values = tracing._run(graph, (x,), OPS, compute_layers=compute_layers)
    return {node.name: value for node, value in values.items()}


def test_recording_without_layer_arithmetic_gives_every_shape_the_layers_give() -> None:
    torch.manual_seed(0)
    model, x = Layers().eval(), torch.randn(2, 3, 15, 17)
    assert _skeletons(model, x, False) == _skeletons(model, x, True)
    tv = pytest.importorskip("torchvision")
    for build in (tv.models.resnet18, tv.models.mobilenet_v3_small):
        model, x = build().eval(), torch.randn(1, 3, 48, 48)
        assert _skeletons(model, x, False) == _skeletons(model, x, True)


def test_recording_computes_every_layer_where_zeros_would_fail_or_size_something() -> None:
    tracing = importlib.import_module("archgrow.graph.trace")
    from archgrow.graph.leaf_shapes import shapes_follow_values

    torch.manual_seed(0)
    x = torch.randn(3, 4)
    # Cholesky of a zero matrix fails: the recorder runs the real forward instead
    fails, rows = ZerosBreakIt(), torch.randn(8, 4)
    with pytest.raises(TraceError, match="cholesky"):
        _skeletons(fails, rows, False)
    assert _skeletons(fails, rows, None) == _skeletons(fails, rows, True)
    # arange's end a value: found as the recorder runs
    arange = SizedByValues("arange")
    with pytest.raises(tracing._ValuesNeeded):
        _skeletons(arange, x, False)
    assert _skeletons(arange, x, None) == _skeletons(arange, x, True)
    # a boolean mask as index: found as the recorder runs
    mask = SizedByValues("mask")
    with pytest.raises(tracing._ValuesNeeded):
        _skeletons(mask, x, False)
    assert _skeletons(mask, x, None) == _skeletons(mask, x, True)
    # nonzero: found in the graph before running
    nonzero = SizedByValues("nonzero")
    assert shapes_follow_values(tracing.symbolic_trace(nonzero).graph)
    assert not shapes_follow_values(tracing.symbolic_trace(arange).graph)
    assert _skeletons(nonzero, x, None) == _skeletons(nonzero, x, True)
