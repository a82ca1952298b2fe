"""The paper's modified ReLU: max(0, x) with gradient 1 at x = 0.

Zero-fan-in neurons (GradMax, paper §6.1) sit exactly at pre-activation 0, where ``nn.ReLU`` has
gradient 0 and such a neuron would never learn.  ``threshold(x, -tiny, 0)`` is that function with
native kernels in both directions (its backward passes the gradient where ``x > -tiny``): as fast
as ``relu``, where a Python ``autograd.Function`` measured 2-3x slower per call on CPU.  ``tiny``
is the dtype's smallest *normal* number, so flushing denormals cannot turn the threshold into 0;
the price is that negative subnormal inputs (``|x| < tiny``, e.g. 1.2e-38 in float32) pass
through unchanged instead of becoming 0.  ``torch.fx.wrap`` keeps it one traced call, which the
width analysis knows to be element-wise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archgrow.errors import ArgumentError
from archgrow.ops import register_op

_NEG_TINY = {dt: -torch.finfo(dt).tiny for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


@torch.fx.wrap
def modified_relu(x: torch.Tensor) -> torch.Tensor:
    """``relu`` with derivative 1 at 0 (call it from this module or through :class:`ModifiedReLU`
    inside models that archgrow traces: ``torch.fx.wrap`` hides it only from here)."""
    neg_tiny = _NEG_TINY.get(x.dtype)
    if neg_tiny is None:
        if not x.is_floating_point():  # integer inputs carry no gradient: plain relu
            return torch.relu(x)
        neg_tiny = -torch.finfo(x.dtype).tiny
    return F.threshold(x, neg_tiny, 0.0)


register_op(modified_relu, elementwise=True)  # one traced call, one output per input position


class ModifiedReLU(nn.Module):
    """``nn.ReLU`` with gradient 1 at 0; traced by torch.fx as one element-wise call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return modified_relu(x)


def make_activation(name: str) -> nn.Module:
    if name == "modified_relu":
        return ModifiedReLU()
    if name == "relu":
        return nn.ReLU()
    raise ArgumentError(f"unknown activation {name!r}; accepted: 'modified_relu', 'relu'")
