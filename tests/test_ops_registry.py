"""Describing a user's own op or layer: one rule and one registration (the README's example).

Also: results land in ``node.meta``; a rule that says it does not apply freezes with its reason;
a rule that crashes is reported as a bug naming the node instead of freezing a group.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archgrow
from archgrow.errors import RegistrationError, RuleError
from archgrow.ir.layout import TensorMeta
from archgrow.ir.roles import FAN_IN, FAN_OUT, ONE, ZERO
from archgrow.ops import OPS, NoRule, TensorLayer, layer, op, register_layer, register_op
from archgrow.passes import LAYOUT_KEY


# ---------------------------------------------------------------- a custom activation (README example)
def squash(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + x.abs())


class SquashNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(squash(self.fc1(x)))


def test_an_unknown_module_says_to_describe_its_type() -> None:
    class Unfolded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.unfold, self.out = nn.Conv2d(3, 4, 1), nn.Unfold(2), nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.unfold(self.conv(x)).transpose(1, 2))

    conv = archgrow.trace(Unfolded(), torch.randn(1, 3, 4, 4)).group("conv")
    assert not conv.growable and "module Unfold 'unfold'" in conv.reason
    assert "describe it with archgrow.register_layer for its type" in conv.reason


def test_an_unknown_function_freezes_and_a_registered_one_passes() -> None:
    torch.manual_seed(0)
    model, x = SquashNet(), torch.randn(1, 8)
    frozen = archgrow.trace(model, x, autowrap_functions=[squash]).group("fc1")
    assert not frozen.growable and "test_ops_registry.squash" in frozen.reason and "no width rule" in frozen.reason
    assert "describe it with archgrow.register_op" in frozen.reason  # what to do about it
    per_call = archgrow.trace(model, x, autowrap_functions=[squash], rules=[op(squash, elementwise=True)])
    assert per_call.group("fc1").growable
    assert not archgrow.trace(model, x, autowrap_functions=[squash]).group("fc1").growable  # per call only
    register_op(squash, elementwise=True)
    try:
        graph = archgrow.trace(model, x, autowrap_functions=[squash])
        assert graph.group("fc1").growable
        inputs = torch.randn(5, 8)
        before = model(inputs)
        archgrow.grow(graph, "fc1", 4)
        assert model.fc1.out_features == 10 and model.fc2.in_features == 10
        torch.testing.assert_close(model(inputs), before)  # squash(0) = 0 and the new fan-out is zero
    finally:
        OPS.remove_op(squash)


# ---------------------------------------------------------------- a custom layer (README example)
class MaskedLinear(nn.Module):
    """A linear layer with a fixed 0/1 mask on its weights (fx would trace into it and freeze it)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.register_buffer("mask", torch.ones(n_out, n_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MaskedLinearRule(TensorLayer):
    def layout(self, ctx, name, module, src, shape):
        lay_in = src.dims[-1]
        lay_out = ctx.new_width(module.weight.shape[0], name)  # the layer creates a width
        ctx.member(name, module, "producer", lay_out)
        ctx.bind(name, module, "weight", 0, lay_out, FAN_IN)
        ctx.bind(name, module, "bias", 0, lay_out, ZERO)
        ctx.bind(name, module, "mask", 0, lay_out, ONE)
        if lay_in is not None:  # and reads its input's width
            ctx.member(name, module, "consumer", lay_in)
            ctx.bind(name, module, "weight", 1, lay_in, FAN_OUT)
            ctx.bind(name, module, "mask", 1, lay_in, ONE)
        return TensorMeta(shape, src.dims[:-1] + (lay_out,))


def _masked_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(MaskedLinear(8, 6), nn.ReLU(), MaskedLinear(6, 3))


def test_a_registered_layer_grows_with_all_its_tensors() -> None:
    model, x = _masked_net(), torch.randn(1, 8)
    # traced into, F.linear on a product of parameters has no rule: nothing can grow
    assert not any(g.growable for g in archgrow.trace(model, x).groups)
    register_layer(MaskedLinear, MaskedLinearRule())
    try:
        graph = archgrow.trace(model, x)
        group = graph.group("0")
        assert group.growable and [m.name for m in group.members] == ["0", "2"]
        inputs = torch.randn(5, 8)
        before = model(inputs)
        archgrow.grow(graph, "0", 3)
        assert model[0].weight.shape == (9, 8) and model[0].mask.shape == (9, 8) and model[2].mask.shape == (3, 9)
        assert torch.equal(model[0].mask, torch.ones(9, 8)) and torch.equal(model[2].mask, torch.ones(3, 9))
        torch.testing.assert_close(model(inputs), before)  # new fan-out is zero
        assert graph.retrace().widths() == graph.widths()
    finally:
        OPS.remove_layer(MaskedLinear)


def test_layer_rules_per_call() -> None:
    model, x = _masked_net(), torch.randn(1, 8)
    graph = archgrow.trace(model, x, rules=[layer(MaskedLinear, MaskedLinearRule())])
    assert graph.group("0").growable
    assert not any(g.growable for g in archgrow.trace(model, x).groups)


# ---------------------------------------------------------------- outcomes of rules
def test_layouts_are_kept_in_node_meta() -> None:
    graph = archgrow.trace(SquashNet(), torch.randn(1, 8), rules=[op(squash, elementwise=True)])
    metas = {n.name: n.meta.get(LAYOUT_KEY) for n in graph.fx.graph.nodes}
    assert isinstance(metas["fc1"], TensorMeta) and metas["fc1"].dims[-1] is not None
    assert metas["fc1"] is graph.node_meta("fc1")


def test_a_rule_saying_no_rule_freezes_with_its_reason() -> None:
    def picky(ctx):
        raise NoRule("squash with a scalar argument")

    graph = archgrow.trace(SquashNet(), torch.randn(1, 8), autowrap_functions=[squash], rules=[op(squash, picky)])
    assert "squash with a scalar argument at node 'squash': no width rule" in graph.group("fc1").reason


def test_a_crashing_rule_is_reported_as_a_bug_naming_the_node() -> None:
    def broken(ctx):
        return ctx.node.args[5]  # IndexError

    with pytest.raises(RuleError, match=r"the width rule for .*squash failed at node 'squash' \(IndexError"):
        archgrow.trace(SquashNet(), torch.randn(1, 8), autowrap_functions=[squash], rules=[op(squash, broken)])


def test_registration_errors() -> None:
    with pytest.raises(RegistrationError, match="not an nn.Module subclass"):
        register_layer(int, MaskedLinearRule())
    with pytest.raises(RegistrationError, match="must be a LayerRule instance"):
        register_layer(MaskedLinear, MaskedLinearRule)
    with pytest.raises(RegistrationError, match="qualified name"):
        register_op("squash", elementwise=True)
    with pytest.raises(RegistrationError, match="by its name"):
        register_op(squash, elementwise=True, method=True)
    with pytest.raises(RegistrationError, match=r"trace\(rules=...\) takes registrations"):
        archgrow.trace(SquashNet(), torch.randn(1, 8), rules=[squash])


def test_add_leaf_hands_a_subclass_to_its_base_rule() -> None:
    """A module fx cannot trace into, with the channels of its base (timm's Conv2dSame): a leaf."""

    class PaddedConv(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pad = int(x.shape[-1]) % 2  # int() of a traced size: fx cannot trace this
            return super().forward(F.pad(x, (0, pad, 0, pad)))

    table = OPS.with_rules(())
    table.add_leaf(PaddedConv)
    assert table.is_leaf(PaddedConv(3, 6, 3)) and not OPS.is_leaf(PaddedConv(3, 6, 3))
    with pytest.raises(RegistrationError, match="not an nn.Module subclass"):
        table.add_leaf(int)
    with pytest.raises(RegistrationError, match=r"add_leaf\(Mystery\): no base class has a layer rule"):
        table.add_leaf(type("Mystery", (nn.Module,), {}))


class ActBlock(nn.Module):
    """A layer-free composite wrapping an activation module, as timm's norm-act layers do."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x)


class ActBlockRule(TensorLayer):
    """Describes an ActBlock whole only when its act is a ReLU or a GELU; asks the act what it does at 0."""

    def whole(self, module, ops):
        return isinstance(module.act, (nn.ReLU, nn.GELU))

    def is_dead_at_zero(self, module, ops):
        return ops.layer(module.act).is_dead_at_zero(module.act, ops)

    def layout(self, ctx, name, module, src, shape):
        return TensorMeta(shape, src.dims)


def test_a_leaf_rule_decides_per_instance_whether_it_is_a_leaf_and_what_it_does_at_zero() -> None:
    from archgrow.growth.dead_at_zero import dead_at_zero

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 6), ActBlock(nn.ReLU()), nn.Linear(6, 5), ActBlock(nn.GELU()), nn.Linear(5, 4),
        ActBlock(nn.Sigmoid()), nn.Linear(4, 2),
    )  # fmt: skip
    graph = archgrow.trace(model, torch.randn(1, 4), rules=[layer(ActBlock, ActBlockRule())])
    called = [str(n.target) for n in graph.fx.graph.nodes if n.op == "call_module"]
    assert called == ["0", "1", "2", "3", "4", "5.act", "6"]  # the Sigmoid block was traced into
    assert dead_at_zero(graph, graph.group("0")) == ["_1"]  # the node calling block 1: its ReLU
    assert dead_at_zero(graph, graph.group("2")) == []
    assert all(graph.group(name).growable for name in ("0", "2", "4"))


def test_removing_a_leaf_layer_type_stops_it_being_a_leaf() -> None:
    table = OPS.with_rules(())
    table.add_layer(MaskedLinear, MaskedLinearRule(), leaf=True)
    assert table.is_leaf(MaskedLinear(2, 3)) and not OPS.is_leaf(MaskedLinear(2, 3))
    table.remove_layer(MaskedLinear)
    assert not table.is_leaf(MaskedLinear(2, 3))
