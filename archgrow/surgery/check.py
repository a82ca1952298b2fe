"""Growing each group once, and undoing it, to find the groups whose growth breaks the forward.

torch.export captures a forward with static shapes: a size the code reads from a tensor
(``B, N, C = x.shape; ... .reshape(B, 1, C)`` in CrossViT's cross-attention) becomes a number in
the graph, so analysis cannot see that it ties two widths, and growing one of them would break
the user's forward.  Under fx, growth that rewrites a module attribute (``x[:, :self.n]``) is
exact only if the code reads the attribute for nothing analysis missed (a loop count).  So the
groups in doubt (every group of an export capture; under fx, those rewriting an attribute) are
grown by their step inside :func:`~archgrow.surgery.channels.trial` (which undoes it exactly),
and the model's own forward runs on the example inputs: groups under which it fails, returns
other shapes, or (where the group claims to keep the function) returns other values, are frozen
with what went wrong.  All groups are tried at once first (one forward when nothing breaks),
then halves, down to the groups at fault.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from archgrow.graph.trace import forked_rng, kept_buffers, skeleton, training_flags
from archgrow.graph.widthgraph import WidthGraph, WidthGroup
from archgrow.surgery.channels import trial
from archgrow.surgery.grow import grow


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


# Relative change of an output above which growth said to keep the function did not (float32
# reordering in wider layers stays far below it).
FUNCTION_TOLERANCE = 1e-3


def _failure(graph: WidthGraph, groups: Sequence[WidthGroup], reference: Any) -> str | None:
    """What goes wrong when every group in ``groups`` grows by its step (None: nothing)."""
    model = graph.model
    with contextlib.ExitStack() as stack:
        for grp in groups:
            stack.enter_context(trial(graph, grp, model, growth_only=True))
            grow(graph, grp, grp.step)
        try:
            out = model(*graph.example_inputs)
        except Exception as exc:  # the user's forward: any error means growth broke it
            return f"{type(exc).__name__}: {exc}"
        if skeleton(out) != skeleton(reference):
            return f"the outputs changed from {skeleton(reference)} to {skeleton(out)}"
        if not all(g.preserves_function for g in groups):
            return None
        for before, after in zip(_tensors(reference), _tensors(out), strict=True):
            if before.is_floating_point():
                diff = float((before - after).abs().max() / before.abs().max().clamp_min(1e-12))
                if diff > FUNCTION_TOLERANCE:
                    return f"the output changed by {diff:.1e} (relative), though the group keeps the function"
    return None


def _at_fault(graph: WidthGraph, groups: list[WidthGroup], reference: Any, failure: str) -> dict[str, str]:
    """The groups in ``groups`` (which together fail with ``failure``) at fault, by halving."""
    if len(groups) == 1:
        return {groups[0].name: failure}
    half = len(groups) // 2
    found: dict[str, str] = {}
    for part in (groups[:half], groups[half:]):
        error = _failure(graph, part, reference)
        if error is not None:
            found.update(_at_fault(graph, part, reference, error))
    if not found:  # only together: freeze them all
        found = dict.fromkeys((g.name for g in groups), failure)
    return found


def freeze_groups_that_break_the_forward(graph: WidthGraph, groups: Sequence[WidthGroup] | None = None) -> list[str]:
    """Freeze, with what went wrong, each of ``groups`` (default: every growable group) whose
    growth by its step breaks the model's forward on the graph's example inputs, or changes its
    output where the group says it keeps the function; returns their names.  Nothing stays
    changed."""
    model = graph.model
    candidates = [g for g in (graph.groups if groups is None else groups) if g.growable]
    if not candidates:
        return []
    with (
        training_flags(model, False), torch.no_grad(), forked_rng(model), kept_buffers(model), graph.modules_fixed(),
        graph.shapes_deferred(),
    ):  # fmt: skip
        reference = model(*graph.example_inputs)
        broken: dict[str, str] = {}
        for kind in (True, False):  # groups keeping the function are checked on values too
            batch = [g for g in candidates if g.preserves_function == kind]
            failure = _failure(graph, batch, reference) if batch else None
            if failure is not None:
                broken.update(_at_fault(graph, batch, reference, failure))
    exported = graph.frontend == "export"
    for name, error in broken.items():
        why = (
            "the model was captured with torch.export, whose graph shows sizes the code reads from tensors "
            "(x.shape) as fixed numbers, as it shows numbers written in the code, so what ties this width to others "
            "is not visible: trace with fx (frontend='fx', marking untraceable modules as leaf_modules) to see it, "
            "or, where the code writes a size of this width as a number, write -1 or x.size(d) there"
            if exported
            else "growth rewrites a module attribute the forward also reads for something analysis does not see "
            "(a loop count, or a number written in the code that only happens to equal the attribute)"
        )
        graph.freeze(name, f"growing it breaks the model's own forward ({error[:300]}); {why}")
    return sorted(broken)


__all__ = ["freeze_groups_that_break_the_forward"]
