"""The paper's models: MLP, VGG-11 (32x32) and WideResNet-28, each with a width multiplier."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from archgrow.errors import ArchgrowError, ArgumentError
from archgrow.models.activations import ModifiedReLU, modified_relu
from archgrow.models.init import INITS, initialize
from archgrow.models.mlp import mlp
from archgrow.models.registry import MODELS, BuiltinModel, dense_input, needs_images, register_model
from archgrow.models.vgg import VGG11, vgg11
from archgrow.models.wrn import WideResNet, wrn28


def _vgg_input(shape: tuple[int, ...], num_classes: int, options: dict) -> dict:
    needs_images("vgg11", shape)
    return {"num_classes": num_classes, "in_channels": shape[0], "input_size": shape[-1]}


def _wrn_input(shape: tuple[int, ...], num_classes: int, options: dict) -> dict:
    needs_images("wrn28", shape)
    return {"num_classes": num_classes, "in_channels": shape[0]}


register_model("mlp", mlp, example_input=(1, 64), adapt=dense_input, options=("hidden", "activation"))
register_model("vgg11", vgg11, example_input=(1, 3, 32, 32), adapt=_vgg_input)
register_model("wrn28", wrn28, example_input=(1, 3, 32, 32), adapt=_wrn_input)
BUILDERS: dict[str, Callable[..., nn.Module]] = {name: m.builder for name, m in MODELS.items()}


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


__all__ = ["BUILDERS", "MODELS", "BuiltinModel", "register_model", "INITS", "initialize", "VGG11", "ModifiedReLU", "WideResNet", "build", "mlp", "torchvision_model", "modified_relu", "vgg11", "wrn28"]
