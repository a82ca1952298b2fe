"""The paper's models: MLP, VGG-11 (32x32) and WideResNet-28, each with a width multiplier."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from archgrow.models.activations import ModifiedReLU, modified_relu
from archgrow.models.mlp import mlp
from archgrow.models.vgg import VGG11, vgg11
from archgrow.models.wrn import WideResNet, wrn28

BUILDERS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "vgg11": vgg11, "wrn28": wrn28}


def build(name: str, **kwargs) -> nn.Module:
    """Build a built-in model by name; unknown names list the accepted ones."""
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown built-in model {name!r}; accepted: {', '.join(BUILDERS)}") from None
    return builder(**kwargs)


__all__ = ["BUILDERS", "VGG11", "ModifiedReLU", "WideResNet", "build", "mlp", "modified_relu", "vgg11", "wrn28"]
