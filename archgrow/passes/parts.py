"""Equal splits, settled: every recorded layout rewritten with the parts its widths were split into.

An equal split (``chunk``, ``tensor_split``, ``F.glu``) is met after the layers that made the
width, so their bindings, members and node layouts name the whole width.  Once every node is
analysed, this pass replaces each refined width by its parts (:meth:`WidthVars.resolve`), so that
surgery inserts new channels at the end of every part, moves what was recorded on the whole width
onto the parts, and checks again the module attributes that count groups of channels (a grouped
conv's ``groups``, a GroupNorm's ``num_groups``): their groups must not straddle two parts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from archgrow.ir.layout import Layout, TensorMeta, WidthVars
from archgrow.ops.context import LayoutState, freeze_layout
from archgrow.passes.layouts import LAYOUT_KEY


def settle_parts(state: LayoutState) -> None:
    vars_ = state.vars
    if not vars_.parts:
        return
    resolve = vars_.resolver()
    for node, value in state.meta.items():
        resolved = _resolve_value(resolve, value)
        state.meta[node] = resolved
        if LAYOUT_KEY in node.meta:
            node.meta[LAYOUT_KEY] = resolved
    state.tensor_bindings[:] = [dataclasses.replace(b, layout=resolve(b.layout)) for b in state.tensor_bindings]
    state.members[:] = [dataclasses.replace(m, layout=resolve(m.layout)) for m in state.members]
    attrs = []
    for a in state.attr_bindings:
        lay = resolve(a.layout)
        if a.divisor > 1 and lay != a.layout:
            _check_groups(vars_, lay, a.divisor, f"'{a.module}.{a.attr}'")
        attrs.append(dataclasses.replace(a, layout=lay))
    state.attr_bindings[:] = attrs
    vars_.carry_to_parts()


def _check_groups(vars_: WidthVars, lay: Layout, size: int, attr: str) -> None:
    """Channels counted in groups of ``size`` by ``attr``: every part starts a group and grows by whole groups."""
    offsets = [sum(vars_.seg_size(s) for s in lay[:i]) for i in range(1, len(lay))]
    if any(o % size for o in offsets):
        reason = f"{attr} counts groups of {size} channels, which straddle the parts of an equal split"
        freeze_layout(vars_, lay, reason)
    for s in lay:
        if s.var is not None:
            vars_.require_step(s.var, size // math.gcd(size, s.inner), f"{attr} counts groups of {size} channels")


def _resolve_value(resolve: Callable[[Layout], Layout], value: Any) -> Any:
    if isinstance(value, TensorMeta):
        return TensorMeta(value.shape, tuple(None if lay is None else resolve(lay) for lay in value.dims))
    if isinstance(value, (tuple, list)):
        return type(value)(_resolve_value(resolve, v) for v in value)
    if isinstance(value, dict):
        return {k: _resolve_value(resolve, v) for k, v in value.items()}
    return value


__all__ = ["settle_parts"]
