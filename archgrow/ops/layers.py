"""torch.nn's layers, one rule object per module type: output layout plus what grows with it.

A layer with weights *produces* a new width (its output features), *consumes* its input's width
(its fan-in weights) and binds each tensor dimension to the width it changes with, with the role
of new entries (fan-in, fan-out, zero, one, mean).  Norm layers, PReLU and depthwise convolutions
*follow* their input's width.  Layers seen twice share their weights: their inputs are tied.

Each rule's core takes an :class:`Owner` (the module answering for the tensors, and where it keeps
them) and the layer's sizes, not the module itself: the same core describes the functional
spelling of the layer (``F.batch_norm(x, self.running_mean, ...)`` inside timm's
``BatchNormAct2d``; see :mod:`archgrow.ops.functional`), so both bind the same tensors, dims and
roles.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

from torch import nn

from archgrow.ir.layout import Layout, Seg, TensorMeta
from archgrow.ir.roles import FAN_IN, FAN_OUT, MEAN, ONE, ZERO
from archgrow.ops import families
from archgrow.ops.context import RuleContext, is_tensor
from archgrow.ops.registry import OPS, LayerRule, OpTable


def _src(ctx: RuleContext) -> Any:
    return ctx.meta(ctx.node.args[0]) if ctx.node.args else None


class Owner:
    """The module whose tensors a layer rule binds, and where it keeps them.

    Called as a layer, a module owns its tensors under their usual names (``weight``, ``bias``,
    ``running_mean``...) and records its widths in attributes (``out_features``...).  A functional
    call reads them through ``get_attr`` nodes, possibly under other names (``tensors``: the
    rule's name -> the module's attribute; absent ones were not passed), and its width attributes
    are only bound when the module really is the layer (``attrs``).  ``key`` recognises a second
    call with the same tensors (shared weights).  ``bound`` records where each tensor dim went,
    for the functional form to tie the ``get_attr`` values to.
    """

    def __init__(
        self,
        name: str,
        module: nn.Module | None,
        *,
        tensors: Mapping[str, str] | None = None,
        key: str | None = None,
        attrs: bool = True,
        kind: str | None = None,
    ):
        self.name = name
        self.module = module  # None: a functional call on no module's tensors (constraints only)
        self.tensors = tensors
        self.key = key if key is not None else name
        self.attrs = attrs and module is not None
        self.kind = kind or type(module).__name__  # for reasons
        self.bound: dict[tuple[str, int], Layout] = {}

    @property
    def stateless(self) -> bool:
        """No tensor of its own (InstanceNorm without affine or statistics): it only normalises."""
        if self.tensors is not None:
            return not self.tensors
        module = self.module
        return module is None or (not any(True for _ in module.parameters()) and not any(True for _ in module.buffers()))

    def member(self, ctx: RuleContext, kind: str, layout: Layout) -> None:
        if self.module is not None:
            ctx.member(self.name, self.module, kind, layout)

    def bind(self, ctx: RuleContext, tensor: str, dim: int, layout: Layout | None, role: str) -> None:
        attr = tensor if self.tensors is None else self.tensors.get(tensor)
        if attr is None or layout is None or self.module is None:
            return
        self.bound[(tensor, dim)] = layout
        ctx.bind(self.name, self.module, attr, dim, layout, role)

    def bind_attr(self, ctx: RuleContext, attr: str, layout: Layout, *, index: int | None = None, divisor: int = 1) -> None:
        if self.attrs:
            ctx.bind_attr(self.name, attr, layout, index=index, divisor=divisor)

    def bind_weighted(
        self,
        ctx: RuleContext,
        lay_out: Layout,
        lay_in: Layout | None,
        *,
        out_dim: int,
        in_dim: int,
        out_attr: str,
        in_attr: str | None,
    ) -> None:
        """A layer whose ``weight`` maps ``lay_in`` to ``lay_out`` (plus a ``bias`` on ``lay_out``):
        it produces ``lay_out`` and, where ``lay_in`` is given, consumes it."""
        self.member(ctx, "producer", lay_out)
        self.bind(ctx, "weight", out_dim, lay_out, FAN_IN)
        self.bind(ctx, "bias", 0, lay_out, ZERO)
        self.bind_attr(ctx, out_attr, lay_out)
        if lay_in is not None:
            self.member(ctx, "consumer", lay_in)
            self.bind(ctx, "weight", in_dim, lay_in, FAN_OUT)
            if in_attr is not None:
                self.bind_attr(ctx, in_attr, lay_in)

    def first_call(self, ctx: RuleContext, layout: Layout | None) -> tuple[bool, Any]:
        return ctx.first_call(self.key, layout)

    def remember_call(self, ctx: RuleContext, inputs: list[Layout | None], output: Any) -> None:
        ctx.remember_call(self.key, inputs, output)


class ElementwiseLayer(LayerRule):
    """Activations, dropout, identity: one output position per input position."""

    def __init__(self, *, mode_free: bool = False, dead_at_zero: bool = False):
        self.mode_free = mode_free
        self.dead_at_zero = dead_at_zero

    def apply(self, ctx: RuleContext, name: str, module: nn.Module) -> Any:
        return families.elementwise(ctx, ctx.tensors(ctx.node.args))


class SpatialLayer(LayerRule):
    """Pooling, resizing, padding: batch and channels pass, spatial dims must carry no width."""

    def __init__(self, *, mode_free: bool = False):
        self.mode_free = mode_free

    def apply(self, ctx: RuleContext, name: str, module: nn.Module) -> Any:
        return families.spatial(ctx, _src(ctx), type(module).__name__)


class FlattenLayer(LayerRule):
    mode_free = True

    def apply(self, ctx: RuleContext, name: str, module: nn.Module) -> Any:
        return families.reshape(ctx, _src(ctx), None, f"nn.Flatten '{name}'")


class UnflattenLayer(LayerRule):
    def apply(self, ctx: RuleContext, name: str, module: nn.Unflatten) -> Any:
        src = _src(ctx)
        if not isinstance(src, TensorMeta):
            return ctx.unknown(f"Unflatten '{name}'")
        return families.unflatten(ctx, src, module.dim, module.unflattened_size)


class SoftmaxLayer(LayerRule):
    def apply(self, ctx: RuleContext, name: str, module: nn.Module) -> Any:
        dim = -3 if isinstance(module, nn.Softmax2d) else module.dim
        return families.softmax(ctx, _src(ctx), dim, f"{type(module).__name__} '{name}'")


class LocalResponseNormLayer(LayerRule):
    def apply(self, ctx: RuleContext, name: str, module: nn.Module) -> Any:
        src = _src(ctx)
        if not isinstance(src, TensorMeta):
            return ctx.unknown(f"{type(module).__name__} '{name}'")
        ctx.not_preserving(src.dims[1], f"LocalResponseNorm '{name}' mixes neighbouring channels")
        return TensorMeta(src.shape, src.dims)


class UnsupportedLayer(LayerRule):
    """A layer whose widths archgrow cannot grow: everything reaching it freezes, with ``why``."""

    def __init__(self, why: str, label: str | None = None):
        self.why = why
        self.label = label

    def apply(self, ctx: RuleContext, name: str, module: nn.Module) -> Any:
        return ctx.unknown(f"{self.label or type(module).__name__} '{name}' ({self.why})")


class TensorLayer(LayerRule):
    """A layer that needs one analysed tensor in and a tensor out (otherwise: no rule)."""

    def apply(self, ctx: RuleContext, name: str, module: nn.Module) -> Any:
        src = _src(ctx)
        out = ctx.out
        if not isinstance(src, TensorMeta) or not is_tensor(out):
            return ctx.unknown(f"{type(module).__name__} '{name}'")
        return self.layout(ctx, name, module, src, out[1])

    def layout(self, ctx: RuleContext, name: str, module: nn.Module, src: TensorMeta, shape: tuple[int, ...]) -> Any:
        raise NotImplementedError


class LinearLayer(TensorLayer):
    def layout(self, ctx: RuleContext, name: str, module: nn.Linear, src: TensorMeta, shape: tuple[int, ...]) -> Any:
        return self.apply_to(ctx, Owner(name, module), src, shape, module.out_features)

    def apply_to(self, ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...], out_features: int) -> Any:
        lay_in = src.dims[-1]
        again, first_out = owner.first_call(ctx, lay_in)
        if again:
            lay_out = first_out
        else:
            lay_out = ctx.new_width(out_features, owner.name)
            owner.remember_call(ctx, [lay_in], lay_out)
            owner.bind_weighted(ctx, lay_out, lay_in, out_dim=0, in_dim=1, out_attr="out_features", in_attr="in_features")
        return TensorMeta(shape, src.dims[:-1] + (lay_out,))


def _channels_out(src: TensorMeta, lay: Any, shape: tuple[int, ...]) -> TensorMeta:
    return TensorMeta(shape, (src.dims[0], lay) + (None,) * (len(shape) - 2))


class ConvLayer(TensorLayer):
    def layout(self, ctx: RuleContext, name: str, module: nn.Module, src: TensorMeta, shape: tuple[int, ...]) -> Any:
        owner = Owner(name, module)
        return self.apply_to(
            ctx, owner, src, shape, module.groups, module.in_channels, module.out_channels, same_length=_same_length(module)
        )

    def apply_to(
        self, ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...], groups: int, in_channels: int,
        out_channels: int, *, same_length: bool = False,
    ) -> Any:  # fmt: skip
        """``same_length``: stride 1 and "same" padding, so a width it slides over (ECA's conv1d
        along the channels) keeps one output per position and may grow."""
        name = owner.name
        out = self._channels(ctx, owner, src, shape, groups, in_channels, out_channels)
        slid = [d for d in range(2, src.ndim) if src.dims[d] is not None]
        if not slid or not isinstance(out, TensorMeta):
            return out
        if not same_length or len(shape) != src.ndim or any(shape[d] != src.shape[d] for d in slid):
            for d in slid:
                ctx.freeze(src.dims[d], f"conv '{name}' slides over a width dim with a stride or without 'same' padding")
            return out
        dims = list(out.dims)
        for d in slid:
            ctx.not_preserving(
                src.dims[d],
                f"conv '{name}' slides its kernel over this width (ECA's attention over channels): new channels "
                "change the outputs of the last old ones through the kernel's reach",
            )
            dims[d] = src.dims[d]
        return TensorMeta(out.shape, tuple(dims))

    def _channels(
        self, ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...], groups: int, in_channels: int,
        out_channels: int,
    ) -> Any:  # fmt: skip
        name = owner.name
        lay_in = src.dims[1]
        cin_g = in_channels // groups
        cout_g = out_channels // groups
        again, first_out = owner.first_call(ctx, lay_in)
        if again:
            return _channels_out(src, first_out, shape)
        if groups > 1 and cin_g == cout_g == 1 and lay_in is not None:
            # Depthwise: channels pass through, one group each, and growth adds whole groups at
            # the end of each grown segment.
            owner.remember_call(ctx, [lay_in], lay_in)
            owner.member(ctx, "follower", lay_in)
            owner.bind(ctx, "weight", 0, lay_in, FAN_IN)
            owner.bind(ctx, "bias", 0, lay_in, ZERO)
            for attr in ("in_channels", "out_channels", "groups"):
                owner.bind_attr(ctx, attr, lay_in)
            return _channels_out(src, lay_in, shape)
        if groups > 1:
            return self._per_group(ctx, owner, src, shape, groups, cin_g, cout_g)
        lay_out = ctx.new_width(out_channels, name)
        owner.remember_call(ctx, [lay_in], lay_out)
        owner.bind_weighted(ctx, lay_out, lay_in, out_dim=0, in_dim=1, out_attr="out_channels", in_attr="in_channels")
        return _channels_out(src, lay_out, shape)

    def _per_group(
        self, ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...], groups: int, cin_g: int,
        cout_g: int,
    ) -> Any:  # fmt: skip
        """A grouped conv other than a depthwise one (ResNeXt's and ResNeSt's grouped convs, a
        depthwise conv multiplying channels, one reading channels that never grow): every group
        grows alike, at the end of its own channels.  Its input is cut into ``groups`` equal parts
        (one width repeated) and its output is one width of ``cout_g`` channels repeated per
        group, so growth adds the same inputs, or outputs, to every group.  Growth never turns
        it into a depthwise conv (one in and one out per group), so a re-trace reads it alike."""
        name, vars_ = owner.name, ctx.vars
        lay_in = src.dims[1]
        lay_out = ctx.new_width(cout_g, name) * groups
        owner.remember_call(ctx, [lay_in], lay_out)
        if groups > families.MAX_REPEATS:
            reason = f"grouped conv '{name}' has {groups} groups; growing each alike would lay out {groups} runs"
            ctx.freeze(lay_in, reason)
            ctx.freeze(lay_out, reason)
        part = None
        if lay_in is not None:
            part = next(iter(families.equal_parts(ctx, vars_.resolve(lay_in), groups) or []), None)
            if part is None:
                ctx.freeze(
                    lay_in,
                    f"grouped conv '{name}' (groups={groups}) reads '{vars_.describe(lay_in)}', which does not cut into "
                    f"{groups} equal widths, one per group",
                )
        owner.bind_weighted(ctx, lay_out, part, out_dim=0, in_dim=1, out_attr="out_channels", in_attr=None)
        if part is not None:
            owner.bind_attr(ctx, "in_channels", vars_.resolve(lay_in))  # type: ignore[arg-type]
        return _channels_out(src, lay_out, shape)


def _same_length(module: nn.Module) -> bool:
    """Stride 1 and padding that keeps every spatial length (``2 * padding == dilation * (k - 1)``)."""
    stride, padding = getattr(module, "stride", None), getattr(module, "padding", None)
    kernel, dilation = getattr(module, "kernel_size", None), getattr(module, "dilation", None)
    if not isinstance(stride, tuple) or any(s != 1 for s in stride):
        return False
    if padding == "same":
        return True
    if not (isinstance(padding, tuple) and isinstance(kernel, tuple) and isinstance(dilation, tuple)):
        return False
    if getattr(module, "padding_mode", "zeros") != "zeros":
        return False
    return all(2 * p == d * (k - 1) for p, d, k in zip(padding, dilation, kernel, strict=False))


class ConvTransposeLayer(TensorLayer):
    def layout(self, ctx: RuleContext, name: str, module: nn.Module, src: TensorMeta, shape: tuple[int, ...]) -> Any:
        return self.apply_to(ctx, Owner(name, module), src, shape, module.groups, module.out_channels)

    def apply_to(
        self, ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...], groups: int, out_channels: int
    ) -> Any:
        name = owner.name
        lay_in = src.dims[1]
        again, first_out = owner.first_call(ctx, lay_in)
        if again:
            return _channels_out(src, first_out, shape)
        lay_out = ctx.new_width(out_channels, name)
        owner.remember_call(ctx, [lay_in], lay_out)
        if groups > 1:
            reason = f"grouped transposed conv '{name}' is not supported"
            ctx.freeze(lay_in, reason)
            ctx.freeze(lay_out, reason)
        consumed = lay_in if groups == 1 else None
        owner.bind_weighted(ctx, lay_out, consumed, out_dim=1, in_dim=0, out_attr="out_channels", in_attr="in_channels")
        return _channels_out(src, lay_out, shape)


class EmbeddingLayer(TensorLayer):
    def layout(self, ctx: RuleContext, name: str, module: nn.Embedding, src: TensorMeta, shape: tuple[int, ...]) -> Any:
        return self.apply_to(ctx, Owner(name, module), src, shape, module.embedding_dim)

    def apply_to(self, ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...], embedding_dim: int) -> Any:
        again, first_out = owner.first_call(ctx, None)
        if again:
            lay_out = first_out
        else:
            lay_out = ctx.new_width(embedding_dim, owner.name)
            owner.remember_call(ctx, [None], lay_out)
            owner.member(ctx, "producer", lay_out)
            owner.bind(ctx, "weight", 1, lay_out, FAN_IN)
            owner.bind_attr(ctx, "embedding_dim", lay_out)
        return TensorMeta(shape, src.dims + (lay_out,))


class ChannelFollowerLayer(TensorLayer):
    """Per-channel tensors on dim 1 of the input (batch norm, PReLU with one slope per channel)."""

    def __init__(self, roles: dict[str, str], attr: str, *, normalizes: bool = False):
        self.roles = roles
        self.attr = attr
        self.normalizes = normalizes

    def layout(self, ctx: RuleContext, name: str, module: nn.Module, src: TensorMeta, shape: tuple[int, ...]) -> Any:
        if src.ndim < 2:
            return ctx.unknown(f"{type(module).__name__} '{name}' on a 1-d input")
        return self.apply_to(ctx, Owner(name, module), src, shape)

    def apply_to(self, ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...]) -> Any:
        lay = src.dims[1]
        if owner.stateless:
            return TensorMeta(shape, src.dims)  # e.g. InstanceNorm without affine: per channel
        again, _ = owner.first_call(ctx, lay)
        if not again:
            owner.remember_call(ctx, [lay], None)
            if lay is not None:
                owner.member(ctx, "follower", lay)
                for tensor, role in self.roles.items():
                    owner.bind(ctx, tensor, 0, lay, role)
                owner.bind_attr(ctx, self.attr, lay)
        return TensorMeta(shape, src.dims)


class GLULayer(TensorLayer):
    """``a * sigmoid(b)`` of the two halves of ``dim``: an equal split of the width (see ``families.gated``)."""

    mode_free = True

    def layout(self, ctx: RuleContext, name: str, module: nn.GLU, src: TensorMeta, shape: tuple[int, ...]) -> Any:
        return families.gated(ctx, src, module.dim, f"nn.GLU '{name}'")


class PReLULayer(LayerRule):
    """One shared slope: element-wise; one per channel: a channel follower."""

    per_channel = ChannelFollowerLayer({"weight": MEAN}, "num_parameters")

    def apply(self, ctx: RuleContext, name: str, module: nn.PReLU) -> Any:
        if module.num_parameters == 1:
            return families.elementwise(ctx, ctx.tensors(ctx.node.args))
        return self.per_channel.apply(ctx, name, module)


class GroupNormLayer(TensorLayer):
    normalizes = True

    def layout(self, ctx: RuleContext, name: str, module: nn.GroupNorm, src: TensorMeta, shape: tuple[int, ...]) -> Any:
        return self.apply_to(ctx, Owner(name, module), src, shape, module.num_groups, module.num_channels)

    def apply_to(
        self, ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...], num_groups: int, num_channels: int
    ) -> Any:
        name = owner.name
        lay = src.dims[1]
        again, _ = owner.first_call(ctx, lay)
        if not again:
            owner.remember_call(ctx, [lay], None)
            if lay is not None:
                owner.member(ctx, "follower", lay)
                owner.bind(ctx, "weight", 0, lay, ONE)
                owner.bind(ctx, "bias", 0, lay, ZERO)
                owner.bind_attr(ctx, "num_channels", lay)
                cpg = num_channels // num_groups
                if num_groups == 1:
                    ctx.not_preserving(lay, f"GroupNorm '{name}' with one group normalises over it")
                else:
                    # New channels form new groups of the same size: old groups are untouched.
                    vars_ = ctx.vars
                    offsets = [sum(vars_.seg_size(x) for x in lay[:i]) for i in range(len(lay) + 1)]
                    if any(o % cpg for o in offsets):
                        ctx.freeze(lay, f"GroupNorm '{name}' groups straddle its input parts")
                    for v in vars_.layout_vars(lay):
                        vars_.require_step(v, cpg, f"GroupNorm '{name}' has {cpg} channels per group")
                    owner.bind_attr(ctx, "num_groups", lay, divisor=cpg)
        return TensorMeta(shape, src.dims)


class LayerNormLayer(TensorLayer):
    normalizes = True

    def layout(self, ctx: RuleContext, name: str, module: nn.Module, src: TensorMeta, shape: tuple[int, ...]) -> Any:
        return self.apply_to(ctx, Owner(name, module), src, shape, len(module.normalized_shape))

    def apply_to(self, ctx: RuleContext, owner: Owner, src: TensorMeta, shape: tuple[int, ...], n_norm: int) -> Any:
        name = owner.name
        lay = src.dims[-1]
        kind = owner.kind
        for d in range(src.ndim - n_norm, src.ndim - 1):
            ctx.freeze(src.dims[d], f"{kind} '{name}' normalises over several dims including a width")
        again, _ = owner.first_call(ctx, lay)
        if not again:
            owner.remember_call(ctx, [lay], None)
            if lay is not None:
                if n_norm > 1:
                    ctx.freeze(lay, f"{kind} '{name}' normalises over several dims")
                ctx.not_preserving(lay, f"{kind} '{name}' normalises over it")
                owner.member(ctx, "follower", lay)
                owner.bind(ctx, "weight", n_norm - 1, lay, ONE)
                owner.bind(ctx, "bias", n_norm - 1, lay, ZERO)
                owner.bind_attr(ctx, "normalized_shape", lay, index=-1)
        return TensorMeta(shape, src.dims)


class MultiheadAttentionLayer(LayerRule):
    """``nn.MultiheadAttention`` with one embed dim (``kdim == vdim == embed_dim``): its packed
    ``in_proj_weight`` is ``(3 * embed_dim, embed_dim)`` and ``out_proj`` maps ``embed_dim`` back,
    so the heads *are* the embedding width it reads and writes.  That width grows by whole heads
    (``WidthVars.coarsen``): each new head takes ``head_dim`` rows at the end of the q, k and v
    blocks and ``head_dim`` columns of ``out_proj`` (zero: the new head changes nothing), and
    ``head_dim`` new columns of ``in_proj_weight`` (zero) and rows of ``out_proj`` (new
    embedding channels).  Attention weights averaged over heads (``need_weights``), when used,
    change with a new head."""

    def apply(self, ctx: RuleContext, name: str, module: nn.MultiheadAttention) -> Any:
        node = ctx.node
        metas = [ctx.meta(node.args[i] if len(node.args) > i else node.kwargs.get(n)) for i, n in enumerate(("query", "key", "value"))]
        out = ctx.out
        if not all(isinstance(t, TensorMeta) for t in metas) or not isinstance(out, (tuple, list)) or not is_tensor(out[0]):
            return ctx.unknown(f"nn.MultiheadAttention '{name}'")
        if not (module.kdim == module.vdim == module.embed_dim) or module.in_proj_weight is None:
            return ctx.unknown(f"nn.MultiheadAttention '{name}' (kdim or vdim differ from embed_dim: separate projections)")
        for t in metas:
            for lay in t.dims[:-1]:
                ctx.freeze(lay, f"nn.MultiheadAttention '{name}' attends over a width dim")
        lay = ctx.unify_all([t.dims[-1] for t in metas])
        again, first_out = ctx.first_call(name, lay)
        if again or lay is None:
            return (TensorMeta(out[0][1], metas[0].dims[:-1] + (first_out if again else None,)), *(ctx.fixed()[1:]))
        hd = module.head_dim
        resolved = ctx.vars.resolve(lay)
        seg = resolved[0]
        found = ctx.vars.parts.get(ctx.vars.find(seg.var)) if seg.var is not None else None
        if len(resolved) != 1 or seg.var is None or seg.inner not in (1, hd) or (
            seg.inner == 1 and found is not None and (len(found) != 1 or found[0].inner != hd)
        ):
            reason = (
                f"nn.MultiheadAttention '{name}' grows its embedding by whole heads of {hd} channels, and its input "
                f"'{ctx.vars.describe(lay)}' is not one width that can be counted in heads"
            )
            ctx.freeze(lay, reason)
            ctx.remember_call(name, [lay], lay)
            return (TensorMeta(out[0][1], metas[0].dims[:-1] + (lay,)), *(ctx.fixed()[1:]))
        unit = seg.var if seg.inner == hd else ctx.vars.coarsen(seg.var, hd)[0].var
        assert unit is not None
        embed: Layout = (Seg(unit, hd),)
        ctx.remember_call(name, [lay], lay)
        proj = f"{name}.out_proj"
        ctx.member(name, module, "producer", embed)
        ctx.member(name, module, "consumer", embed)
        ctx.bind(name, module, "in_proj_weight", 0, embed * 3, FAN_IN)
        ctx.bind(name, module, "in_proj_bias", 0, embed * 3, ZERO)
        ctx.bind(name, module, "in_proj_weight", 1, embed, FAN_OUT)
        ctx.bind(proj, module.out_proj, "weight", 0, embed, FAN_IN)
        ctx.bind(proj, module.out_proj, "bias", 0, embed, ZERO)
        ctx.bind(proj, module.out_proj, "weight", 1, embed, FAN_OUT)
        for attr in ("embed_dim", "kdim", "vdim"):
            ctx.bind_attr(name, attr, embed)
        ctx.bind_attr(name, "num_heads", (Seg(unit),))
        ctx.bind_attr(proj, "in_features", embed)
        ctx.bind_attr(proj, "out_features", embed)
        for user in node.users:
            if user.target is operator.getitem and user.args[1] == 1 and user.users:
                ctx.not_preserving(embed, f"nn.MultiheadAttention '{name}' returns attention weights averaged over its heads, used at node '{user.name}'")
        return (TensorMeta(out[0][1], metas[0].dims[:-1] + (embed,)), *(ctx.fixed()[1:]))


def _nn(names: str) -> list[type]:
    return [getattr(nn, n) for n in names.split() if hasattr(nn, n)]


_MODE_FREE_ELEMENTWISE = set(
    _nn("ReLU ReLU6 LeakyReLU ELU SELU CELU GELU SiLU Mish Hardswish Hardsigmoid Hardtanh Sigmoid Tanh Softplus Softsign Threshold Identity")
)
_DEAD_AT_ZERO = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Threshold)
_MODE_FREE_POOLS = (
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)  # fmt: skip


# What a new channel of a batch or instance norm starts from: the identity (scale 1, shift 0) and
# statistics of a unit-variance, zero-mean channel.
NORM_ROLES = {"weight": ONE, "bias": ZERO, "running_mean": ZERO, "running_var": ONE}


def register_builtin_layers(table: OpTable) -> None:
    elementwise = _nn(
        "ReLU ReLU6 GELU SiLU Mish Hardswish Hardsigmoid Hardtanh LeakyReLU ELU SELU CELU Sigmoid Tanh Softplus "
        "Softsign Tanhshrink Softshrink Hardshrink LogSigmoid Threshold RReLU Identity Dropout Dropout1d Dropout2d "
        "Dropout3d AlphaDropout FeatureAlphaDropout"
    )
    for t in elementwise:
        rule = ElementwiseLayer(mode_free=t in _MODE_FREE_ELEMENTWISE, dead_at_zero=issubclass(t, _DEAD_AT_ZERO))
        table.add_layer(t, rule)
    spatial = _nn(
        "MaxPool1d MaxPool2d MaxPool3d AvgPool1d AvgPool2d AvgPool3d AdaptiveAvgPool1d AdaptiveAvgPool2d "
        "AdaptiveAvgPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d LPPool1d LPPool2d LPPool3d "
        "FractionalMaxPool2d FractionalMaxPool3d Upsample UpsamplingNearest2d UpsamplingBilinear2d ZeroPad1d "
        "ZeroPad2d ZeroPad3d ConstantPad1d ConstantPad2d ConstantPad3d ReflectionPad1d ReflectionPad2d "
        "ReflectionPad3d ReplicationPad1d ReplicationPad2d ReplicationPad3d CircularPad1d CircularPad2d CircularPad3d"
    )
    for t in spatial:
        table.add_layer(t, SpatialLayer(mode_free=issubclass(t, _MODE_FREE_POOLS)))
    table.add_layer(nn.Flatten, FlattenLayer())
    table.add_layer(nn.Unflatten, UnflattenLayer())
    for t in (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d):
        table.add_layer(t, SoftmaxLayer())
    table.add_layer(nn.LocalResponseNorm, LocalResponseNormLayer())
    for t in _nn("PixelShuffle PixelUnshuffle ChannelShuffle"):
        table.add_layer(t, UnsupportedLayer("mixes channels across positions"))
    table.add_layer(nn.MultiheadAttention, MultiheadAttentionLayer())
    for t in (nn.RNNBase, nn.RNNCellBase):
        table.add_layer(t, UnsupportedLayer("recurrent layers are not supported"))
    table.add_layer(nn.Linear, LinearLayer())
    for t in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        table.add_layer(t, ConvLayer())
    for t in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
        table.add_layer(t, ConvTransposeLayer())
    table.add_layer(nn.Embedding, EmbeddingLayer())
    table.add_layer(  # BatchNorm, SyncBatchNorm, InstanceNorm
        nn.modules.batchnorm._NormBase, ChannelFollowerLayer(NORM_ROLES, "num_features", normalizes=True)
    )
    table.add_layer(nn.PReLU, PReLULayer())
    table.add_layer(nn.GLU, GLULayer())
    table.add_layer(nn.GroupNorm, GroupNormLayer())
    for t in _nn("LayerNorm RMSNorm"):
        table.add_layer(t, LayerNormLayer())


register_builtin_layers(OPS)

__all__ = [
    "NORM_ROLES",
    "ChannelFollowerLayer",
    "ConvLayer",
    "ConvTransposeLayer",
    "ElementwiseLayer",
    "EmbeddingLayer",
    "GLULayer",
    "GroupNormLayer",
    "LayerNormLayer",
    "LinearLayer",
    "MultiheadAttentionLayer",
    "Owner",
    "SpatialLayer",
    "TensorLayer",
    "UnsupportedLayer",
    "register_builtin_layers",
]
