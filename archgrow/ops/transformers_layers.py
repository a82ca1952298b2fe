"""HuggingFace transformers' own layer types (imported only once ``transformers`` is; see
:mod:`archgrow.ops.integrations`).

``transformers.pytorch_utils.Conv1D`` (GPT-2's projections) is a linear layer with its weight
stored transposed, ``(in, out)``: ``addmm(bias, x.view(-1, nx), weight)``.  Traced into, its
``view(size_out)`` writes the output width as a number and freezes it; described whole, it grows
like ``nn.Linear``, with the weight's dims swapped.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from archgrow.ir.layout import TensorMeta
from archgrow.ops.context import RuleContext
from archgrow.ops.layers import Owner, TensorLayer
from archgrow.ops.registry import OPS, OpTable


class Conv1DLayer(TensorLayer):
    """``Conv1D(nf, nx)``: output features ``nf`` (weight dim 1, bias), input features ``nx`` (weight dim 0)."""

    def layout(self, ctx: RuleContext, name: str, module: nn.Module, src: TensorMeta, shape: tuple[int, ...]) -> Any:
        owner = Owner(name, module)
        lay_in = src.dims[-1]
        again, first_out = owner.first_call(ctx, lay_in)
        if again:
            return TensorMeta(shape, src.dims[:-1] + (first_out,))
        lay_out = ctx.new_width(module.weight.shape[1], name)
        owner.remember_call(ctx, [lay_in], lay_out)
        in_attr = "nx" if hasattr(module, "nx") else None
        owner.bind_weighted(ctx, lay_out, lay_in, out_dim=1, in_dim=0, out_attr="nf", in_attr=in_attr)
        return TensorMeta(shape, src.dims[:-1] + (lay_out,))


def register_transformers_layers(table: OpTable) -> None:
    table.add_layer(Conv1D, Conv1DLayer(), leaf=True)


register_transformers_layers(OPS)

__all__ = ["Conv1DLayer", "register_transformers_layers"]
