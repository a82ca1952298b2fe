"""Save a growing model and resume it in a fresh process.

A grown model cannot be loaded into a freshly built one with ``load_state_dict``: the shapes
differ.  A checkpoint therefore stores the width of every group, and :func:`load` first grows
the fresh base model to those widths (with archgrow's own surgery, so every dependent tensor and
attribute follows), then loads the weights, the optimizer state and the grower's own state
(step count, trigger baselines, input buffer, generator), so the next ``grow_step`` decides
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from archgrow.errors import ArchgrowError
from archgrow.grower import GrowingModel
from archgrow.spec.io import parse_spec
from archgrow.surgery.grow import grow
from archgrow.version import __version__

FORMAT = "archgrow-checkpoint"
FORMAT_VERSION = 1


def save(path: str | os.PathLike, grown: GrowingModel, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write weights, group widths, spec, history, grower state and (optionally) optimizer state."""
    graph = grown.graph
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "archgrow_version": __version__,
        "spec": grown.spec.model_dump(mode="json"),
        "spec_source": grown.spec.source,
        "widths": graph.widths(),
        "example_inputs": [t.detach().cpu() if isinstance(t, torch.Tensor) else t for t in graph.example_inputs],
        "model": grown.model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "grower": grown.grower_state(),
    }
    torch.save(payload, path)


def load(
    path: str | os.PathLike, fresh_model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> GrowingModel:
    """Rebuild a :class:`GrowingModel` from ``fresh_model`` (the base model, as first built).

    ``optimizer`` may be created on ``fresh_model.parameters()`` before calling this: growth
    keeps parameter objects, so it stays valid and receives the saved state.
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArchgrowError(f"{path}: not an archgrow checkpoint (save it with archgrow.save)")
    if payload["format_version"] > FORMAT_VERSION:
        raise ArchgrowError(
            f"{path}: checkpoint format {payload['format_version']} is newer than this archgrow reads "
            f"({FORMAT_VERSION}); upgrade archgrow"
        )
    device = next((p.device for p in fresh_model.parameters()), torch.device("cpu"))
    inputs = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in payload["example_inputs"])
    spec = parse_spec(payload["spec"], source=payload.get("spec_source") or str(path))
    grown = GrowingModel(fresh_model, spec, inputs)
    graph = grown.graph
    saved: dict[str, int] = payload["widths"]
    current = graph.widths()
    unknown = sorted(set(saved) - set(current))
    if unknown or set(current) - set(saved):
        raise ArchgrowError(
            f"{path}: the checkpoint's groups do not match the model's (only in checkpoint: "
            f"{', '.join(unknown) or 'none'}; only in model: {', '.join(sorted(set(current) - set(saved))) or 'none'}); "
            "pass the same architecture, freshly built"
        )
    for name, width in saved.items():
        now = graph.group(name).width
        if width < now:
            raise ArchgrowError(
                f"{path}: group '{name}' is {now} wide in the given model but {width} in the checkpoint; "
                "pass the base model as first built, not a grown one"
            )
        if width > now:
            grow(graph, name, width - now)
    grown.model.load_state_dict(payload["model"])
    if optimizer is not None:
        if payload["optimizer"] is None:
            raise ArchgrowError(f"{path}: the checkpoint has no optimizer state (save(..., optimizer=opt))")
        optimizer.load_state_dict(payload["optimizer"])
    grown.load_grower_state(payload["grower"])
    return grown
