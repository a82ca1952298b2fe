"""The paper's modified ReLU: max(0, x) with gradient 1 at x = 0.

Zero-fan-in neurons (GradMax, paper §6.1) sit exactly at pre-activation 0, where ``nn.ReLU`` has
gradient 0 and such a neuron would never learn.  The forward is ``relu`` (one fast kernel; an
element-wise ``where(x >= 0, x, 0)`` has the same derivative but measured ~30x slower on CPU) and
the backward passes the gradient wherever ``x >= 0``.  ``torch.fx.wrap`` keeps it one traced
call, which the width analysis knows to be element-wise.
"""

from __future__ import annotations

import torch
from torch import nn


class _ModifiedReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        mask = x >= 0
        ctx.save_for_backward(mask)
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (mask,) = ctx.saved_tensors
        return grad * mask


@torch.fx.wrap
def modified_relu(x: torch.Tensor) -> torch.Tensor:
    """``relu`` with derivative 1 at 0 (call it from this module or through :class:`ModifiedReLU`
    inside models that archgrow traces: ``torch.fx.wrap`` hides it only from here)."""
    return _ModifiedReLUFunction.apply(x)


class ModifiedReLU(nn.Module):
    """``nn.ReLU`` with gradient 1 at 0; traced by torch.fx as one element-wise call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return modified_relu(x)


def make_activation(name: str) -> nn.Module:
    if name == "modified_relu":
        return ModifiedReLU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; accepted: 'modified_relu', 'relu'")
