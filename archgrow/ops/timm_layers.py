"""timm's own layer types (imported only once ``timm`` is; see :mod:`archgrow.ops.integrations`).

- ``Conv2dSame``, ``AvgPool2dSame``, ``MaxPool2dSame`` pad by amounts computed from the input's
  size with ``math.ceil``, which fx cannot trace (timm itself marks them untraceable).  Their
  channels behave as their base's (a conv, a pool): the padding only touches spatial dims, so
  they are leaves described by the base's rule, and TF-ported models (``tf_*``) trace with fx.
- ``StdConv2d`` / ``ScaledStdConv2d`` (NF-Nets, BiT) standardise each filter over its fan-in in
  the forward.  Described whole they grow as a conv; new output filters leave the others alone,
  but new inputs change every filter's mean and variance, so growing their input width does not
  keep the function (stated on the group).  ``ScaledStdConv2d``'s ``gain`` grows with the output
  (new entries 1).  Its ``scale`` (gamma / sqrt(fan-in)) is kept as built, not recomputed for the
  wider fan-in.
- ``BatchNormAct2d``, ``SyncBatchNormAct``, ``GroupNormAct``, ``GroupNorm1Act``, ``LayerNormAct``
  are a norm layer followed by its own ``drop`` and ``act`` modules, in one forward.  fx would trace
  that forward as about ten Python-level nodes per norm (an assert, the tensors' ``get_attr`` nodes,
  ``F.batch_norm``, then drop and act), which made tracing most timm CNNs slower than
  Torch-Pruning's.  Described whole, they are the norm's rule followed by the rules of their drop
  and act (which see the same layout: the norm keeps it), and GradMax and the probes ask the act
  for what it does at zero and in eval mode.  An instance whose drop or act has no rule of its own
  is traced into as before.  ``LayerNormAct2d`` and the RMS-norm variants permute or compute their
  own norm, so they are traced into.
"""

from __future__ import annotations

from typing import Any

import timm.layers as timm_layers
from torch import nn

from archgrow.ir.layout import TensorMeta
from archgrow.ir.roles import ONE
from archgrow.ops.context import RuleContext
from archgrow.ops.layers import ConvLayer, Owner
from archgrow.ops.registry import OPS, LayerRule, OpTable


def _types(module: Any, names: str) -> list[type]:
    return [getattr(module, n) for n in names.split() if isinstance(getattr(module, n, None), type)]


class StandardizedConvLayer(ConvLayer):
    """A conv whose filters are standardised over their fan-in in the forward."""

    def layout(self, ctx: RuleContext, name: str, module: nn.Module, src: TensorMeta, shape: tuple[int, ...]) -> Any:
        again = name in ctx.state.called
        out = super().layout(ctx, name, module, src, shape)
        if again or not isinstance(out, TensorMeta):
            return out
        ctx.not_preserving(
            src.dims[1],
            f"'{name}' ({type(module).__name__}) standardises each filter over its inputs, so new inputs change "
            "every filter",
        )
        if isinstance(getattr(module, "gain", None), nn.Parameter):
            Owner(name, module).bind(ctx, "gain", 0, out.dims[1], ONE)
        return out


class NormActLayer(LayerRule):
    """A norm layer with its ``drop`` and ``act`` modules in one forward (timm's ``*Act`` norms)."""

    PARTS = ("drop", "act")

    def __init__(self, norm: LayerRule):
        self.norm = norm
        self.normalizes = norm.normalizes

    def whole(self, module: nn.Module, ops: OpTable) -> bool:
        return all(_described_whole(getattr(module, part, None), ops) for part in self.PARTS)

    def is_dead_at_zero(self, module: nn.Module, ops: OpTable) -> bool:
        """A new unit sitting at 0 stays at 0 through the norm (its shift starts at 0), so the act decides."""
        act = module.act
        rule = ops.layer(act)
        return rule is not None and rule.is_dead_at_zero(act, ops)

    def apply(self, ctx: RuleContext, name: str, module: nn.Module) -> Any:
        src = ctx.meta(ctx.node.args[0]) if ctx.node.args else None
        out = self.norm.apply(ctx, name, module)
        for part in self.PARTS:
            if not (isinstance(out, TensorMeta) and isinstance(src, TensorMeta) and out.dims == src.dims):
                return out  # the parts' rules read the module's input, which must have the norm's layout
            sub = getattr(module, part)
            rule = ctx.ops.layer(sub)
            if rule is None:  # a leaf by the user's leaf_modules, though whole() said no
                return ctx.unknown(f"{type(sub).__name__} '{name}.{part}'")
            out = rule.apply(ctx, f"{name}.{part}", sub)
        return out


def _described_whole(module: Any, ops: OpTable) -> bool:
    """A module fx would not trace into (torch's own layers, registered leaves) that has a rule."""
    if not isinstance(module, nn.Module) or ops.layer(module) is None:
        return False
    torch_layer = type(module).__module__.startswith("torch.nn.") and not isinstance(module, nn.Sequential)
    return torch_layer or ops.is_leaf(module)


def register_timm_layers(table: OpTable) -> None:
    from timm.layers import pool2d_same

    for t in _types(timm_layers, "Conv2dSame AvgPool2dSame") + _types(pool2d_same, "MaxPool2dSame"):
        table.add_leaf(t)
    for t in _types(timm_layers, "StdConv2d StdConv2dSame ScaledStdConv2d ScaledStdConv2dSame"):
        table.add_layer(t, StandardizedConvLayer(), leaf=True)
    for t in _types(timm_layers, "BatchNormAct2d SyncBatchNormAct GroupNormAct GroupNorm1Act LayerNormAct"):
        norm = table.type_rule(t.__mro__[1])
        if norm is not None:
            table.add_layer(t, NormActLayer(norm), leaf=True)


register_timm_layers(OPS)

__all__ = ["NormActLayer", "StandardizedConvLayer", "register_timm_layers"]
