"""Attributes growth rewrites must mean one size only.

Growth rewrites a module attribute from the width its binding names (a conv's ``out_channels``,
CSPNet's ``expand_chs``, DPN's ``num_1x1_c``).  An attribute the forward reads for two sizes that
grow apart (``self.dim`` for a residual stream and for a head count) cannot follow both, and one
it also reads for something else (FocalNet divides by ``self.focal_level + 1`` as well as slicing
at it) would change that too.  This pass freezes the widths bound to such an attribute, naming it
and the node that reads it otherwise.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from fractions import Fraction
from typing import Any

from archgrow.ir.attribute_sizes import AttributeInt
from archgrow.ir.bindings import AttrBinding
from archgrow.ir.captured import CapturedGraph
from archgrow.ir.layout import WidthVars
from archgrow.ops.context import LayoutState, freeze_layout


def _signature(vars_: WidthVars, a: AttrBinding) -> tuple[object, ...]:
    """The attribute's new value as a function of the widths: per root the channels it counts
    times the binding's scale, and the constant.  ``num_heads`` bound to the heads of a
    ``(heads, head_dim)`` reshape and to ``heads * v_dim`` where they merge back means the same."""
    counts: Counter[int] = Counter()
    fixed = 0
    for s in vars_.resolve(a.layout):
        if s.var is None:
            fixed += s.fixed
        else:
            counts[vars_.find(s.var)] += s.inner
    scale = Fraction(a.multiplier, a.divisor)
    return (tuple(sorted((r, c * scale) for r, c in counts.items())), (fixed * a.multiplier + a.offset) / Fraction(a.divisor))


def _attribute_ints(value: Any, found: list[AttributeInt]) -> None:
    if isinstance(value, AttributeInt):
        found.append(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            _attribute_ints(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            _attribute_ints(v, found)
    elif isinstance(value, slice):
        _attribute_ints((value.start, value.stop, value.step), found)


def _readers(gm: CapturedGraph) -> dict[tuple[str, str, int | None], list[str]]:
    """Per traced attribute, the nodes whose arguments hold a number computed from it."""
    readers: dict[tuple[str, str, int | None], list[str]] = defaultdict(list)
    for node in gm.graph.nodes:
        found: list[AttributeInt] = []
        _attribute_ints((node.args, node.kwargs), found)
        for value in found:
            readers[value.source.key].append(node.name)
    return readers


def check_attribute_bindings(state: LayoutState) -> None:
    vars_ = state.vars
    by_attr: dict[tuple[str, str, int | None], list[AttrBinding]] = defaultdict(list)
    for a in state.attr_bindings:
        by_attr[(a.module, a.attr, a.index)].append(a)
    readers = _readers(state.gm) if state.sourced_at else {}
    for key, bound_at in state.sourced_at.items():
        others = [n for n in readers.get(key, []) if n not in bound_at]
        if not others:
            continue
        module, attr, index = key
        where = f"{module}.{attr}" if module else attr
        where = where if index is None else f"{where}[{index}]"
        reason = (
            f"attribute '{where}' sets a size growth would rewrite, and the forward also reads it at node "
            f"'{others[0]}' for another value, which would change too"
        )
        for a in by_attr.get(key, []):
            freeze_layout(vars_, vars_.resolve(a.layout), reason)
    for (module, attr, index), bindings in by_attr.items():
        if len(bindings) < 2 or len({_signature(vars_, a) for a in bindings}) < 2:
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
