"""The paper's models: MLP, VGG-11 (32x32) and WideResNet-28, each with a width multiplier."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from archgrow.errors import ArchgrowError, ArgumentError
from archgrow.models.activations import ModifiedReLU, modified_relu
from archgrow.models.init import INITS, initialize
from archgrow.models.mlp import mlp
from archgrow.models.vgg import VGG11, vgg11
from archgrow.models.wrn import WideResNet, wrn28

BUILDERS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "vgg11": vgg11, "wrn28": wrn28}


def torchvision_model(name: str, **kwargs) -> nn.Module:
    """A ``torchvision.models`` classification model without weights; errors list what is accepted."""
    try:
        import torchvision
    except ImportError:
        raise ArchgrowError(
            f"'{name}' is not a built-in model ({', '.join(BUILDERS)}) and torchvision is not "
            "installed: pip install 'archgrow[vision]'"
        ) from None
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise ArchgrowError(
            f"unknown model '{name}': use a built-in model ({', '.join(BUILDERS)}) or a "
            f"torchvision classification model ({', '.join(names[:6])}, ...)"
        )
    return torchvision.models.get_model(name, weights=None, **kwargs)


def build(name: str, **kwargs) -> nn.Module:
    """Build a built-in model by name; unknown names list the accepted ones."""
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise ArgumentError(f"unknown built-in model {name!r}; accepted: {', '.join(BUILDERS)}") from None
    return builder(**kwargs)


__all__ = ["BUILDERS", "INITS", "initialize", "VGG11", "ModifiedReLU", "WideResNet", "build", "mlp", "torchvision_model", "modified_relu", "vgg11", "wrn28"]
