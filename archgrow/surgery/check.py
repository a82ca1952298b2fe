"""Growing each group once, and undoing it, to find the groups whose growth breaks the forward.

torch.export captures a forward with static shapes: a size the code reads from a tensor
(``B, N, C = x.shape; ... .reshape(B, 1, C)`` in CrossViT's cross-attention) becomes a number in
the graph, so analysis cannot see that it ties two widths, and growing one of them would break
the user's forward.  fx keeps such reads as nodes and never needs this.  For a model captured by
export, every growable group is grown by its step inside :func:`~archgrow.surgery.channels.trial`
(which undoes it exactly), and the model's own forward runs on the example inputs; groups under
which it fails, or returns other shapes, are frozen with the error.  All groups are tried at once
first (one forward when nothing breaks), then halves, down to the groups at fault.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from archgrow.graph.trace import forked_rng, kept_buffers, training_flags
from archgrow.graph.widthgraph import WidthGraph, WidthGroup
from archgrow.surgery.channels import trial
from archgrow.surgery.grow import grow


def _shapes(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("tensor", value.ndim)
    if isinstance(value, (tuple, list)):
        return tuple(_shapes(v) for v in value)
    if isinstance(value, dict):
        return {k: _shapes(v) for k, v in value.items()}
    return None


def _failure(graph: WidthGraph, groups: Sequence[WidthGroup], expected: Any) -> str | None:
    """What goes wrong when every group in ``groups`` grows by its step (None: the forward runs)."""
    model = graph.model
    with contextlib.ExitStack() as stack:
        for grp in groups:
            stack.enter_context(trial(graph, grp, model))
            grow(graph, grp, grp.step)
        try:
            out = model(*graph.example_inputs)
        except Exception as exc:  # the user's forward: any error means growth broke it
            return f"{type(exc).__name__}: {exc}"
        if _shapes(out) != expected:
            return "the forward returns a different structure"
    return None


def _at_fault(graph: WidthGraph, groups: list[WidthGroup], expected: Any, failure: str) -> dict[str, str]:
    if len(groups) == 1:
        return {groups[0].name: failure}
    half = len(groups) // 2
    found: dict[str, str] = {}
    for part in (groups[:half], groups[half:]):
        error = _failure(graph, part, expected)
        if error is not None:
            found.update(_at_fault(graph, part, expected, error))
    if not found:  # only together: freeze them all
        found = dict.fromkeys((g.name for g in groups), failure)
    return found


def freeze_groups_that_break_the_forward(graph: WidthGraph) -> list[str]:
    """Freeze, with the error, each growable group whose growth by its step breaks the model's
    forward on the graph's example inputs; returns their names.  Nothing stays changed."""
    model = graph.model
    groups = [g for g in graph.groups if g.growable]
    if not groups:
        return []
    with training_flags(model, False), torch.no_grad(), forked_rng(model), kept_buffers(model):
        expected = _shapes(model(*graph.example_inputs))
        failure = _failure(graph, groups, expected)
        broken = {} if failure is None else _at_fault(graph, groups, expected, failure)
    for name, error in broken.items():
        graph.freeze(
            name,
            f"growing it breaks the model's own forward ({error[:300]}); the model was captured with torch.export, "
            "whose graph shows sizes the code reads from tensors (x.shape) as fixed numbers, so what ties this "
            "width to others is not visible: trace with fx (frontend='fx', marking untraceable modules as "
            "leaf_modules) to see it",
        )
    return sorted(broken)


__all__ = ["freeze_groups_that_break_the_forward"]
