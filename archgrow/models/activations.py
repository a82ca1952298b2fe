"""The paper's modified ReLU: max(0, x) with gradient 1 at x = 0.

Zero-fan-in neurons (GradMax, paper §6.1) sit exactly at pre-activation 0, where ``nn.ReLU`` has
gradient 0 and such a neuron would never learn.  ``torch.where(x >= 0, x, 0)`` routes the gradient
through the ``x`` branch at 0, so its derivative there is 1.
"""

from __future__ import annotations

import torch
from torch import nn


def modified_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, torch.zeros_like(x))


class ModifiedReLU(nn.Module):
    """``nn.ReLU`` with gradient 1 at 0; traceable by torch.fx (an element-wise ``where``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return modified_relu(x)


def make_activation(name: str) -> nn.Module:
    if name == "modified_relu":
        return ModifiedReLU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; accepted: 'modified_relu', 'relu'")
