"""What initializers share: candidate drawing and scoring against the existing units (§3.4, §5.0)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from archgrow.growth.binding import GroupBinding, InitContext
from archgrow.growth.measure import Measurement, measuring, producer_forward, replay
from archgrow.metrics import as_matrix, candidate_gaps, candidate_scores, per_sample
from archgrow.spec.kinds import INITIALIZERS, Problem, RegistrationError
from archgrow.spec.schema import InitializerConfig
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
    """Base class of initializers: :meth:`units` (or just :meth:`fan_in`) chooses the new units.

    Capabilities are declared as on :class:`archgrow.triggers.TriggerRule`: ``needs_activations``
    (a probe and input buffer), ``needs_gradient`` (the auxiliary gradient of due steps),
    ``needs_bridge`` (its geometry only), ``needs_candidate_producer`` (a first producer that is
    ``nn.Linear`` or a ``groups=1`` convolution); :meth:`check` adds the kind's own conditions.
    """

    needs_activations = False
    needs_gradient = False
    needs_bridge = False
    needs_candidate_producer = False

    def __init__(self, config: Any, binding: GroupBinding):
        self.config = config

    @classmethod
    def check(cls, config: Any, binding: GroupBinding) -> list[Problem]:
        """Problems that stop this kind from running on ``binding``'s group (none by default)."""
        return []

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
    metric, epsilon, scale = binding.trigger.orthogonality() or ("effective_dim", 0.01, None)
    scale = scale or ("samples" if probe.dense else "channels")
    with measuring(ctx.model):
        z = producer_forward(binding.producer, m.x, candidates.to(m.x.dtype))
        h = replay(ctx.model, probe, z, candidates=True)
    cd = probe.channel_dim
    if metric == "orthogonality_gap":
        cols = [per_sample(h.narrow(cd, i, 1)) for i in range(h.shape[cd])]
        return -candidate_gaps(per_sample(m.h), cols)
    lexicographic = getattr(binding.initializer.config, "lexicographic", False)
    return candidate_scores(as_matrix(m.h, cd), as_matrix(h, cd), epsilon=epsilon, scale=scale, lexicographic=lexicographic)


R = TypeVar("R", bound=type[InitRule])


def register_initializer(name: str, *, config: type[InitializerConfig], replace: bool = False) -> Callable[[R], R]:
    """Class decorator: make ``kind: name`` in spec files run the decorated :class:`InitRule`, with
    options validated by ``config`` (an :class:`archgrow.spec.InitializerConfig` subclass whose
    ``kind`` field is ``Literal[name]``)."""

    def decorate(rule: R) -> R:
        if not (isinstance(rule, type) and issubclass(rule, InitRule)):
            raise RegistrationError(
                f"initializer kind '{name}': {rule!r} is not a subclass of archgrow.initializers.InitRule"
            )
        INITIALIZERS.register(name, rule, config, replace=replace)
        return rule

    return decorate


def rescale_rows(rows: torch.Tensor, target: float) -> torch.Tensor:
    """Each non-zero row scaled to norm ``target`` (zero rows stay zero)."""
    norms = rows.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, rows * (target / norms.clamp_min(1e-300)), rows)


def keep_best(scores: torch.Tensor, k: int, order: str = "highest") -> torch.Tensor:
    """Indices of the ``k`` best candidates (``lowest`` reproduces the authors' MLP code, §9.8)."""
    return torch.topk(scores, k, largest=(order == "highest")).indices.sort().values


__all__ = ["InitRule", "Units", "apply_units", "register_initializer", "candidate_count", "draw", "keep_best", "mean_norm", "score"]
