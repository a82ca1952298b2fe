"""ATen ops, as torch.export records them: each one given the rule of its torch-level spelling.

The torch.export front-end (:mod:`archgrow.graph.export`) keeps the ATen targets of ops outside
leaf modules (``aten.add.Tensor``, ``aten.view.default``...).  Most take their arguments in the
order of a torch function or ``Tensor`` method the registry already describes (``aten.view(x,
size)`` like ``torch.reshape(x, size)``, ``aten.linear(x, w, b)`` like ``F.linear``), so their
rule is that spelling's rule, looked up when the node is analysed (:class:`SameAs`): a rule
registered later, or per trace, for the torch spelling applies to the ATen op too, and there is
one description of each op to keep right.  The op's facts (element-wise, random, identity in
eval mode...) are copied from the torch spelling when registered.  Where ATen orders arguments
differently (``aten.embedding(weight, indices)``, ``aten.batch_norm(x, weight, bias,
running_mean, running_var, training, ...)``) or has no torch spelling (``aten.slice``), the rule
is written here.  A user's custom op (``torch.ops.mylib.op.default``) is registered like any
function: ``archgrow.register_op(torch.ops.mylib.op.default, elementwise=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archgrow.ir.layout import TensorMeta
from archgrow.ops.context import NoRule, RuleContext, arg, is_tensor
from archgrow.ops.functional import FunctionalLayer, embedding_core, norm_core
from archgrow.ops.registry import OPS, OpInfo, OpTable
from archgrow.ops.tensor_ops import like_rule, narrow_rule


@dataclass(frozen=True)
class SameAs:
    """The rule of an ATen op: the rule registered for ``target`` (a function, or with ``method`` a
    ``Tensor`` method name), found in the trace's registry when the node is analysed."""

    target: Any
    method: bool = False

    def __call__(self, ctx: RuleContext) -> Any:
        info = ctx.ops.method(self.target) if self.method else ctx.ops.function(self.target)
        if info is None or info.rule is None:
            raise NoRule(str(ctx.node.target))
        return info.rule(ctx)


def slice_rule(ctx: RuleContext) -> Any:
    """``aten.slice(x, dim, start, end, step)``: the whole dim (``x[:, :]``) passes; a part freezes it."""
    src, out = ctx.meta(ctx.node.args[0]), ctx.out
    whole = isinstance(src, TensorMeta) and is_tensor(out) and tuple(out[1]) == tuple(src.shape)
    if whole and arg(ctx.node, 4, "step", 1) in (1, None):
        return like_rule(ctx)
    return narrow_rule(ctx)


def no_width_rule(ctx: RuleContext) -> Any:
    """Values that take no width from their tensor arguments (``new_zeros``, assertions): nothing freezes."""
    return ctx.fixed()


def _with_flag(args: tuple[Any, ...], kwargs: dict[str, Any], pos: int, name: str, value: Any) -> tuple[tuple, dict]:
    if len(args) > pos:
        return args[:pos] + (value,) + args[pos + 1 :], kwargs
    return args, {**kwargs, name: value}


def _running_stats(args: tuple[Any, ...]) -> bool:
    return len(args) > 4 and isinstance(args[3], torch.Tensor) and isinstance(args[4], torch.Tensor)


def batch_norm_in_eval(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict]:
    """``aten.batch_norm(x, w, b, running_mean, running_var, training, ...)`` as in eval mode."""
    return _with_flag(args, kwargs, 5, "training", False) if _running_stats(args) else (args, kwargs)


def instance_norm_in_eval(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict]:
    """``aten.instance_norm(x, w, b, running_mean, running_var, use_input_stats, ...)`` as in eval mode."""
    return _with_flag(args, kwargs, 5, "use_input_stats", False) if _running_stats(args) else (args, kwargs)


# ATen packet names -> the torch function (or Tensor method, "Tensor.name") whose rule they share.
_ELEMENTWISE = (
    "abs neg exp exp2 expm1 log log1p log2 log10 sqrt rsqrt sigmoid tanh relu sin cos tan erf erfc sign sgn floor "
    "ceil round trunc frac reciprocal square clamp clip clamp_min clamp_max nan_to_num logical_not bitwise_not isnan "
    "isinf isfinite add sub mul div remainder fmod pow maximum minimum fmax fmin where lerp addcmul addcdiv "
    "masked_fill logical_and logical_or logical_xor eq ne lt le gt ge atan2 hypot copysign xlogy"
)
_ACTIVATIONS = (
    "gelu silu mish hardswish hardsigmoid hardtanh leaky_relu elu selu celu softplus softshrink hardshrink threshold "
    "relu6 logsigmoid"
)
_SAME_NAME_TORCH = (
    "clone mean sum amax amin prod std var norm logsumexp all any nansum count_nonzero max min softmax log_softmax "
    "cat concat stack split split_with_sizes chunk tensor_split unbind narrow select index_select flatten squeeze "
    "unsqueeze reshape permute transpose swapaxes swapdims zeros_like ones_like empty_like full_like rand_like "
    "randn_like matmul mm bmm addmm baddbmm einsum channel_shuffle pixel_shuffle pixel_unshuffle roll flip"
)
_SAME_NAME_F = (
    "linear layer_norm group_norm rms_norm prelu conv1d conv2d conv3d conv_transpose1d conv_transpose2d "
    "conv_transpose3d dropout alpha_dropout feature_alpha_dropout glu scaled_dot_product_attention pad max_pool1d "
    "max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d "
    "adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d max_pool2d_with_indices"
)
_RENAMED: dict[str, Any] = {
    "_softmax": torch.softmax,
    "_log_softmax": torch.log_softmax,
    "_unsafe_view": torch.reshape,
    "view": torch.reshape,
    "feature_dropout": F.dropout,
    "constant_pad_nd": F.pad,
    "_adaptive_avg_pool2d": F.adaptive_avg_pool2d,
    "upsample_nearest1d": F.interpolate,
    "upsample_nearest2d": F.interpolate,
    "upsample_nearest3d": F.interpolate,
    "upsample_linear1d": F.interpolate,
    "upsample_bilinear2d": F.interpolate,
    "upsample_bicubic2d": F.interpolate,
    "upsample_trilinear3d": F.interpolate,
    "reflection_pad1d": F.pad,
    "reflection_pad2d": F.pad,
    "replication_pad1d": F.pad,
    "replication_pad2d": F.pad,
}
_LIKE = "contiguous detach detach_ alias lift_fresh_copy _to_copy to type_as"
_METHODS = "t expand repeat repeat_interleave unflatten copy_ fill_ zero_"
_NO_WIDTH = "new_zeros new_ones new_empty new_full _assert_tensor_metadata scalar_tensor item _local_scalar_dense"


def _aten_packets(names: str) -> list[tuple[str, Any]]:
    return [(n, getattr(torch.ops.aten, n)) for n in names.split() if hasattr(torch.ops.aten, n)]


def _overloads(packet: Any) -> list[Any]:
    return [getattr(packet, name) for name in packet.overloads()]


def _equivalents() -> list[tuple[Any, Any, bool]]:
    """(ATen packet, torch target, is a method name) for every ATen op sharing a torch spelling's rule."""
    found: list[tuple[Any, Any, bool]] = []
    for names, owner in ((_ELEMENTWISE, torch), (_SAME_NAME_TORCH, torch), (_ACTIVATIONS, F), (_SAME_NAME_F, F)):
        for name, packet in _aten_packets(names):
            target = getattr(owner, name, None) or getattr(torch, name, None)
            if target is not None:
                found.append((packet, target, False))
                in_place = getattr(torch.ops.aten, name + "_", None) if not name.endswith("_") else None
                if in_place is not None and hasattr(torch.ops.aten, name + "_"):
                    found.append((in_place, target, False))
    for name, target in _RENAMED.items():
        found.extend((packet, target, False) for _, packet in _aten_packets(name))
    found.extend((packet, torch.clone, False) for _, packet in _aten_packets(_LIKE))
    found.extend((packet, name, True) for name, packet in _aten_packets(_METHODS))
    return found


def _facts_of(table: OpTable, target: Any, method: bool) -> OpInfo:
    return (table.method(target) if method else table.function(target)) or OpInfo()


def register_aten_ops(table: OpTable) -> None:
    """ATen ops with the rules above, keeping any rule registered for an ATen op before."""

    def add(packet: Any, info: OpInfo) -> None:
        for overload in _overloads(packet):
            table.add_op(overload, info, replace_existing=False)

    for packet, target, method in _equivalents():
        facts = _facts_of(table, target, method)
        info = OpInfo(
            SameAs(target, method),
            elementwise=facts.elementwise,
            random=facts.random,
            identity_in_eval=facts.identity_in_eval,
            dead_at_zero=facts.dead_at_zero,
            multiplicative=facts.multiplicative,
        )
        add(packet, info)
    add(torch.ops.aten.slice, OpInfo(slice_rule))
    for _, packet in _aten_packets(_NO_WIDTH):
        add(packet, OpInfo(no_width_rule))
    embedding = FunctionalLayer("aten.embedding", nn.Embedding, (("weight", 0),), embedding_core, src_pos=1)
    add(torch.ops.aten.embedding, OpInfo(embedding))
    norm_tensors = (("weight", 1), ("bias", 2), ("running_mean", 3), ("running_var", 4))
    batch_norm = FunctionalLayer("aten.batch_norm", nn.modules.batchnorm._BatchNorm, norm_tensors, norm_core)
    add(torch.ops.aten.batch_norm, OpInfo(batch_norm, in_eval=batch_norm_in_eval))
    instance = FunctionalLayer("aten.instance_norm", nn.modules.instancenorm._InstanceNorm, norm_tensors, norm_core)
    add(torch.ops.aten.instance_norm, OpInfo(instance, in_eval=instance_norm_in_eval))


register_aten_ops(OPS)

__all__ = ["SameAs", "batch_norm_in_eval", "instance_norm_in_eval", "no_width_rule", "register_aten_ops", "slice_rule"]
