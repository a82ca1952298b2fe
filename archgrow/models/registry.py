"""The built-in models by name, each with what the CLI and the runner need to build it.

One record per model: its builder, a batch-of-one example input (what ``archgrow groups`` traces
it with), which model-section options apply to it, and how to size it for a dataset (input
features or channels, classes).  The runner and the CLI read this table; neither names a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from archgrow.errors import ArgumentError, RegistrationError

Adapt = Callable[[tuple[int, ...], int, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class BuiltinModel:
    """``adapt(sample_shape, num_classes, options)`` returns the builder's keyword arguments for a
    dataset whose samples have ``sample_shape``; ``options`` are the model-section fields listed
    in ``options`` (e.g. ``hidden``)."""

    name: str
    builder: Callable[..., nn.Module]
    example_input: tuple[int, ...]
    adapt: Adapt
    options: tuple[str, ...] = ("activation",)


MODELS: dict[str, BuiltinModel] = {}


def register_model(
    name: str,
    builder: Callable[..., nn.Module],
    *,
    example_input: tuple[int, ...],
    adapt: Adapt,
    options: tuple[str, ...] = ("activation",),
) -> None:
    """Make ``name`` a built-in model (the experiment file's ``model.name``, ``archgrow groups NAME``)."""
    if name in MODELS and MODELS[name].builder is not builder:
        raise RegistrationError(f"model '{name}' is already registered (by {MODELS[name].builder.__qualname__})")
    MODELS[name] = BuiltinModel(name, builder, tuple(example_input), adapt, tuple(options))


def needs_images(name: str, shape: tuple[int, ...]) -> None:
    if len(shape) != 3:
        raise ArgumentError(
            f"model.name: {name} needs image data (N, C, H, W), but the data gives samples of shape {shape}; "
            "use images: true in the data section"
        )


def dense_input(shape: tuple[int, ...], num_classes: int, options: dict[str, Any]) -> dict[str, Any]:
    hidden = options.get("hidden")
    return {"in_features": math.prod(shape), "hidden": tuple(hidden) if hidden else (64,), "num_classes": num_classes}


__all__ = ["MODELS", "BuiltinModel", "dense_input", "needs_images", "register_model"]
