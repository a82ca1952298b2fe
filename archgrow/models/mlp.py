"""The paper's multilayer perceptron (1 or 2 hidden layers, appendix B.1.1-B.1.2)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from archgrow.errors import ArgumentError
from archgrow.models.activations import make_activation
from archgrow.models.init import InitName, initialize
from archgrow.models.scaling import scaled


def mlp(
    in_features: int = 64,
    hidden: Sequence[int] = (64,),
    num_classes: int = 2,
    *,
    width_mult: float = 1.0,
    activation: str = "modified_relu",
    init: InitName = "paper",
) -> nn.Sequential:
    """Linear -> activation per hidden layer (``hidden1``, ``hidden2``...), then ``out``.

    ``hidden`` are the standard widths; ``width_mult`` scales them (0.25 for the paper's "Small").
    ``init``: ``paper`` (Xavier-uniform, zero bias: Table 2), ``torch`` (PyTorch's defaults) or
    ``kaiming`` (see :mod:`archgrow.models.init`).
    """
    if not hidden:
        raise ArgumentError("hidden must list at least one hidden width")
    layers: dict[str, nn.Module] = {"flatten": nn.Flatten()}
    prev = in_features
    for i, w in enumerate(hidden, start=1):
        width = scaled(w, width_mult)
        layers[f"hidden{i}"] = nn.Linear(prev, width)
        layers[f"act{i}"] = make_activation(activation)
        prev = width
    layers["out"] = nn.Linear(prev, num_classes)
    return initialize(nn.Sequential(OrderedDict(layers)), init)
