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
  is traced into as before.  timm's own activations (``GELUTanh``, ``QuickGELU``, ``HardMish``,
  the memory-efficient ``*Me`` variants, its ``PReLU``...) are element-wise leaves, as torch's are,
  so that the norm-act layers built with them are described whole too.  ``LayerNormAct2d`` and
  the RMS-norm variants permute or compute their own norm, so they are traced into.
"""

from __future__ import annotations

from typing import Any

import timm.layers as timm_layers
from torch import nn

from archgrow.ir.layout import TensorMeta
from archgrow.ir.roles import ONE
from archgrow.ops.context import RuleContext
from archgrow.ops.layers import ConvLayer, ElementwiseLayer, Owner
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
    """A norm layer with its ``drop`` and ``act`` modules in one forward (timm's ``*Act`` norms).

    The norm is described by the rule registered for ``norm_type`` (looked up at each use, so a
    user's own rule for it applies here too), then each part by its own rule.
    """

    PARTS = ("drop", "act")
    normalizes = True  # batch, group and layer norms alike: ``one``-role weights scale channels

    def __init__(self, norm_type: type):
        self.norm_type = norm_type

    def whole(self, module: nn.Module, ops: OpTable) -> bool:
        return ops.type_rule(self.norm_type) is not None and all(
            _described_whole(part, ops) for _, part in self._parts(module)
        )

    def _parts(self, module: nn.Module) -> list[tuple[str, nn.Module]]:
        """The drop and act modules it has (``SyncBatchNormAct`` has them only once converted from
        a ``BatchNormAct2d``; a missing one does nothing)."""
        return [(name, part) for name in self.PARTS if (part := getattr(module, name, None)) is not None]

    def is_mode_free(self, module: nn.Module, ops: OpTable) -> bool:
        norm = ops.type_rule(self.norm_type)
        if norm is None or not norm.is_mode_free(module, ops):
            return False
        return all(
            (rule := ops.layer(part)) is not None and rule.is_mode_free(part, ops) for _, part in self._parts(module)
        )

    def is_dead_at_zero(self, module: nn.Module, ops: OpTable) -> bool:
        """The act decides.  Asked for the ops after a group's producers, the walk over a module
        traced into would find the same: the norm's own gradient at 0 is not 0."""
        act = getattr(module, "act", None)
        rule = ops.layer(act) if act is not None else None
        return rule is not None and rule.is_dead_at_zero(act, ops)

    def apply(self, ctx: RuleContext, name: str, module: nn.Module) -> Any:
        kind = type(module).__name__
        norm = ctx.ops.type_rule(self.norm_type)
        if norm is None:
            return ctx.unknown(f"{kind} '{name}' (no layer rule for its norm, {self.norm_type.__name__})")
        src = ctx.meta(ctx.node.args[0]) if ctx.node.args else None
        out = norm.apply(ctx, name, module)
        parts = self._parts(module)
        if not parts or not isinstance(out, TensorMeta):
            return out
        if not (isinstance(src, TensorMeta) and out.dims == src.dims):
            # the parts' rules read the module's input, which must be laid out as the norm's output
            return ctx.unknown(f"{kind} '{name}' (its norm changes the layout its {' and '.join(p for p, _ in parts)} read)")
        for part, sub in parts:
            rule = ctx.ops.layer(sub)
            if rule is None:  # a leaf by the user's leaf_modules, though whole() said no
                what = type(sub).__name__
                return ctx.unknown(
                    f"{what} '{name}.{part}' inside {kind} '{name}' (describe {what} with archgrow.register_layer, "
                    f"or leave {kind} out of leaf_modules so that fx traces into it)"
                )
            out = rule.apply(ctx, f"{name}.{part}", sub)
        return out


def _described_whole(module: nn.Module, ops: OpTable) -> bool:
    """A module fx would not trace into (torch's own layers, registered leaves) that has a rule."""
    if ops.layer(module) is None:
        return False
    torch_layer = type(module).__module__.startswith("torch.nn.") and not isinstance(module, nn.Sequential)
    return torch_layer or ops.is_leaf(module)


# timm.layers.activations / activations_me: all element-wise, deterministic, none with gradient 0 at 0
ACTIVATIONS = "Swish Mish Sigmoid Tanh HardSwish HardSigmoid HardMish GELU GELUTanh QuickGELU"
ACTIVATIONS_ME = "SwishMe MishMe HardSigmoidMe HardSwishMe HardMishMe"


def register_timm_layers(table: OpTable) -> None:
    from timm.layers import activations, activations_me, norm_act, pool2d_same

    for t in _types(timm_layers, "Conv2dSame AvgPool2dSame") + _types(pool2d_same, "MaxPool2dSame"):
        table.add_leaf(t)
    for t in _types(timm_layers, "StdConv2d StdConv2dSame ScaledStdConv2d ScaledStdConv2dSame"):
        table.add_layer(t, StandardizedConvLayer(), leaf=True)
    # timm's own activations (those torch lacks, and its memory-efficient variants): element-wise,
    # so leaves like torch's, and parts a norm-act layer can be described with
    for t in _types(activations, ACTIVATIONS) + _types(activations_me, ACTIVATIONS_ME):
        table.add_layer(t, ElementwiseLayer(mode_free=True), leaf=True)
    for t in _types(activations, "PReLU"):
        table.add_leaf(t)  # nn.PReLU's rule
    for t in _types(norm_act, "BatchNormAct2d SyncBatchNormAct GroupNormAct GroupNorm1Act LayerNormAct"):
        table.add_layer(t, NormActLayer(t.__mro__[1]), leaf=True)


register_timm_layers(OPS)

__all__ = ["NormActLayer", "StandardizedConvLayer", "register_timm_layers"]
