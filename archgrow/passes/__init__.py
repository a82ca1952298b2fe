"""Analysis passes over one traced graph, run in order by :func:`analyze`.

1. :mod:`~archgrow.passes.layouts` propagates layouts node by node with the op and layer rules
   (checking, node by node, that sizes read from growing dims are only used where they follow
   growth: :mod:`~archgrow.passes.size_taint`);
2. :mod:`~archgrow.passes.parameters` binds parameters used directly in the forward and freezes
   parameters shared by two modules;
3. :mod:`~archgrow.passes.parts` rewrites every recorded layout with the parts that splits
   (``chunk``, ``tensor_split``) and cuts (``x[:, :self.n]``) cut widths into;
4. :mod:`~archgrow.passes.attributes` freezes widths whose module attribute is bound to two sizes
   that grow apart.

Each node's analysed output is stored in ``node.meta["archgrow_layout"]``.  Passes that run later,
per group, read the result through :class:`archgrow.WidthGraph`: where to measure a group
(:mod:`archgrow.growth.measure`) and which ops are dead at zero (:mod:`archgrow.growth.auxgrad`).
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx
from torch import nn

from archgrow.ir.captured import CapturedGraph
from archgrow.ops.context import LayoutState
from archgrow.ops.registry import OpTable
from archgrow.passes.attributes import check_attribute_bindings
from archgrow.passes.layouts import LAYOUT_KEY, propagate_layouts
from archgrow.passes.parameters import bind_direct_parameters, freeze_shared_parameters
from archgrow.passes.parts import settle_parts


def analyze(gm: CapturedGraph, values: dict[fx.Node, Any], model: nn.Module, ops: OpTable) -> LayoutState:
    state = propagate_layouts(gm, values, model, ops)
    bind_direct_parameters(state)
    freeze_shared_parameters(state)
    settle_parts(state)
    check_attribute_bindings(state)
    return state


__all__ = ["LAYOUT_KEY", "analyze"]
