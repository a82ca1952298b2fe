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
"""

from __future__ import annotations

from typing import Any

import timm.layers as timm_layers
from torch import nn

from archgrow.ir.layout import TensorMeta
from archgrow.ir.roles import ONE
from archgrow.ops.context import RuleContext
from archgrow.ops.layers import ConvLayer, Owner
from archgrow.ops.registry import OPS, OpTable


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


def register_timm_layers(table: OpTable) -> None:
    from timm.layers import pool2d_same

    for t in _types(timm_layers, "Conv2dSame AvgPool2dSame") + _types(pool2d_same, "MaxPool2dSame"):
        table.add_leaf(t)
    for t in _types(timm_layers, "StdConv2d StdConv2dSame ScaledStdConv2d ScaledStdConv2dSame"):
        table.add_layer(t, StandardizedConvLayer(), leaf=True)


register_timm_layers(OPS)

__all__ = ["StandardizedConvLayer", "register_timm_layers"]
