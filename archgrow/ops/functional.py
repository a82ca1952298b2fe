"""torch.nn.functional's layers called on a module's own tensors: the layer's rule, reached by a function.

timm's ``BatchNormAct2d``, ``GroupNormAct``, ``LayerNorm2d`` and ``Conv2dSame`` (and torchvision's
``LayerNorm2d``) subclass a torch layer but compute their forward themselves, so fx traces into
them and meets ``F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
...)`` with every tensor read through a ``get_attr`` node.  Such a call *is* the layer, spelled as
a function: this module reads the call's arguments, finds the module owning the tensors, and
hands both to the rule core of the module form (:mod:`archgrow.ops.layers`), so the same
tensors, dims and roles grow, and the module is the group's member as if it had been a leaf.

A weight computed in the forward (weight standardisation, a masked weight) or tensors of several
modules have no rule: the widths freeze, with the way out (``leaf_modules``) in the reason where
the enclosing module's type has a layer rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from archgrow.ir.attribute_sizes import size_source
from archgrow.ir.layout import Layout, TensorMeta
from archgrow.ir.roles import MEAN
from archgrow.ops import families
from archgrow.ops.context import NoRule, RuleContext, arg, is_tensor
from archgrow.ops.layers import (
    NORM_ROLES,
    ChannelFollowerLayer,
    ConvLayer,
    ConvTransposeLayer,
    EmbeddingLayer,
    GroupNormLayer,
    LayerNormLayer,
    LinearLayer,
    Owner,
)
from archgrow.ops.registry import OPS, OpInfo, OpTable

# The layer's core, given the call's owner, input, output shape and the shapes of its tensors.
Core = Callable[[RuleContext, Owner, TensorMeta, tuple[int, ...], dict[str, tuple[int, ...]]], Any]


@dataclass(frozen=True)
class FunctionalLayer:
    """One layer function: the module type it spells, where its tensors sit in the call, its core.

    Called as an op rule: decodes the call, checks that its tensors are one module's own
    parameters or buffers, runs the core on that module and ties the ``get_attr`` values to what
    the core bound (``RuleContext.tie_parameter``).
    """

    name: str  # "F.batch_norm", for reasons
    layer: type  # the module form: width attributes (num_features...) are bound only on its instances
    tensors: tuple[tuple[str, int], ...]  # the layer's name for each tensor and its position in the call
    core: Core
    src_pos: int = 0  # where the layer's input sits in the call (ATen's embedding takes the weight first)

    def __call__(self, ctx: RuleContext) -> Any:
        node = ctx.node
        src, out = ctx.meta(node.args[self.src_pos]) if len(node.args) > self.src_pos else None, ctx.out
        if not isinstance(src, TensorMeta) or not is_tensor(out):
            raise NoRule(self.name)
        found = {t: a for t, pos in self.tensors if (a := arg(node, pos, t)) is not None}
        owners = {self._owner_of(ctx, t, a) for t, a in found.items()}
        if len(owners) > 1:
            raise NoRule(f"{self.name} on tensors of several modules ({', '.join(sorted(owners))})")
        if not owners:  # no module tensor (a LayerNorm without affine): the layer's constraints only
            owner = Owner(node.name, None, tensors={}, key=f"{node.name}:{self.name}", kind=self.name)
        else:
            path = owners.pop()
            module = ctx.module(path)
            attrs = {t: str(a.target).rpartition(".")[2] for t, a in found.items()}
            owner = Owner(
                path, module, tensors=attrs, key=f"{path}:{self.name}",
                attrs=isinstance(module, self.layer) and all(t == a for t, a in attrs.items()),
            )  # fmt: skip
        again = owner.key in ctx.state.called
        sizes = {t: ctx.meta(a).shape for t, a in found.items()}
        result = self.core(ctx, owner, src, out[1], sizes)
        if not again:
            for t, a in found.items():
                bound: dict[int, Layout] = {d: lay for (name, d), lay in owner.bound.items() if name == t}
                ctx.tie_parameter(a, bound, f"{self.name} '{owner.name}'")
        return result

    def _owner_of(self, ctx: RuleContext, tensor: str, a: Any) -> str:
        """The module path owning argument ``tensor``, which must be its parameter or buffer."""
        if not (isinstance(a, fx.Node) and a.op == "get_attr"):
            what = f"node '{a.name}'" if isinstance(a, fx.Node) else type(a).__name__
            raise NoRule(f"{self.name} with a {tensor} computed in the forward ({what}), not a module's own tensor")
        path, _, attr = str(a.target).rpartition(".")
        module = ctx.state.modules.get(path)
        owned = module is not None and (
            attr in dict(module.named_parameters(recurse=False)) or attr in dict(module.named_buffers(recurse=False))
        )
        if not owned:
            raise NoRule(f"{self.name} with a {tensor} ('{a.target}') that is no module's parameter or buffer")
        return path


def _int_arg(ctx: RuleContext, pos: int, name: str, default: Any) -> Any:
    """A size argument: a constant, or the value recorded for a node computing it."""
    value = arg(ctx.node, pos, name, default)
    if isinstance(value, fx.Node):
        value = ctx.state.values.get(value)
    return value


_LINEAR = LinearLayer()
_CONV = ConvLayer()
_CONV_TRANSPOSE = ConvTransposeLayer()
_EMBEDDING = EmbeddingLayer()
_NORM = ChannelFollowerLayer(NORM_ROLES, "num_features", normalizes=True)
_PRELU = ChannelFollowerLayer({"weight": MEAN}, "num_parameters")
_GROUP_NORM = GroupNormLayer()
_LAYER_NORM = LayerNormLayer()


def linear_core(ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...], sizes: dict) -> Any:
    return _LINEAR.apply_to(ctx, owner, src, shape, sizes["weight"][0])


def conv_core(ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...], sizes: dict) -> Any:
    groups = _int_arg(ctx, 6, "groups", 1)
    if not isinstance(groups, int):
        raise NoRule(f"conv with groups={groups!r}")
    weight = sizes["weight"]  # (out, in / groups, *kernel)
    out = _CONV.apply_to(ctx, owner, src, shape, groups, weight[1] * groups, weight[0])
    if groups > 1 and weight[1] == 1 and weight[0] == groups and src.dims[1] is not None:
        _groups_follow(ctx, arg(ctx.node, 6, "groups", 1), src.dims[1])
    return out


def _groups_follow(ctx: RuleContext, given: Any, lay: Layout) -> None:
    """A depthwise conv grows by whole groups, so the ``groups`` the code passes must follow its
    channels: read from the tensor (``x.shape[1]``) or from a module attribute, which growth
    rewrites (timm's ``BlurPool2d``: ``F.conv2d(x, self.filt, groups=self.channels)``)."""
    if isinstance(given, fx.Node) and ctx.adaptive(given, lay):
        return
    source = size_source(given)
    if source is not None:
        ctx.bind_source(source, lay, f"the groups of a depthwise conv at {ctx.where}")
        return
    ctx.freeze(
        lay,
        f"depthwise conv at {ctx.where} passes groups={given!r} fixed in the code, and growth adds groups; read it "
        "from the tensor (groups=x.shape[1]) or a module attribute",
    )


def conv_transpose_core(ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...], sizes: dict) -> Any:
    groups = _int_arg(ctx, 6, "groups", 1)
    if not isinstance(groups, int):
        raise NoRule(f"transposed conv with groups={groups!r}")
    return _CONV_TRANSPOSE.apply_to(ctx, owner, src, shape, groups, sizes["weight"][1] * groups)  # (in, out / groups, ...)


def embedding_core(ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...], sizes: dict) -> Any:
    return _EMBEDDING.apply_to(ctx, owner, src, shape, sizes["weight"][1])


def norm_core(ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...], sizes: dict) -> Any:
    if src.ndim < 2:
        raise NoRule("batch or instance norm on a 1-d input")
    return _NORM.apply_to(ctx, owner, src, shape)


def prelu_core(ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...], sizes: dict) -> Any:
    if math.prod(sizes["weight"]) == 1:  # one shared slope
        return families.elementwise(ctx, [src])
    if src.ndim < 2:
        raise NoRule("F.prelu with one slope per channel on a 1-d input")
    return _PRELU.apply_to(ctx, owner, src, shape)


def group_norm_core(ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...], sizes: dict) -> Any:
    num_groups = _int_arg(ctx, 1, "num_groups", None)
    if not isinstance(num_groups, int) or src.ndim < 2:
        raise NoRule(f"F.group_norm with num_groups={num_groups!r}")
    return _GROUP_NORM.apply_to(ctx, owner, src, shape, num_groups, src.shape[1])


def layer_norm_core(ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...], sizes: dict) -> Any:
    normalized = _int_arg(ctx, 1, "normalized_shape", None)
    n_norm = 1 if isinstance(normalized, int) else len(normalized) if isinstance(normalized, (tuple, list)) else 0
    if not n_norm:
        raise NoRule(f"layer norm with normalized_shape={normalized!r}")
    return _LAYER_NORM.apply_to(ctx, owner, src, shape, n_norm)


def _with_flag(args: tuple[Any, ...], kwargs: dict[str, Any], pos: int, name: str, value: Any) -> tuple[tuple, dict]:
    if len(args) > pos:
        return args[:pos] + (value,) + args[pos + 1 :], kwargs
    return args, {**kwargs, name: value}


def _has_running_stats(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    stats = [args[i] if len(args) > i else kwargs.get(n) for i, n in ((1, "running_mean"), (2, "running_var"))]
    return all(isinstance(s, torch.Tensor) for s in stats)


def batch_norm_in_eval(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict]:
    """Eval mode normalises with the running statistics (batch statistics when there are none)."""
    return _with_flag(args, kwargs, 5, "training", False) if _has_running_stats(args, kwargs) else (args, kwargs)


def instance_norm_in_eval(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict]:
    """nn.InstanceNorm in eval mode uses its running statistics when it tracks them."""
    if not _has_running_stats(args, kwargs):
        return args, kwargs
    return _with_flag(args, kwargs, 5, "use_input_stats", False)


def _layers() -> list[tuple[Any, FunctionalLayer, Any]]:
    """(function, its description, its eval-mode rewrite) for each layer function torch has."""
    conv_tensors = (("weight", 1), ("bias", 2))
    norm_tensors = (("running_mean", 1), ("running_var", 2), ("weight", 3), ("bias", 4))
    found = [
        (F.linear, FunctionalLayer("F.linear", nn.Linear, conv_tensors, linear_core), None),
        (F.embedding, FunctionalLayer("F.embedding", nn.Embedding, (("weight", 1),), embedding_core), None),
        (F.prelu, FunctionalLayer("F.prelu", nn.PReLU, (("weight", 1),), prelu_core), None),
        (F.batch_norm, FunctionalLayer("F.batch_norm", nn.modules.batchnorm._BatchNorm, norm_tensors, norm_core), batch_norm_in_eval),
        (
            F.instance_norm,
            FunctionalLayer("F.instance_norm", nn.modules.instancenorm._InstanceNorm, norm_tensors, norm_core),
            instance_norm_in_eval,
        ),
        (F.group_norm, FunctionalLayer("F.group_norm", nn.GroupNorm, (("weight", 2), ("bias", 3)), group_norm_core), None),
        (F.layer_norm, FunctionalLayer("F.layer_norm", nn.LayerNorm, (("weight", 2), ("bias", 3)), layer_norm_core), None),
    ]
    if hasattr(F, "rms_norm") and hasattr(nn, "RMSNorm"):
        found.append((F.rms_norm, FunctionalLayer("F.rms_norm", nn.RMSNorm, (("weight", 2),), layer_norm_core), None))
    for d in (1, 2, 3):
        conv = FunctionalLayer(f"F.conv{d}d", getattr(nn, f"Conv{d}d"), conv_tensors, conv_core)
        found.append((getattr(F, f"conv{d}d"), conv, None))
        transposed = FunctionalLayer(f"F.conv_transpose{d}d", getattr(nn, f"ConvTranspose{d}d"), conv_tensors, conv_transpose_core)
        found.append((getattr(F, f"conv_transpose{d}d"), transposed, None))
    return found


def register_functional_layers(table: OpTable) -> None:
    """The layer functions, replacing any earlier rule for them."""
    for fn, layer, in_eval in _layers():
        table.add_op(fn, OpInfo(layer, in_eval=in_eval))


register_functional_layers(OPS)

__all__ = [
    "Core",
    "FunctionalLayer",
    "conv_core",
    "conv_transpose_core",
    "embedding_core",
    "group_norm_core",
    "layer_norm_core",
    "linear_core",
    "norm_core",
    "prelu_core",
    "batch_norm_in_eval",
    "instance_norm_in_eval",
    "register_functional_layers",
]
