"""What initializers share: candidate drawing and scoring against the existing units (§3.4, §5.0)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from archgrow.binding import GroupBinding, InitContext
from archgrow.measure import Measurement, measuring, producer_forward, replay
from archgrow.metrics import as_matrix, candidate_gaps, candidate_scores, per_sample
from archgrow.surgery.grow import grow
from archgrow.surgery.tensors import random_units, unit_norms

DENSE_CANDIDATES = 1000
CONV_CANDIDATES = 100


@dataclass
class Units:
    """New units for :func:`archgrow.grow`, plus an edit run right after it (``after(old_width)``),
    e.g. Firefly's split of existing neurons.  ``None`` fields take grow's defaults."""

    fan_in: torch.Tensor | Mapping[str, torch.Tensor] | None = None
    fan_out: Mapping[str, torch.Tensor] | None = None
    after: Callable[[int], None] | None = None


def apply_units(binding: GroupBinding, k: int, units: Units, *, optimizer: Any = None, generator: Any = None) -> None:
    """Grow ``binding``'s group by ``k`` as ``units`` says (used for real growth and for trials)."""
    old = binding.width
    fan_in = units.fan_in
    if isinstance(fan_in, torch.Tensor):
        fan_in = {binding.producer_name: fan_in}
    grow(binding.group.graph, binding.group, k, fan_in=fan_in, fan_out=units.fan_out, optimizer=optimizer, generator=generator)
    if units.after is not None:
        units.after(old)


class InitRule:
    """Base class; ``needs_activations`` makes the grower keep an input buffer, ``needs_gradient``
    makes it capture the auxiliary gradient of due steps."""

    needs_activations = False
    needs_gradient = False

    def __init__(self, config: Any, binding: GroupBinding):
        self.config = config

    def fan_in(self, binding: GroupBinding, k: int, ctx: InitContext) -> torch.Tensor | None:
        raise NotImplementedError

    def units(self, binding: GroupBinding, k: int, ctx: InitContext) -> Units:
        """The ``k`` new units; by default only the first producer's fan-in is chosen."""
        return Units(fan_in=self.fan_in(binding, k, ctx))

    def max_units(self, binding: GroupBinding) -> int | None:
        """At most this many units per event (GradMax: the number of singular vectors)."""
        return None


def mean_norm(binding: GroupBinding) -> float:
    """Target norm of a new unit's fan-in: the mean over existing units, computed once (§9.18)."""
    return float(unit_norms(binding.producer.weight, 0).mean())


def draw(binding: GroupBinding, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` Xavier-uniform fan-ins shaped like the producer's weight rows, at the mean norm."""
    return random_units(binding.producer.weight.detach(), 0, n, generator)


def candidate_count(config: Any, binding: GroupBinding, k: int) -> int:
    base = config.candidates if config.candidates is not None else (CONV_CANDIDATES if binding.conv else DENSE_CANDIDATES)
    return base + k


def score(binding: GroupBinding, m: Measurement, candidates: torch.Tensor, ctx: InitContext) -> torch.Tensor:
    """Score each candidate fan-in by the orthogonality of its activation to the existing ones.

    Candidate activations go through the same probe as the group's (activation, pooling...),
    with norm layers at a new channel's identity state.  The metric follows the group's
    activation trigger when it has one (effective dimension, or gap), else the effective
    dimension with the paper's defaults.  Higher is better.
    """
    probe = binding.probe
    trig = binding.settings.trigger
    metric = getattr(trig, "metric", "effective_dim")
    epsilon = getattr(trig, "epsilon", 0.01)
    scale = getattr(binding.trigger, "scale", None) or ("samples" if probe.dense else "channels")
    with measuring(ctx.model):
        z = producer_forward(binding.producer, m.x, candidates.to(m.x.dtype))
        h = replay(ctx.model, probe, z, candidates=True)
    cd = probe.channel_dim
    if metric == "orthogonality_gap":
        cols = [per_sample(h.narrow(cd, i, 1)) for i in range(h.shape[cd])]
        return -candidate_gaps(per_sample(m.h), cols)
    lexicographic = getattr(binding.initializer.config, "lexicographic", False)
    return candidate_scores(as_matrix(m.h, cd), as_matrix(h, cd), epsilon=epsilon, scale=scale, lexicographic=lexicographic)


def keep_best(scores: torch.Tensor, k: int, order: str = "highest") -> torch.Tensor:
    """Indices of the ``k`` best candidates (``lowest`` reproduces the authors' MLP code, §9.8)."""
    return torch.topk(scores, k, largest=(order == "highest")).indices.sort().values


__all__ = ["InitRule", "Units", "apply_units", "candidate_count", "draw", "keep_best", "mean_norm", "score"]
