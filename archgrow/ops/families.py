"""The layout rule families: how a width passes through each kind of tensor op.

Each family is a function of the :class:`~archgrow.ops.context.RuleContext` and the op's already
decoded arguments; :mod:`archgrow.ops.tensor_ops` decodes the arguments of each torch spelling
(function, method, operator) and registers it with its family.  Widths pass whole or flattened
channel-major; anything else (a slice, a hard-coded size, a shuffle) freezes the widths involved
with a reason naming the node.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx as fx

from archgrow.ir.layout import Layout, Seg, TensorMeta
from archgrow.ops import cuts
from archgrow.ops.context import RuleContext, TensorDim, fixed, is_tensor, norm_dim


def elementwise(ctx: RuleContext, metas: list[TensorMeta]) -> Any:
    """NumPy broadcasting: equal dims tie their widths; a width broadcast from size 1 freezes."""
    out = ctx.out
    if not is_tensor(out):
        return fixed(out)
    shape = out[1]
    dims = _broadcast_dims(ctx, metas, shape, name_fixed=True)
    return TensorMeta(shape, tuple(dims))


def _name_fixed_operand(
    ctx: RuleContext, metas: list[TensorMeta], d: int, size: int, cands: list[Layout | None]
) -> None:
    """A growing dim tied to an operand whose same dim never grows: the reason names that operand,
    where the user can look for what fixes it (a slice, a hard-coded split, a model input).  It
    starts like the generic tie reason, which the group lists after any more specific one."""
    fixed_metas = [t for t in metas if t.ndim >= -d and t.shape[d] == size and t.dims[d] is None]
    names = [n.name for t in fixed_metas for n in ctx.node.all_input_nodes if ctx.meta(n) is t]
    if not names:
        return
    reason = (
        f"tied to a fixed-size dimension at {ctx.where}: dim of size {size} of node '{names[0]}', which never "
        "grows (see what fixes that node's size: a slice, a split with hard-coded sizes, a model input...)"
    )
    for c in cands:
        ctx.freeze(c, reason)


def reduction(ctx: RuleContext, src: Any, dim: Any, keepdim: bool, name: str) -> Any:
    """A reduced width dim disappears (or keeps size 1); a new channel changes the result."""
    out = ctx.out
    if not isinstance(src, TensorMeta):
        return fixed(out)
    if dim is None:
        reduced = set(range(src.ndim))
    else:
        dims = dim if isinstance(dim, (tuple, list)) else [dim]
        reduced = {norm_dim(d, src.ndim) for d in dims}
    for d in reduced:
        ctx.not_preserving(src.dims[d], f"{name} reduces over it at {ctx.where}")
    kept = [None if d in reduced else src.dims[d] for d in range(src.ndim) if keepdim or d not in reduced]
    if isinstance(out, tuple) and not is_tensor(out):  # (values, indices)
        return tuple(TensorMeta(o[1], tuple(kept)) if is_tensor(o) else o for o in out)
    if not is_tensor(out) or len(out[1]) != len(kept):
        return fixed(out)
    return TensorMeta(out[1], tuple(kept))


def softmax(ctx: RuleContext, src: Any, dim: Any, name: str) -> Any:
    """Normalises along one dim: structure is kept, but a new channel changes the others."""
    if not isinstance(src, TensorMeta):
        return ctx.fixed()
    if dim is None:  # legacy implicit dim: be conservative
        for lay in src.dims:
            ctx.not_preserving(lay, f"{name} normalises over it at {ctx.where}")
    else:
        ctx.not_preserving(src.dims[norm_dim(dim, src.ndim)], f"{name} normalises over it at {ctx.where}")
    return TensorMeta(src.shape, src.dims)


def cat(ctx: RuleContext, tensors: Any, dim: int) -> Any:
    """Concatenation joins layouts segment by segment (fixed runs merge)."""
    metas = [ctx.meta(t) for t in ctx.meta(tensors)]  # a list, or a node giving a tuple (parts[:2])
    out = ctx.out
    if not all(isinstance(t, TensorMeta) for t in metas) or not is_tensor(out):
        return ctx.unknown("torch.cat")
    shape = out[1]
    # torch.cat skips 1-d empty tensors whatever the others' rank (GPT-2's empty key/value cache)
    metas = [t for t in metas if not (t.shape == (0,) and len(shape) != 1)]
    d = norm_dim(dim, len(shape))
    dims = []
    for k in range(len(shape)):
        if k != d:
            dims.append(ctx.unify_all([t.dims[k] for t in metas]))
            continue
        if all(t.dims[d] is None for t in metas):
            dims.append(None)
            continue
        segs: list[Seg] = []
        for t in metas:
            part = t.dims[d] if t.dims[d] is not None else (Seg(None, fixed=t.shape[d]),)
            for s in part:
                if s.var is None and segs and segs[-1].var is None:
                    segs[-1] = Seg(None, fixed=segs[-1].fixed + s.fixed)
                elif s.var is not None or s.fixed:
                    segs.append(s)
        dims.append(tuple(segs))
    return TensorMeta(shape, tuple(dims))


def stack(ctx: RuleContext, tensors: Any, dim: int) -> Any:
    metas = [ctx.meta(t) for t in ctx.meta(tensors)]
    out = ctx.out
    if not all(isinstance(t, TensorMeta) for t in metas) or not is_tensor(out):
        return ctx.unknown("torch.stack")
    shape = out[1]
    d = norm_dim(dim, len(shape))
    inner = [ctx.unify_all([t.dims[k] for t in metas]) for k in range(metas[0].ndim)]
    return TensorMeta(shape, tuple(inner[:d] + [None] + inner[d:]))


def split(ctx: RuleContext, src: Any, dim: Any, name: str) -> Any:
    """Pieces at positions fixed in the code (narrow, select): a split width dim freezes; the other
    dims pass.  Equal parts are :func:`equal_split`'s."""
    if not isinstance(src, TensorMeta) or not isinstance(dim, int):
        return ctx.unknown(name)
    d = norm_dim(dim, src.ndim)
    ctx.freeze(
        src.dims[d],
        f"{name} along a width dim at {ctx.where} (the split sizes are fixed in the code, so "
        "new channels would land in the wrong part)",
    )
    return cut(ctx, src, d)


def cut(ctx: RuleContext, src: TensorMeta, d: int) -> Any:
    """The pieces of ``src`` cut along dim ``d``: other dims pass, ``d`` carries no width."""
    out = ctx.out
    kept = tuple(None if k == d else src.dims[k] for k in range(src.ndim))

    def fit(o: Any) -> Any:
        if not is_tensor(o):
            return fixed(o)
        if len(o[1]) == src.ndim:
            return TensorMeta(o[1], kept)
        if len(o[1]) == src.ndim - 1:  # unbind / select drop the dim
            return TensorMeta(o[1], kept[:d] + kept[d + 1 :])
        return fixed(o)

    if is_tensor(out):
        return fit(out)
    return tuple(fit(o) for o in out) if isinstance(out, (tuple, list)) else fixed(out)


EQUAL_SPLITS_HINT = (
    "equal parts can grow: write x.chunk(n, dim), torch.tensor_split(x, n, dim) or "
    "x.split(x.size(dim) // n, dim)"
)


def equal_split(ctx: RuleContext, src: Any, dim: Any, n: int | None, name: str, fixed_sizes: str = "") -> Any:
    """``chunk`` / ``tensor_split`` / ``split`` into ``n`` equal parts: a width dim is refined into
    its parts (each grows at the end of its own slice, all by the same amount); other dims pass.

    ``n`` is None when the code fixes the parts' sizes (``split(4)``, ``split([3, 5])``): after
    growth they would cut the channels in the wrong places, so the width freezes, with
    ``fixed_sizes`` saying what was given.
    """
    out = ctx.out
    if not isinstance(src, TensorMeta) or not isinstance(dim, int) or not isinstance(out, (tuple, list)):
        return ctx.unknown(name)
    d = norm_dim(dim, src.ndim)
    lay = src.dims[d]
    outs = [o for o in out if is_tensor(o) and len(o[1]) == src.ndim]
    if lay is None or len(outs) != len(out):
        return split(ctx, src, d, name) if lay is not None else cut(ctx, src, d)
    sizes = [o[1][d] for o in outs]
    if n is None:
        ctx.freeze(
            lay,
            f"{name} at {ctx.where} fixes the sizes of a width dim's parts ({fixed_sizes}), so they would not "
            f"follow growth; {EQUAL_SPLITS_HINT}",
        )
        return cut(ctx, src, d)
    if len(sizes) != n or len(set(sizes)) != 1:
        ctx.freeze(
            lay,
            f"{name} at {ctx.where} cuts a width dim into parts of sizes {sizes}, not {n} equal parts; only "
            f"equal parts can grow ({EQUAL_SPLITS_HINT}, with the width a multiple of n)",
        )
        return cut(ctx, src, d)
    parts = equal_parts(ctx, ctx.vars.resolve(lay), n)
    if parts is None:
        reason = f"{name} at {ctx.where} cuts '{ctx.vars.describe(lay)}' into {n} parts that are not whole equal widths"
        ctx.freeze(lay, reason)
        return cut(ctx, src, d)
    return tuple(
        TensorMeta(o[1], src.dims[:d] + (part,) + src.dims[d + 1 :]) for o, part in zip(outs, parts, strict=True)
    )


def equal_parts(ctx: RuleContext, lay: Layout, n: int) -> list[Layout] | None:
    """``lay`` cut into ``n`` equal parts that stay equal as they grow, or None.

    Whole segments per part (``cat([a, b]).chunk(2)``): the parts' widths are tied.  Otherwise each
    segment, all of one size, is refined into equal parts (``linear(x).chunk(2)``).
    """
    m = len(lay)
    if m % n == 0:
        groups = [lay[i * (m // n) : (i + 1) * (m // n)] for i in range(n)]
        if not all(ctx.same_structure(groups[0], g) for g in groups[1:]):
            return None
        for g in groups[1:]:
            ctx.unify(groups[0], g)
        return groups
    vars_ = ctx.vars
    r = n // m
    if n % m or any(s.var is None or not ctx.same_structure((s,), lay[:1]) for s in lay):
        return None
    if any(vars_.width[vars_.find(s.var)] % r or vars_.find(s.var) in vars_.parts for s in lay):  # type: ignore[arg-type]
        return None
    parts: list[Layout] = [
        (Seg(p.var, p.inner * s.inner),) for s in lay for p in vars_.refine(s.var, r)  # type: ignore[arg-type]
    ]
    for p in parts[1:]:
        ctx.unify(parts[0], p)
    return parts


def gated(ctx: RuleContext, src: Any, dim: Any, name: str) -> Any:
    """GLU, ``a * sigmoid(b)`` of the two halves of ``dim``: the halves are equal parts of the width
    (as ``chunk(2)``), and the output is laid out like one of them."""
    out = ctx.out
    if not isinstance(src, TensorMeta) or not isinstance(dim, int) or not is_tensor(out):
        return ctx.unknown(name)
    d = norm_dim(dim, src.ndim)
    lay = src.dims[d]
    if lay is None:
        return TensorMeta(out[1], src.dims)
    parts = equal_parts(ctx, ctx.vars.resolve(lay), 2) if src.shape[d] % 2 == 0 else None
    if parts is None:
        what = ctx.vars.describe(lay)
        ctx.freeze(lay, f"{name} at {ctx.where} cuts '{what}' into halves that are not whole equal widths")
    return TensorMeta(out[1], src.dims[:d] + (None if parts is None else parts[0],) + src.dims[d + 1 :])


def reshape(ctx: RuleContext, src: Any, shape_args: list[Any] | None, name: str) -> Any:
    """view/reshape/flatten/squeeze: widths survive when kept whole or flattened channel-major."""
    out = ctx.out
    if not isinstance(src, TensorMeta) or not is_tensor(out):
        return fixed(out)
    shape = out[1]
    dims: list[Layout | None] = [None] * len(shape)
    groups = factor(src.shape, shape)
    if groups is None:
        return ctx.unknown(name)
    covered = {i for g in groups for i in g[0]}
    for i, lay in enumerate(src.dims):
        if lay is not None and i not in covered:
            ctx.freeze(
                lay,
                f"{name} at {ctx.where} removes a size-1 dim that is a width of one channel (a size-1 dim "
                "cannot be told from no dim, so the width cannot grow from here); give that layer 2 or more "
                "channels to grow it",
            )
    # With a -1 in the shape, a number that stayed as written would move positions to the -1's dim
    # and keep the element count, so the growth check could miss it: then no number is taken as
    # read from the dim it sizes (``RuleContext.number_as_read``).
    no_free_dim = shape_args is None or not any(type(a) is int and a == -1 for a in shape_args)
    for ins, outs in groups:
        carriers = [i for i in ins if src.dims[i] is not None]
        if not carriers:
            continue
        if len(carriers) > 1 and len(outs) != 1:
            for i in carriers:
                ctx.freeze(src.dims[i], f"{name} merges two width dims at {ctx.where}")
            continue
        i = carriers[0]
        for j in carriers[1:]:
            # (heads, v_dim) -> heads * v_dim with the two from different tensors (multi-query
            # attention): the outer width keeps growing in blocks of the inner dims' sizes
            ctx.freeze(
                src.dims[j],
                f"{name} at {ctx.where} merges this width into '{ctx.vars.describe(src.dims[i])}', "
                "which grows in whole blocks of it there (two widths merged into one dim cannot both grow)",
            )
        lay = src.dims[i]
        if len(outs) != 1:
            sizes = [shape[o] for o in outs]
            split = None
            # a batch of one merged with the width (BoTNet's reshape(B * heads, head_dim, -1)) is
            # no part of it: only the head dim can follow, as the head count is fused with the batch
            widths_in = [j for j in ins if src.shape[j] != 1 or src.dims[j] is not None]
            if len(widths_in) == 1 and shape_args is not None and all(o < len(shape_args) for o in outs):
                split = split_width(ctx, lay, sizes, [shape_args[o] for o in outs], numbers_read=no_free_dim)
            if split is None:
                ctx.freeze(
                    lay,
                    f"{name} splits a width dim into {sizes} at {ctx.where}; a split into (..., heads, head_dim) grows "
                    "when the heads or the head_dim size follows growth: -1, a size read from the tensor, or a module "
                    "attribute such as self.num_heads / self.head_dim (archgrow.ops.register_size_attribute)",
                )
                continue
            for o, part in zip(outs, split, strict=True):
                dims[o] = part
            continue
        before = math.prod(src.shape[j] for j in ins if j < i)
        if before > MAX_REPEATS:
            ctx.freeze(lay, f"{name} flattens the width dim inside {before} other positions (channels-last order) at {ctx.where}")
            continue
        o = outs[0]
        after = math.prod(src.shape[j] for j in ins if j > i)
        merged = lay if after == 1 else tuple(Seg(s.var, s.inner * after, s.fixed * after) for s in lay)
        merged = merged * before  # (heads, head_dim) -> heads * head_dim: one copy of the width per head
        if shape_args is not None and (o >= len(shape_args) or not ctx.follows(shape_args[o], merged, numbers_read=no_free_dim)):
            given = shape_args[o] if o < len(shape_args) else "?"
            ctx.freeze(
                lay,
                f"{name} at {ctx.where} hard-codes size {given} for a dim that grows; write "
                "x.flatten(1) or x.view(x.size(0), -1) so it follows growth",
            )
        dims[o] = merged
    return TensorMeta(shape, tuple(dims))


# A width flattened inside more fixed positions than this (channels-last order) freezes: each
# position is one more segment for surgery to expand.
MAX_REPEATS = 256


def _may_follow(ctx: RuleContext, size: Any, kind: str) -> bool:
    """Could a size argument follow growth (see ``RuleContext.follows``)?"""
    if isinstance(size, TensorDim):
        return size.layout is not None
    if isinstance(size, int) and not isinstance(size, bool):
        return size == -1 or ctx.sourced(size, kind) or len(ctx.size_attributes(size, kind)[1]) == 1
    return isinstance(size, fx.Node) and ctx.state.size_layout.get(size) is not None


def split_width(
    ctx: RuleContext, lay: Layout, sizes: list[int], args: list[Any], *, numbers_read: bool = True
) -> list[Layout | None] | None:
    """A width dim reshaped into ``sizes`` (``(..., heads, head_dim)``): the layout of each new dim,
    or None when no size that could grow follows growth.

    Whole heads: when the size before last follows growth (``-1``, ``self.num_heads``), the width
    is ``P`` equal parts (``P``: the sizes before it, e.g. q, k and v of a packed projection),
    each counted in blocks of the last size (``WidthVars.coarsen``): growth appends whole heads to
    every part, and new heads whose output-projection columns are zero change nothing.
    Head dim: otherwise, when the last size follows growth, the width is the ``P`` equal parts
    (``WidthVars.refine``, as an equal split): every head grows by the same amount.
    """
    vars_ = ctx.vars
    m = len(sizes)
    resolved = vars_.resolve(lay)
    order = [(m - 2, "heads"), (m - 1, "head_dim")]
    if _part_size(ctx, args[m - 1], lay, math.prod(sizes[:-1]), probe=True):
        order.reverse()  # ``C // n`` read from this very width: n equal parts, whatever n is called
    for j, kind in order:
        count = math.prod(sizes[:j])
        divided = j == m - 1 and _part_size(ctx, args[j], lay, count)
        if not divided and not _may_follow(ctx, args[j], kind):
            continue
        block = sizes[-1] if j == m - 2 else 1
        parts = [resolved] if count == 1 else equal_parts(ctx, resolved, count)
        if parts is None:
            continue
        if j == m - 1:
            # each part one or more whole widths (ResNeSt's radix parts hold several groups of its
            # grouped conv): the last dim is laid out as one part
            if not all(s.var is not None and s.inner == 1 for p in parts for s in p):
                continue
            grown: Layout = parts[0]
        elif any(len(p) != 1 or p[0].var is None or p[0].inner not in (1, block) for p in parts):
            continue
        elif (seg := parts[0][0]).inner == block:  # already counted in whole heads (a second reshape of the same width)
            grown = (Seg(seg.var),)
        else:
            assert seg.var is not None
            found = vars_.parts.get(vars_.find(seg.var))
            if found is not None and (len(found) != 1 or found[0].inner != block):
                continue
            grown = (Seg(vars_.coarsen(seg.var, block)[0].var),)
        if not divided and not ctx.follows(args[j], grown, kind, numbers_read=numbers_read):
            continue
        return [None] * j + [grown] + [None] * (m - 1 - j)
    return None


def _part_size(ctx: RuleContext, size: Any, lay: Layout, count: int, *, probe: bool = False) -> bool:
    """Is ``size`` ``C // count`` with ``C`` read from the width being split (SKNet's
    ``x.view(B, self.num_paths, C // self.num_paths, H, W)``): one of ``count`` equal parts?
    ``probe``: only ask (tie nothing)."""
    if not (isinstance(size, fx.Node) and size.op == "call_function" and size.target is operator.floordiv):
        return False
    whole, n = size.args
    if not isinstance(n, int) or isinstance(n, bool) or n != count:
        return False
    if probe:
        known = ctx.state.size_layout.get(whole) if isinstance(whole, fx.Node) else None
        vars_ = ctx.vars
        return known is not None and vars_.layout_size(vars_.resolve(known)) == vars_.layout_size(vars_.resolve(lay))
    if not ctx.adaptive(whole, lay):
        return False
    ctx.consumed.add(size)
    return True


def _batch_dims(ctx: RuleContext, metas: list[TensorMeta], shape: tuple[int, ...]) -> list[Layout | None]:
    """Leading (batch) dims of ``metas`` broadcast to ``shape``, as :func:`elementwise` does."""
    return _broadcast_dims(ctx, metas, shape, name_fixed=False)


def _broadcast_dims(
    ctx: RuleContext, metas: list[TensorMeta], shape: tuple[int, ...], *, name_fixed: bool
) -> list[Layout | None]:
    """NumPy broadcasting of ``metas`` to ``shape``: equal dims tie, a width broadcast from another
    size freezes; ``name_fixed`` names the operand whose never-growing dim ties a growing width."""
    dims: list[Layout | None] = []
    nd = len(shape)
    for d in range(nd):
        cands: list[Layout | None] = []
        for t in metas:
            k = d - (nd - t.ndim)
            if k < 0:
                continue
            if t.shape[k] == shape[d]:
                cands.append(t.dims[k])
            elif t.dims[k] is not None:
                ctx.freeze(t.dims[k], f"broadcast from size {t.shape[k]} to {shape[d]} at {ctx.where}")
        if name_fixed and None in cands and any(c is not None for c in cands):
            _name_fixed_operand(ctx, metas, d - nd, shape[d], cands)
        dims.append(ctx.unify_all(cands))
    return dims


def matmul(ctx: RuleContext, a: Any, b: Any, name: str) -> Any:
    """``a @ b`` on (batched) matrices: batch dims broadcast, the contracted dims are tied, rows
    come from ``a`` and columns from ``b``.  Growing the contracted width adds terms to every
    product (``q @ k^T`` over a head dim): unless one side's new entries are zero, the result changes."""
    out = ctx.out
    if not isinstance(a, TensorMeta) or not isinstance(b, TensorMeta) or not is_tensor(out) or a.ndim < 2 or b.ndim < 2:
        return ctx.unknown(f"{name} (on vectors)")
    shape = out[1]
    inner = ctx.unify(a.dims[-1], b.dims[-2])
    ctx.not_preserving(inner, f"{name} at {ctx.where} sums over it (new entries on both sides add terms)")
    batch = _batch_dims(ctx, [TensorMeta(t.shape[:-2], t.dims[:-2]) for t in (a, b)], shape[:-2])
    return TensorMeta(shape, (*batch, a.dims[-2], b.dims[-1]))


def einsum(ctx: RuleContext, equation: Any, operands: list[Any], name: str) -> Any:
    """``torch.einsum("bhqd,bkd->bhqk", a, b)``: the dims sharing a letter are tied, the output
    keeps each of its letters' layout, and a width summed over (a letter the output drops) adds
    terms to every result, as the contracted dim of a matmul does.  A letter of size 1 against a
    width broadcasts it, which freezes; ``...`` and repeated letters in one operand are refused."""
    out = ctx.out
    if (
        not isinstance(equation, str) or "..." in equation or not is_tensor(out)
        or not all(isinstance(t, TensorMeta) for t in operands)
    ):  # fmt: skip
        return ctx.unknown(f"{name} (with '...', or on non-tensors)")
    spec = equation.replace(" ", "")
    inputs, _, output = spec.partition("->")
    terms = inputs.split(",")
    if "->" not in spec:
        output = "".join(sorted(c for c in set(inputs.replace(",", "")) if inputs.replace(",", "").count(c) == 1))
    if len(terms) != len(operands) or any(len(t) != m.ndim or len(set(t)) != len(t) for t, m in zip(terms, operands, strict=False)):
        return ctx.unknown(f"{name} '{equation}' (a letter repeated in one operand)")
    found: dict[str, list[tuple[Layout | None, int]]] = {}
    for term, meta in zip(terms, operands, strict=True):
        for letter, lay, size in zip(term, meta.dims, meta.shape, strict=True):
            found.setdefault(letter, []).append((lay, size))
    layout: dict[str, Layout | None] = {}
    for letter, uses in found.items():
        sizes = {size for _, size in uses}
        lays = [lay for lay, size in uses if size != 1 or len(sizes) == 1]
        for lay, size in uses:
            if size == 1 and len(sizes) > 1:
                ctx.freeze(lay, f"{name} at {ctx.where} broadcasts a width from size 1")
        widths = [lay for lay in lays if lay is not None]
        if not widths:
            layout[letter] = None
            continue
        if len(widths) != len(lays):
            ctx.unify_all(lays)  # a width tied to a dim that never grows: frozen, with that reason
        merged = ctx.unify_all(widths)
        layout[letter] = merged
        if letter not in output:
            ctx.not_preserving(merged, f"{name} '{equation}' at {ctx.where} sums over it (new entries on both sides add terms)")
    shape = out[1]
    if len(output) != len(shape):
        return ctx.unknown(f"{name} '{equation}'")
    return TensorMeta(shape, tuple(layout.get(c) for c in output))


def attention(ctx: RuleContext, q: Any, k: Any, v: Any, mask: Any, name: str, *, grouped: bool = False) -> Any:
    """``softmax(q @ k^T * scale + mask) @ v`` (``F.scaled_dot_product_attention``): batch and head
    dims broadcast, q and k share their last dim (a head dim: growing it changes the logits and
    the default scale), k and v their sequence dim; the output is laid out like ``v``'s last dim.

    ``grouped`` (``enable_gqa=True``): k and v have fewer heads than q, each serving as many
    consecutive query heads as q has heads per k head; k's heads then count in blocks of that
    many query heads, so growth adds a k and v head with its query heads (:func:`repeated`)."""
    out = ctx.out
    if not all(isinstance(t, TensorMeta) and t.ndim >= 2 for t in (q, k, v)) or not is_tensor(out):
        return ctx.unknown(name)
    if grouped and q.ndim >= 3 and k.ndim >= 3 and v.ndim >= 3 and k.shape[-3] == v.shape[-3] and k.shape[-3] > 1:
        per_head, rest = divmod(q.shape[-3], k.shape[-3])
        if per_head > 1 and not rest:
            k, v = (repeated(t, t.ndim - 3, per_head) for t in (k, v))
    shape = out[1]
    e = ctx.unify(q.dims[-1], k.dims[-1])
    ctx.not_preserving(e, f"{name} at {ctx.where} sums q * k over it, and its default scale is 1/sqrt of its size")
    ctx.unify(k.dims[-2], v.dims[-2])
    metas = [TensorMeta(t.shape[:-2], t.dims[:-2]) for t in (q, k, v)]
    if isinstance(mask, TensorMeta):
        ctx.freeze_all([TensorMeta(mask.shape[-2:], mask.dims[-2:])], f"the attention mask at {ctx.where} carries a width")
        metas.append(TensorMeta(mask.shape[:-2], mask.dims[:-2]))
    batch = _batch_dims(ctx, metas, shape[:-2])
    return TensorMeta(shape, (*batch, q.dims[-2], v.dims[-1]))


def repeated(src: TensorMeta, dim: int, times: int) -> TensorMeta:
    """``src`` with each position along ``dim`` repeated ``times`` times in place
    (``repeat_interleave``): a channel of a width there covers ``times`` consecutive positions,
    and channels added at the end of the width are repeated at the end too."""
    lay = src.dims[dim]
    dims = list(src.dims)
    dims[dim] = None if lay is None else tuple(Seg(s.var, s.inner * times, s.fixed * times) for s in lay)
    shape = list(src.shape)
    shape[dim] *= times
    return TensorMeta(tuple(shape), tuple(dims))


def unflatten(ctx: RuleContext, src: TensorMeta, dim: int, sizes: Any) -> Any:
    d = norm_dim(dim, src.ndim)
    args: list[Any] = [-1] * d + list(sizes) + [-1] * (src.ndim - d - 1)
    return reshape(ctx, src, args, "Tensor.unflatten")


def permute(ctx: RuleContext, src: Any, perm: Any) -> Any:
    if not isinstance(src, TensorMeta):
        return ctx.fixed()
    perm = [norm_dim(p, src.ndim) for p in perm]
    return TensorMeta(tuple(src.shape[p] for p in perm), tuple(src.dims[p] for p in perm))


def transpose(ctx: RuleContext, src: Any, a: int, b: int) -> Any:
    if not isinstance(src, TensorMeta):
        return ctx.fixed()
    perm = list(range(src.ndim))
    a, b = norm_dim(a, src.ndim), norm_dim(b, src.ndim)
    perm[a], perm[b] = perm[b], perm[a]
    return permute(ctx, src, perm)


def expand(ctx: RuleContext, src: TensorMeta, sizes: list[Any]) -> Any:
    shape = ctx.out[1]
    nd = len(shape)
    dims: list[Layout | None] = [None] * nd
    for d in range(nd):
        k = d - (nd - src.ndim)
        if k < 0:
            continue
        lay = src.dims[k]
        if lay is None:
            continue
        if src.shape[k] != shape[d]:
            ctx.freeze(lay, f"Tensor.expand broadcasts a width-{src.shape[k]} dim at {ctx.where}")
        elif d < len(sizes) and (ctx.adaptive(sizes[d], lay) or ctx.number_as_read(sizes[d], lay)):
            dims[d] = lay
        else:
            ctx.freeze(lay, f"Tensor.expand at {ctx.where} hard-codes size {shape[d]} for a dim that grows; use -1")
    return TensorMeta(shape, tuple(dims))


def repeat(ctx: RuleContext, src: TensorMeta, name: str) -> Any:
    shape = ctx.out[1]
    nd = len(shape)
    dims: list[Layout | None] = [None] * nd
    for d in range(nd):
        k = d - (nd - src.ndim)
        if k < 0 or src.dims[k] is None:
            continue
        if src.shape[k] == shape[d]:
            dims[d] = src.dims[k]
        else:
            ctx.freeze(src.dims[k], f"{name} repeats a width dim at {ctx.where}")
    return TensorMeta(shape, tuple(dims))


def spatial(ctx: RuleContext, src: Any, name: str) -> Any:
    """Pooling, resizing and padding: batch and channel dims pass, the rest must carry no width."""
    out = ctx.out
    if not isinstance(src, TensorMeta):
        return fixed(out)
    for d in range(2, src.ndim):
        ctx.freeze(src.dims[d], f"{name} pools or resizes a width dim at {ctx.where}")

    def fit(o: Any) -> Any:
        if not is_tensor(o) or len(o[1]) != src.ndim or o[1][:2] != src.shape[:2]:
            return fixed(o)
        return TensorMeta(o[1], tuple(src.dims[:2]) + (None,) * (src.ndim - 2))

    if is_tensor(out):
        return fit(out)
    return tuple(fit(o) for o in out) if isinstance(out, (tuple, list)) else fixed(out)


def pad(ctx: RuleContext, src: Any, amounts: Any, name: str) -> Any:
    if not isinstance(src, TensorMeta) or not isinstance(amounts, (tuple, list)):
        return ctx.unknown(name)
    padded = len(amounts) // 2
    # (left, right) pairs from the last dim backwards; a dim padded by literal zeros is untouched
    # (timm's Swin pads (B, H, W, C) with (0, 0, ...) on its channels)
    untouched = {src.ndim - 1 - i for i in range(padded) if amounts[2 * i] == 0 and amounts[2 * i + 1] == 0}
    for d in range(src.ndim - padded, src.ndim):
        if d not in untouched:
            ctx.freeze(src.dims[d], f"{name} pads a width dim at {ctx.where}")
    shape = ctx.out[1]
    return TensorMeta(
        shape, tuple(None if d >= src.ndim - padded and d not in untouched else src.dims[d] for d in range(src.ndim))
    )


def creation(ctx: RuleContext, node: fx.Node, first: int = 0) -> Any:
    """torch.zeros(x.size(0), x.size(1)), ``x.new_empty(shape)`` (sizes from ``node.args[first:]``):
    a dim sized from a width follows that width."""
    out = ctx.out
    if not is_tensor(out):
        return fixed(out)
    state = ctx.state
    sizes = [a for a in node.args[first:] if not isinstance(a, (float, bool))]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = list(sizes[0])
    if len(sizes) == 1 and isinstance(sizes[0], fx.Node) and sizes[0] in state.shape_of:
        ctx.consumed.add(sizes[0])
        return TensorMeta(out[1], state.shape_of[sizes[0]].dims)
    dims = [state.size_layout.get(a) if isinstance(a, fx.Node) else None for a in sizes[: len(out[1])]]
    ctx.consumed.update(a for a in sizes if isinstance(a, fx.Node) and a in state.size_layout)
    dims += [None] * (len(out[1]) - len(dims))
    return TensorMeta(out[1], tuple(dims))


def index(ctx: RuleContext, src: TensorMeta, idx: Any) -> Any:
    """Basic indexing: whole slices and new axes pass; slicing or indexing a width dim freezes it."""
    out = ctx.out
    items = idx if isinstance(idx, tuple) else (idx,)
    consumed = sum(1 for e in items if e is not None and e is not Ellipsis)
    dims: list[Layout | None] = []
    d = 0
    for e in items:
        if e is None:
            dims.append(None)
        elif e is Ellipsis:
            k = src.ndim - consumed
            dims.extend(src.dims[d : d + k])
            d += k
        elif isinstance(e, slice):
            lay = src.dims[d]
            if (e.start is None and e.stop is None and e.step is None) or lay is None:
                dims.append(lay)
            else:
                dims.append(cuts.slice_width(ctx, lay, e, src.shape[d]))
            d += 1
        elif isinstance(e, int) or (isinstance(e, fx.Node) and isinstance(ctx.state.values.get(e), int)):
            ctx.freeze(src.dims[d], f"indexing a width dim at {ctx.where}")
            d += 1
        elif _index_tensor(ctx, e) is not None and d == 0 and len(items) == 1:
            # table[index]: rows gathered by an integer tensor (a relative position bias table);
            # its other dims pass, and the gathered dim must carry no width
            ctx.freeze(src.dims[0], f"gathering entries of a width dim with a tensor index at {ctx.where}")
            dims.extend(_index_tensor(ctx, e).dims)  # type: ignore[union-attr]
            dims = [None] * len(dims)
            d += 1
        else:
            return ctx.unknown("advanced indexing")
    dims.extend(src.dims[d:])
    if not is_tensor(out) or len(dims) != len(out[1]):
        return ctx.unknown("indexing")
    return TensorMeta(out[1], tuple(dims))


def _index_tensor(ctx: RuleContext, e: Any) -> TensorMeta | None:
    """``e`` as an integer index tensor (analysed), or None."""
    meta = ctx.meta(e) if isinstance(e, fx.Node) else None
    value = ctx.state.values.get(e) if isinstance(e, fx.Node) else None
    if isinstance(meta, TensorMeta) and is_tensor(value) and not value[2].is_floating_point and value[2] != torch.bool:
        return meta
    return None


def factor(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Split two shapes of equal numel into runs of dims with equal products (size-1 dims aside)."""
    ia = [i for i, s in enumerate(a) if s != 1]
    ib = [i for i, s in enumerate(b) if s != 1]
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    try:
        while i < len(ia) and j < len(ib):
            ga, gb = [ia[i]], [ib[j]]
            pa, pb = a[ia[i]], b[ib[j]]
            i += 1
            j += 1
            while pa != pb:
                if pa < pb:
                    ga.append(ia[i])
                    pa *= a[ia[i]]
                    i += 1
                else:
                    gb.append(ib[j])
                    pb *= b[ib[j]]
                    j += 1
            groups.append((ga, gb))
    except IndexError:
        return None
    if i != len(ia) or j != len(ib):
        return None
    return groups
