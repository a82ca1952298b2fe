"""What every trigger shares: the decision record and the threshold arithmetic of eqs. 3, 5, 10."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from archgrow.binding import GroupBinding
from archgrow.measure import Measurement


@dataclass(frozen=True)
class Decision:
    """``add`` units wanted (before the cap); ``score`` compared with ``threshold``."""

    add: int
    score: float
    threshold: float


def grow_count(score: int, base: float, width: int, rounding: str) -> tuple[int, float]:
    """Units to add for a count ``score`` against ``base * width`` (eqs. 3/5, ``max(0, .)`` form).

    ``code`` (default, the authors' code and the reported results): threshold ``floor(base*M)``,
    add ``score - threshold`` when the score exceeds it.  ``paper``: add ``floor(score - base*M)``,
    one fewer whenever ``base*M`` is not an integer.
    """
    if rounding == "code":
        threshold = math.floor(base * width + 1e-9)
        return max(0, score - threshold), float(threshold)
    threshold = base * width
    return max(0, math.floor(score - threshold + 1e-9)), threshold


class TriggerRule:
    """Base class: ``evaluate`` after each due step; ``needs_activations`` asks for a measurement,
    ``needs_step_start`` for a call of :meth:`step_start` at the first training forward of each
    due step (before the optimizer changes the weights)."""

    needs_activations = False
    needs_gradient = False  # reads the auxiliary gradient of the step (binding.bridge)
    needs_step_start = False

    def __init__(self, config: Any, binding: GroupBinding):
        self.config = config

    def start(self, binding: GroupBinding, measurement: Measurement | None) -> None:
        """Set the baseline from the network at initialisation (phi(f_0))."""

    def step_start(self, binding: GroupBinding) -> None:
        """The due step's first training forward is about to run (weights are still pre-update)."""

    def evaluate(self, binding: GroupBinding, step: int, measurement: Measurement | None) -> Decision:
        raise NotImplementedError
