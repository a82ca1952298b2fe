"""Slices and splits of a width at positions the code reads from module attributes.

``x[:, :self.num_1x1_c]`` (DPN), ``out[:, :self.out_chs]`` (GhostNet), ``torch.split(x,
self.splits, 1)`` (MixNet) cut a width where an attribute says.  fx bakes the position into a
number, which :mod:`archgrow.ir.attribute_sizes` traces back to its attribute.  Such a cut
splits the width into runs that grow apart (:meth:`WidthVars.cut`), and the attribute is bound to
the size before the cut, so growth moves the cut with the channels.  A position written as a
number stays fixed in the code; if channels that grow lie before it, the width freezes, with a
reason saying how to write a position that follows.
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx

from archgrow.ir.attribute_sizes import size_source
from archgrow.ir.layout import Layout, Seg
from archgrow.ops.context import RuleContext

FOLLOWING_BOUNDS_HINT = (
    "positions that follow growth are read from a module attribute (x[:, :self.n], x.split(self.sizes, 1)) "
    "or from the tensor (x.chunk(n, dim))"
)


def _value(ctx: RuleContext, bound: Any) -> Any:
    return ctx.state.values.get(bound, bound) if isinstance(bound, fx.Node) else bound


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def cut_layout(ctx: RuleContext, lay: Layout, positions: list[int]) -> Layout | None:
    """``lay`` cut at every position (channels from its start): the resolved layout with a segment
    boundary at each, or None when a position falls inside a block that grows whole."""
    vars_ = ctx.vars
    for pos in sorted(set(positions)):
        start = 0
        for seg in vars_.resolve(lay):
            size = vars_.seg_size(seg)
            if start < pos < start + size:
                if seg.var is not None and ((pos - start) % seg.inner or not vars_.cut(seg.var, (pos - start) // seg.inner)):
                    return None
                break
            start += size
    return vars_.resolve(lay)


def piece(ctx: RuleContext, lay: Layout, start: int, stop: int) -> Layout | None:
    """Positions ``[start, stop)`` of a layout cut at both (fixed runs may be cut anywhere)."""
    vars_ = ctx.vars
    out: list[Seg] = []
    pos = 0
    for seg in lay:
        size = vars_.seg_size(seg)
        lo, hi = max(start, pos), min(stop, pos + size)
        if lo < hi:
            out.append(seg if (lo, hi) == (pos, pos + size) else Seg(None, fixed=hi - lo))
        pos += size
    return tuple(out) if any(s.var is not None for s in out) else None


def slice_width(ctx: RuleContext, lay: Layout, sl: slice, total: int) -> Layout | None:
    """The layout of ``x[..., start:stop]`` along a width dim (None: the piece carries no width)."""
    where = ctx.where
    step = _value(ctx, sl.step)
    start, stop = _value(ctx, sl.start), _value(ctx, sl.stop)
    bounds = [b for b in (start, stop) if b is not None]
    if step not in (None, 1) or not all(_is_int(b) for b in bounds):
        ctx.freeze(lay, f"slicing a width dim with a step or a computed position at {where}; {FOLLOWING_BOUNDS_HINT}")
        return None
    if any(b < 0 for b in bounds):
        ctx.freeze(lay, f"slicing a width dim from its end (a negative position) at {where}; {FOLLOWING_BOUNDS_HINT}")
        return None
    lo = 0 if start is None else min(start, total)
    hi = total if stop is None else min(stop, total)
    if hi <= lo:
        return None
    cut = cut_layout(ctx, lay, [lo, hi])
    if cut is None:
        ctx.freeze(lay, f"slicing a width dim inside a block of channels that grows whole (a head) at {where}")
        return None
    for name, given in (("start", start), ("stop", stop)):
        if given is None or given == 0:
            continue
        before = piece(ctx, cut, 0, min(given, total))
        if before is None:
            continue  # only fixed channels before it: the position stays right
        source = size_source(given)
        if source is None:  # channels after a fixed position may grow; those before it may not
            ctx.freeze(
                before,
                f"slicing a width dim at {where} at position {int(given)} written in the code ({name}); growth "
                f"would move the channels after it; {FOLLOWING_BOUNDS_HINT}",
            )
        else:
            ctx.bind_source(source, before, f"the {name} of a slice at {where}")
    return piece(ctx, cut, lo, hi)


def sourced_split(ctx: RuleContext, lay: Layout, sizes: list[Any], name: str) -> list[Layout | None] | None:
    """``split(x, [a, b, ...], dim)`` with sizes read from module attributes or from tensors
    (FocalNet's ``split(x, (C, C, self.focal_level + 1), 1)``): one run per size, each growing
    apart with what it came from; a size written in the code fixes its own part only.  None
    (after freezing) when the sizes do not cut this width."""
    where = ctx.where
    total = ctx.vars.layout_size(lay)
    values = [_value(ctx, s) for s in sizes]
    if not all(_is_int(v) for v in values) or sum(values) != total or any(v <= 0 for v in values):
        ctx.freeze(
            lay, f"{name} at {where} cuts a width dim of {total} channels into sizes {values}, not all known or not adding up"
        )
        return None
    ends = [sum(values[: i + 1]) for i in range(len(values))]
    cut = cut_layout(ctx, lay, ends[:-1])
    if cut is None:
        ctx.freeze(lay, f"{name} at {where} cuts inside a block of channels that grows whole (a head)")
        return None
    pieces = [piece(ctx, cut, end - v, end) for v, end in zip(values, ends, strict=True)]
    for i, (given, part) in enumerate(zip(sizes, pieces, strict=True)):
        if part is None:
            continue
        source = size_source(given)
        if isinstance(given, fx.Node) and ctx.adaptive(given, part):
            continue  # read from a tensor whose width it follows
        if source is not None:
            ctx.bind_source(source, part, f"part {i} of {name} at {where}")
        else:
            ctx.freeze(
                part,
                f"{name} at {where} fixes the size of part {i} ({values[i]}) in the code; {FOLLOWING_BOUNDS_HINT}",
            )
    return pieces


__all__ = ["FOLLOWING_BOUNDS_HINT", "cut_layout", "piece", "slice_width", "sourced_split"]
