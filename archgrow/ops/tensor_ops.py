"""Torch functions, ``Tensor`` methods and operators: each spelling decoded and given its family.

A function and its method spelling share one rule wherever their arguments line up
(``torch.sum(x, dim)`` / ``x.sum(dim)``: the tensor is ``args[0]`` either way).  Anything not
registered here (or by a user) has no rule: widths reaching it freeze with a reason naming the op.
Nothing is ever guessed to be element-wise (Torch-Pruning's silent default is the source of most
of its wrong groups).
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from archgrow.ir.attribute_sizes import size_source
from archgrow.ir.layout import TensorMeta
from archgrow.ops import cuts, families
from archgrow.ops.context import NoRule, RuleContext, arg, fixed, is_tensor, norm_dim
from archgrow.ops.registry import OPS, OpInfo, OpTable


def existing_attrs(owner: Any, names: str) -> list[Any]:
    """The attributes of ``owner`` among ``names`` (torch versions differ in what they have)."""
    return [getattr(owner, n) for n in names.split() if hasattr(owner, n)]


def function_name(fn: Any) -> str:
    """Readable name of a call_function target, for reasons and summaries."""
    if isinstance(fn, torch._ops.OpOverload):
        return str(fn)  # aten.linear.default (the torch.export front-end)
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__name__", repr(fn))
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    if module.startswith("torch"):
        return f"torch.{name}"
    return f"{module}.{name}" if module else name


def op_name(ctx: RuleContext) -> str:
    node = ctx.node
    return function_name(node.target) if node.op == "call_function" else f"Tensor.{node.target}"


def _src(ctx: RuleContext) -> Any:
    return ctx.meta(ctx.node.args[0])


# --------------------------------------------------------------------------- rules by family
def elementwise_rule(ctx: RuleContext) -> Any:
    node = ctx.node
    if is_tensor(ctx.out):
        return families.elementwise(ctx, ctx.tensors(node.args, node.kwargs))
    _same_size(ctx)
    return ctx.fixed()


def _same_size(ctx: RuleContext) -> None:
    """``C // 1`` or ``C * 1`` of a size read from a tensor (``C // self.num_heads`` with one
    head) is that size: it follows growth as ``C`` does."""
    node, state = ctx.node, ctx.state
    if node.target not in (operator.floordiv, operator.mul) or len(node.args) != 2 or node.kwargs:
        return
    size, other = node.args
    if node.target is operator.mul and isinstance(other, fx.Node):
        size, other = other, size
    if isinstance(size, fx.Node) and state.size_layout.get(size) is not None and type(other) is not bool and isinstance(other, int) and other == 1:
        state.size_layout[node] = state.size_layout[size]


def per_sample_rule(ctx: RuleContext) -> Any:
    """Scales each sample (stochastic depth): element-wise in its tensor argument."""
    return families.elementwise(ctx, ctx.tensors(ctx.node.args[0]))


def like_rule(ctx: RuleContext) -> Any:
    src = _src(ctx)
    return TensorMeta(src.shape, src.dims) if isinstance(src, TensorMeta) else ctx.fixed()


def receiver_rule(ctx: RuleContext) -> Any:
    """Methods returning a tensor of the receiver's shape whatever the other arguments are."""
    src = _src(ctx)
    return TensorMeta(src.shape, src.dims) if is_tensor(ctx.out) else ctx.fixed()


def reduction_rule(ctx: RuleContext) -> Any:
    node = ctx.node
    return families.reduction(ctx, _src(ctx), arg(node, 1, "dim"), arg(node, 2, "keepdim", False), op_name(ctx))


def minmax_rule(ctx: RuleContext) -> Any:
    """``max``/``min``: element-wise between two tensors, a reduction with a dim."""
    node = ctx.node
    if len(ctx.tensors(node.args[:2])) == 2:
        return families.elementwise(ctx, ctx.tensors(node.args[:2]))
    return reduction_rule(ctx)


def softmax_rule(ctx: RuleContext) -> Any:
    default = 1 if ctx.node.target is F.normalize else None
    return families.softmax(ctx, _src(ctx), arg(ctx.node, 1, "dim", default), op_name(ctx))


def cat_rule(ctx: RuleContext) -> Any:
    node = ctx.node
    return families.cat(ctx, arg(node, 0, "tensors"), arg(node, 1, "dim", node.kwargs.get("axis", 0)))


def stack_rule(ctx: RuleContext) -> Any:
    node = ctx.node
    return families.stack(ctx, arg(node, 0, "tensors"), arg(node, 1, "dim", node.kwargs.get("axis", 0)))


def chunk_rule(ctx: RuleContext) -> Any:
    """``x.chunk(n, dim)``: ``n`` equal parts whatever the width (when it is a multiple of ``n``)."""
    node = ctx.node
    chunks = arg(node, 1, "chunks")
    n = chunks if _is_int(chunks) else None
    dim = arg(node, 2, "dim", 0)
    return families.equal_split(ctx, _src(ctx), dim, n, op_name(ctx), "a chunk count computed in the forward")


def tensor_split_rule(ctx: RuleContext) -> Any:
    """``torch.tensor_split(x, n, dim)``: ``n`` equal parts; split points given as indices are fixed."""
    node = ctx.node
    kw = node.kwargs
    named = kw.get("sections", kw.get("indices", kw.get("tensor_indices_or_sections")))
    given = arg(node, 1, "indices_or_sections", named)
    n = given if _is_int(given) else None
    dim = arg(node, 2, "dim", 0)
    return families.equal_split(ctx, _src(ctx), dim, n, op_name(ctx), f"split points {_shown(ctx, given)}")


def split_rule(ctx: RuleContext) -> Any:
    """``x.split(size, dim)`` / ``split_with_sizes``: equal parts that follow growth only when each size
    is read from the split dim itself (``x.size(dim) // n``); a size written in the code stays fixed."""
    node = ctx.node
    kw = node.kwargs
    sizes = arg(node, 1, "split_size_or_sections", kw.get("split_size", kw.get("split_sizes")))
    src, dim = _src(ctx), arg(node, 2, "dim", 0)
    n = None
    attribute: tuple[str, str] | None = None
    if isinstance(src, TensorMeta) and isinstance(dim, int) and src.dims[norm_dim(dim, src.ndim)] is not None:
        d = norm_dim(dim, src.ndim)
        items = list(sizes) if isinstance(sizes, (tuple, list)) else [sizes]
        counts = {_parts_of_size(ctx, size, src.dims[d]) for size in items}
        if len(counts) == 1 and None not in counts and (len(items) == 1 or len(items) in counts):
            n = counts.pop()
        elif _is_int(sizes) and sizes > 0 and src.shape[d] % sizes == 0:
            source = size_source(sizes)  # split(self.width, 1), split(self.expand_chs // 2, 1)
            if source is not None:
                n = src.shape[d] // sizes
            else:
                path, found = ctx.size_attributes(sizes, "part")  # split(self.split_size) by value
                if len(found) == 1:
                    n, attribute = src.shape[d] // sizes, (path, found[0])
        elif isinstance(sizes, (tuple, list)) and len(items) > 1 and _followed(ctx, items):
            out = ctx.out
            pieces = cuts.sourced_split(ctx, src.dims[d], items, op_name(ctx))
            if pieces is not None and isinstance(out, (tuple, list)) and all(is_tensor(o) for o in out):
                return tuple(
                    TensorMeta(o[1], src.dims[:d] + (p,) + src.dims[d + 1 :]) for o, p in zip(out, pieces, strict=True)
                )
            return families.cut(ctx, src, d)
    what = "sizes" if isinstance(sizes, (tuple, list)) else "size"
    out = families.equal_split(ctx, src, dim, n, op_name(ctx), f"split {what} {_shown(ctx, sizes)}")
    part = out[0].dims[norm_dim(dim, src.ndim)] if isinstance(out, tuple) and out and isinstance(out[0], TensorMeta) else None
    if part is not None and attribute is not None:
        ctx.bind_attr(*attribute, part)
    elif part is not None and size_source(sizes) is not None:
        ctx.bind_source(size_source(sizes), part, f"the size of a part of {op_name(ctx)} at {ctx.where}")  # type: ignore[arg-type]
    return out


def unbind_rule(ctx: RuleContext) -> Any:
    """One tensor per entry of ``dim``: along a width, the code takes a fixed number of them."""
    src, dim = _src(ctx), arg(ctx.node, 1, "dim", 0)
    if not isinstance(src, TensorMeta) or not isinstance(dim, int):
        return ctx.unknown(op_name(ctx))
    d = norm_dim(dim, src.ndim)
    ctx.freeze(
        src.dims[d],
        f"{op_name(ctx)} at {ctx.where} returns one tensor per channel of a width dim, and the code uses a fixed "
        f"number of them; {families.EQUAL_SPLITS_HINT}",
    )
    return families.cut(ctx, src, d)


def glu_rule(ctx: RuleContext) -> Any:
    return families.gated(ctx, _src(ctx), arg(ctx.node, 1, "dim", -1), op_name(ctx))


def _followed(ctx: RuleContext, items: list[Any]) -> bool:
    """Split sizes of which at least one follows something (a module attribute, a tensor's size)
    and the others are numbers or follow too: each part then grows, or stays, on its own."""
    known = [size_source(s) is not None or (isinstance(s, fx.Node) and ctx.state.size_layout.get(s) is not None) for s in items]
    return any(known) and all(k or _is_int(s) for k, s in zip(known, items, strict=True))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parts_of_size(ctx: RuleContext, size: Any, lay: Any) -> int | None:
    """``n`` when ``size`` is ``x.size(dim) // n`` read from the dim being split (it follows growth)."""
    if not (isinstance(size, fx.Node) and size.op == "call_function" and size.target is operator.floordiv):
        return None
    whole, n = size.args
    if not _is_int(n) or n < 1 or not ctx.adaptive(whole, lay):
        return None
    ctx.consumed.add(size)
    return n


def _shown(ctx: RuleContext, given: Any) -> Any:
    """A size argument as the numbers it had in the traced forward."""
    if isinstance(given, (tuple, list)):
        return [_shown(ctx, g) for g in given]
    return ctx.state.values.get(given, given) if isinstance(given, fx.Node) else given


def matmul_rule(ctx: RuleContext) -> Any:
    """``a @ b``, ``torch.matmul``, ``torch.bmm``: batched matrix products (attention scores, attention @ v)."""
    node = ctx.node
    return families.matmul(ctx, ctx.meta(arg(node, 0, "input")), ctx.meta(arg(node, 1, "other", node.kwargs.get("mat2"))), op_name(ctx))


def einsum_rule(ctx: RuleContext) -> Any:
    """``torch.einsum(equation, *operands)`` (or with the operands in one list)."""
    node = ctx.node
    equation = arg(node, 0, "equation")
    rest = node.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = tuple(rest[0])
    return families.einsum(ctx, equation, [ctx.meta(a) for a in rest], op_name(ctx))


def sdpa_rule(ctx: RuleContext) -> Any:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask, ...)``."""
    node = ctx.node
    q, k, v = (ctx.meta(arg(node, i, n)) for i, n in enumerate(("query", "key", "value")))
    grouped = arg(node, 7, "enable_gqa", False) is True
    return families.attention(ctx, q, k, v, ctx.meta(arg(node, 3, "attn_mask")), op_name(ctx), grouped=grouped)


def repeat_interleave_rule(ctx: RuleContext) -> Any:
    """``x.repeat_interleave(n, dim)`` with a number of repeats: each position along ``dim``
    repeated ``n`` times in place (grouped-query attention's k and v heads); repeats given as a
    tensor, or no dim (the flattened tensor), have no width rule."""
    node = ctx.node
    src, repeats, dim = _src(ctx), arg(node, 1, "repeats"), arg(node, 2, "dim")
    if not isinstance(src, TensorMeta) or not _is_int(repeats) or repeats < 1 or not _is_int(dim):
        return ctx.unknown(f"{op_name(ctx)} (repeats given as a tensor, or without a dim)")
    d = norm_dim(dim, src.ndim)
    out = families.repeated(src, d, repeats)
    if not is_tensor(ctx.out) or out.shape != ctx.out[1]:
        return ctx.unknown(op_name(ctx))
    given = arg(node, 3, "output_size")
    if given is not None and out.dims[d] is not None and not ctx.follows(given, out.dims[d]):
        ctx.freeze(out.dims[d], f"{op_name(ctx)} at {ctx.where} gives output_size={given!r}, a number that would not follow growth; leave it out")
    return out


def narrow_rule(ctx: RuleContext) -> Any:
    return families.split(ctx, _src(ctx), arg(ctx.node, 1, "dim", 0), op_name(ctx))


def flatten_rule(ctx: RuleContext) -> Any:
    """flatten / squeeze / unsqueeze: no sizes given, every width dim follows."""
    return families.reshape(ctx, _src(ctx), None, op_name(ctx))


def reshape_rule(ctx: RuleContext) -> Any:
    node = ctx.node
    if node.op == "call_method" and len(node.args) == 2 and isinstance(node.args[1], torch.dtype):
        return ctx.unknown(f"Tensor.{node.target}(dtype)")
    return families.reshape(ctx, _src(ctx), ctx.shape_args(node.args[1:], node.kwargs.get("shape")), op_name(ctx))


def as_rule(ctx: RuleContext) -> Any:
    """view_as / reshape_as (expand_as is element-wise with the other tensor)."""
    src, other = _src(ctx), ctx.meta(ctx.node.args[1])
    if ctx.node.target == "expand_as":
        return families.elementwise(ctx, [src, other])
    return families.reshape(ctx, src, [-1] * other.ndim if src.shape == other.shape else None, op_name(ctx))


def unflatten_rule(ctx: RuleContext) -> Any:
    return families.unflatten(ctx, _src(ctx), ctx.node.args[1], ctx.node.args[2])


def permute_rule(ctx: RuleContext) -> Any:
    node = ctx.node
    if node.op == "call_function":
        return families.permute(ctx, _src(ctx), arg(node, 1, "dims"))
    dims = node.kwargs.get("dims", node.args[1:])
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = dims[0]
    return families.permute(ctx, _src(ctx), dims)


def transpose_rule(ctx: RuleContext) -> Any:
    return families.transpose(ctx, _src(ctx), arg(ctx.node, 1, "dim0"), arg(ctx.node, 2, "dim1"))


def matrix_transpose_rule(ctx: RuleContext) -> Any:
    """``x.t()``, ``x.T``, ``x.mT``: the last two dims."""
    src = _src(ctx)
    return families.transpose(ctx, src, -2, -1) if src.ndim >= 2 else src


def expand_rule(ctx: RuleContext) -> Any:
    node = ctx.node
    sizes = ctx.shape_args(node.args[1:], node.kwargs.get("size"))
    if sizes is None:
        raise NoRule("Tensor.expand(other.size())")
    return families.expand(ctx, _src(ctx), sizes)


def repeat_rule(ctx: RuleContext) -> Any:
    ctx.shape_args(ctx.node.args[1:], None)  # x.repeat(y.size()): the sizes are used, not frozen for it
    return families.repeat(ctx, _src(ctx), op_name(ctx))


def spatial_rule(ctx: RuleContext) -> Any:
    return families.spatial(ctx, _src(ctx), op_name(ctx))


def reorder_rule(ctx: RuleContext) -> Any:
    """``torch.roll(x, shifts, dims)`` / ``torch.flip(x, dims)``: positions move along ``dims``
    (Swin's shifted windows roll the spatial dims); a width there would move its channels, and
    ``roll`` without dims moves positions across every dim."""
    node = ctx.node
    src, out = _src(ctx), ctx.out
    name = op_name(ctx)
    dims = arg(node, 2, "dims", None) if "roll" in name else arg(node, 1, "dims", None)
    if not isinstance(src, TensorMeta) or not is_tensor(out):
        return ctx.unknown(name)
    moved = range(src.ndim) if dims is None else [dims] if isinstance(dims, int) else list(dims)
    dims_out = list(src.dims)
    for d in moved:
        k = norm_dim(d, src.ndim)
        if dims_out[k] is not None:
            ctx.freeze(dims_out[k], f"{name} at {ctx.where} moves positions along a width dim")
            dims_out[k] = None
    return TensorMeta(out[1], tuple(dims_out))


def pad_rule(ctx: RuleContext) -> Any:
    return families.pad(ctx, _src(ctx), arg(ctx.node, 1, "pad"), op_name(ctx))


def creation_rule(ctx: RuleContext) -> Any:
    return families.creation(ctx, ctx.node)


def new_creation_rule(ctx: RuleContext) -> Any:
    """``x.new_empty(shape)`` and friends (DropPath's per-sample mask): sized by their arguments."""
    return families.creation(ctx, ctx.node, first=1)


def shuffle_rule(ctx: RuleContext) -> Any:
    return ctx.unknown(f"{op_name(ctx)} (mixes channels across positions)")


def shape_rule(ctx: RuleContext) -> Any:
    """``x.size()`` / ``x.size(d)``: ints that follow growth if used as sizes, else freeze it."""
    node, state = ctx.node, ctx.state
    src = _src(ctx)
    dim = arg(node, 1, "dim")
    if dim is None:
        state.shape_of[node] = src
        state.taint[node] = list(src.dims)
    else:
        state.size_layout[node] = src.dims[norm_dim(dim, src.ndim)]
        state.taint[node] = [state.size_layout[node]]
    return ctx.out


def scalar_rule(ctx: RuleContext) -> Any:
    """Methods returning plain numbers (``dim``, ``numel``...): no width."""
    return ctx.out


def getitem_rule(ctx: RuleContext) -> Any:
    node, state = ctx.node, ctx.state
    obj, idx = node.args[0], node.args[1]
    src = ctx.meta(obj)
    out = ctx.out
    if isinstance(obj, fx.Node) and obj in state.shape_of and isinstance(idx, int):
        meta = state.shape_of[obj]
        state.size_layout[node] = meta.dims[norm_dim(idx, meta.ndim)]
        state.taint[node] = [state.size_layout[node]]
        ctx.consumed.add(obj)
        return out
    if isinstance(obj, fx.Node) and obj in state.shape_of and isinstance(idx, slice):
        meta = state.shape_of[obj]  # x.shape[:-1]: the shape of those dims
        state.shape_of[node] = TensorMeta(meta.shape[idx], meta.dims[idx])
        state.taint[node] = list(meta.dims[idx])
        ctx.consumed.add(obj)
        return out
    if isinstance(src, TensorMeta):
        return families.index(ctx, src, idx)
    if isinstance(src, (tuple, list)) and isinstance(idx, int):
        return src[idx]
    if isinstance(src, dict) and idx in src:
        return src[idx]
    if isinstance(src, (tuple, list)) and isinstance(idx, slice):
        return src[idx]
    return fixed(out)


def getattr_rule(ctx: RuleContext) -> Any:
    node, state = ctx.node, ctx.state
    src, attr = ctx.meta(node.args[0]), node.args[1]
    if isinstance(src, TensorMeta):
        if attr == "shape":
            state.shape_of[node] = src
            state.taint[node] = list(src.dims)
            return ctx.out
        if attr in ("T", "mT"):
            return families.transpose(ctx, src, -2, -1)
        if attr in ("data",):
            return TensorMeta(src.shape, src.dims)
    return ctx.fixed()


# --------------------------------------------------------------------------- names by family
_UNARY_MATH = (
    "abs neg exp exp2 expm1 log log1p log2 log10 sqrt rsqrt sigmoid tanh relu sin cos tan erf erfc "
    "sign sgn floor ceil round trunc frac reciprocal square clamp clip clamp_min clamp_max "
    "nan_to_num logical_not bitwise_not isnan isinf isfinite positive"
)
_BINARY_MATH = (
    "add sub subtract mul multiply div divide true_divide floor_divide remainder fmod pow "
    "maximum minimum fmax fmin where lerp addcmul addcdiv masked_fill logical_and logical_or "
    "logical_xor eq ne lt le gt ge atan2 hypot copysign xlogy"
)
_F_ACTIVATIONS = (
    "relu relu6 gelu silu mish hardswish hardsigmoid hardtanh leaky_relu elu selu celu softplus "
    "softsign tanhshrink softshrink hardshrink sigmoid tanh logsigmoid threshold rrelu dropout "
    "dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout relu_ elu_ leaky_relu_ "
    "hardtanh_ threshold_"
)
_OPERATORS = (
    "add sub mul truediv floordiv mod pow neg pos abs iadd isub imul itruediv ifloordiv "
    "and_ or_ xor invert eq ne lt le gt ge"
)
_DROPOUTS = "dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout"
# Scale their input (a parameter used through one is a scale: new entries take the mean).
_MULTIPLICATIVE_FUNCTIONS = {"mul", "multiply", "div", "divide", "true_divide", "truediv", "imul", "itruediv"}
_MULTIPLICATIVE_METHODS = {"mul", "mul_", "div", "div_", "multiply", "divide"}
# Gradient 0 at 0: a unit with zero fan-in behind one of these never learns (GradMax, §6.1).
_DEAD_AT_ZERO = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "threshold", "threshold_", "clamp", "clamp_min", "clip"}

ELEMENTWISE_FUNCTIONS = (
    existing_attrs(torch, _UNARY_MATH + " " + _BINARY_MATH + " relu_ sigmoid_ tanh_ dropout")
    + existing_attrs(F, _F_ACTIVATIONS)
    + existing_attrs(operator, _OPERATORS)
)
ELEMENTWISE_METHODS = set(_UNARY_MATH.split()) | set(_BINARY_MATH.split()) | {
    "relu6", "gelu", "silu", "hardswish", "hardsigmoid", "softplus", "leaky_relu", "elu", "bernoulli", "zero",
    "fill", "uniform", "normal", "copy",
}  # fmt: skip
RECEIVER_SHAPE_METHODS = {
    "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type", "type_as", "cpu", "cuda",
    "requires_grad_", "zero_", "fill_", "bernoulli_", "uniform_", "normal_", "copy_", "div_", "masked_fill_",
    "clamp_", "relu_", "sigmoid_", "tanh_", "exp_", "sqrt_", "pin_memory", "share_memory_", "float_power",
}  # fmt: skip
REDUCTIONS = "mean sum amax amin prod std var norm logsumexp all any nansum nanmean count_nonzero"


def _flags(name: str, info: OpInfo, multiplicative: set[str]) -> OpInfo:
    """The facts that follow from an op's name."""
    return OpInfo(
        info.rule,
        elementwise=info.elementwise,
        random=info.random,
        identity_in_eval=name in _DROPOUTS.split(),
        dead_at_zero=name in _DEAD_AT_ZERO,
        multiplicative=name in multiplicative,
    )


def _functions(table: OpTable, fns: Iterable[Any], rule: Callable[[RuleContext], Any], **flags: Any) -> None:
    for fn in fns:
        name = getattr(fn, "__name__", "")
        table.add_op(fn, _flags(name, OpInfo(rule, **flags), _MULTIPLICATIVE_FUNCTIONS), replace_existing=False)


def _methods(table: OpTable, names: Iterable[str], rule: Callable[[RuleContext], Any], **flags: Any) -> None:
    for name in names:
        info = _flags(name, OpInfo(rule, **flags), _MULTIPLICATIVE_METHODS)
        table.add_op(name, info, method=True, replace_existing=False)


def register_builtin_ops(table: OpTable) -> None:
    """Torch's functions, methods and operators, first registration winning (the order of priority)."""
    _functions(table, ELEMENTWISE_FUNCTIONS, elementwise_rule, elementwise=True)
    table.add_op("torchvision.ops.stochastic_depth.stochastic_depth", OpInfo(per_sample_rule, identity_in_eval=True))
    _functions(table, existing_attrs(torch, "zeros_like ones_like empty_like full_like rand_like randn_like randint_like clone detach"), like_rule)
    _functions(table, existing_attrs(torch, "max min"), minmax_rule)
    _functions(table, existing_attrs(torch, REDUCTIONS), reduction_rule)
    _functions(table, existing_attrs(torch, "softmax log_softmax") + existing_attrs(F, "softmax log_softmax softmin normalize"), softmax_rule)
    _functions(table, existing_attrs(torch, "cat concat concatenate"), cat_rule)
    _functions(table, existing_attrs(torch, "stack"), stack_rule)
    _functions(table, existing_attrs(torch, "split split_with_sizes"), split_rule)
    _functions(table, existing_attrs(torch, "chunk"), chunk_rule)
    _functions(table, existing_attrs(torch, "tensor_split"), tensor_split_rule)
    _functions(table, existing_attrs(torch, "unbind"), unbind_rule)
    _functions(table, existing_attrs(F, "glu"), glu_rule)
    _functions(table, existing_attrs(torch, "matmul bmm") + existing_attrs(operator, "matmul"), matmul_rule)
    _functions(table, existing_attrs(F, "scaled_dot_product_attention"), sdpa_rule)
    _functions(table, existing_attrs(torch, "repeat_interleave"), repeat_interleave_rule)
    _functions(table, existing_attrs(torch, "narrow select index_select"), narrow_rule)
    _functions(table, existing_attrs(torch, "flatten squeeze unsqueeze"), flatten_rule)
    _functions(table, existing_attrs(torch, "reshape"), reshape_rule)
    _functions(table, existing_attrs(torch, "permute"), permute_rule)
    _functions(table, existing_attrs(torch, "transpose swapaxes swapdims"), transpose_rule)
    spatial = existing_attrs(
        F,
        "max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d "
        "adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d lp_pool1d lp_pool2d "
        "interpolate upsample upsample_nearest upsample_bilinear max_pool2d_with_indices",
    ) + existing_attrs(torch, "max_pool1d max_pool2d max_pool3d avg_pool1d adaptive_avg_pool1d adaptive_max_pool1d")
    _functions(table, spatial, spatial_rule)
    _functions(table, existing_attrs(F, "pad"), pad_rule)
    _functions(table, existing_attrs(torch, "roll flip"), reorder_rule)
    _functions(table, existing_attrs(torch, "einsum"), einsum_rule)
    _functions(table, existing_attrs(torch, "zeros ones empty full rand randn randint"), creation_rule)
    shuffles = existing_attrs(torch, "channel_shuffle pixel_shuffle pixel_unshuffle")
    _functions(table, shuffles + existing_attrs(F, "channel_shuffle pixel_shuffle pixel_unshuffle"), shuffle_rule)
    table.add_op(operator.getitem, OpInfo(getitem_rule), replace_existing=False)
    table.add_op(builtins.getattr, OpInfo(getattr_rule), replace_existing=False)

    _methods(table, ["size"], shape_rule)
    _methods(table, "dim numel nelement item tolist data_ptr element_size".split(), scalar_rule)
    _methods(table, sorted(RECEIVER_SHAPE_METHODS), receiver_rule)
    _methods(table, sorted(ELEMENTWISE_METHODS), elementwise_rule, elementwise=True)
    _methods(table, ["max", "min"], minmax_rule)
    _methods(table, REDUCTIONS.split(), reduction_rule)
    _methods(table, ["softmax", "log_softmax"], softmax_rule)
    _methods(table, ["view", "reshape"], reshape_rule)
    _methods(table, ["flatten", "squeeze", "unsqueeze", "squeeze_", "unsqueeze_"], flatten_rule)
    _methods(table, ["view_as", "reshape_as", "expand_as"], as_rule)
    _methods(table, ["unflatten"], unflatten_rule)
    _methods(table, ["permute"], permute_rule)
    _methods(table, ["transpose", "swapaxes", "swapdims"], transpose_rule)
    _methods(table, ["t", "T", "mT"], matrix_transpose_rule)
    _methods(table, ["expand"], expand_rule)
    _methods(table, ["repeat", "tile"], repeat_rule)
    _methods(table, ["repeat_interleave"], repeat_interleave_rule)
    _methods(table, ["split", "split_with_sizes"], split_rule)
    _methods(table, ["chunk"], chunk_rule)
    _methods(table, ["tensor_split"], tensor_split_rule)
    _methods(table, ["unbind"], unbind_rule)
    _methods(table, ["roll", "flip"], reorder_rule)
    _methods(table, ["new_empty", "new_zeros", "new_ones"], new_creation_rule)
    _methods(table, ["narrow", "select", "index_select"], narrow_rule)
    _methods(table, ["matmul", "bmm", "__matmul__"], matmul_rule)
    _methods(table, ["pixel_shuffle", "channel_shuffle"], shuffle_rule)


register_builtin_ops(OPS)

__all__ = ["elementwise_rule", "existing_attrs", "function_name", "register_builtin_ops"]
