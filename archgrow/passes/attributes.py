"""Attributes bound twice must agree: one module attribute, one size.

Growth rewrites a module attribute from the width its binding names (a conv's ``out_channels``,
CSPNet's ``expand_chs``, DPN's ``num_1x1_c``).  An attribute the forward reads for two sizes that
grow apart (``self.dim`` for a residual stream and for a head count) cannot follow both: after
growth the code would compute one of them wrong.  This pass finds attributes bound to sizes that
are not the same function of the same widths and freezes those widths, naming the attribute.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from archgrow.ir.bindings import AttrBinding
from archgrow.ir.layout import WidthVars
from archgrow.ops.context import LayoutState, freeze_layout


def _signature(vars_: WidthVars, a: AttrBinding) -> tuple[object, ...]:
    """What the attribute's new value depends on: channels per width (by root), the constant run
    of fixed positions, and the affine map applied to their sum."""
    counts: Counter[int] = Counter()
    fixed = 0
    for s in vars_.resolve(a.layout):
        if s.var is None:
            fixed += s.fixed
        else:
            counts[vars_.find(s.var)] += s.inner
    return (tuple(sorted(counts.items())), fixed, a.multiplier, a.offset, a.divisor)


def check_attribute_bindings(state: LayoutState) -> None:
    vars_ = state.vars
    by_attr: dict[tuple[str, str, int | None], list[AttrBinding]] = defaultdict(list)
    for a in state.attr_bindings:
        by_attr[(a.module, a.attr, a.index)].append(a)
    for (module, attr, index), bindings in by_attr.items():
        if len({_signature(vars_, a) for a in bindings}) < 2:
            continue
        where = f"{module}.{attr}" if module else attr
        where = where if index is None else f"{where}[{index}]"
        described = sorted({vars_.describe(vars_.resolve(a.layout)) for a in bindings})
        reason = (
            f"attribute '{where}' is read for sizes that grow apart ({'; '.join(described)}); growth cannot "
            "rewrite it for all of them"
        )
        for a in bindings:
            freeze_layout(vars_, vars_.resolve(a.layout), reason)


__all__ = ["check_attribute_bindings"]
