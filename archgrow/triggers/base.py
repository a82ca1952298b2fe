"""What every trigger shares: the decision record and the threshold arithmetic of eqs. 3, 5, 10."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from archgrow.growth.binding import GroupBinding
from archgrow.growth.measure import Measurement
from archgrow.spec.kinds import TRIGGERS, Problem, RegistrationError
from archgrow.spec.schema import TriggerConfig


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
    """Base class of triggers: ``evaluate`` runs after each due step and says how many units to add.

    A trigger declares what it needs as class attributes, and the grower provides exactly that
    (it never looks at kind names):

    - ``needs_activations``: a measurement of the group's activations (a probe, an input buffer);
    - ``needs_gradient``: the step's auxiliary gradient ``binding.bridge`` (captured on due steps);
    - ``needs_bridge``: the auxiliary gradient's geometry without capturing it;
    - ``needs_candidate_producer``: the group's first producer is ``nn.Linear`` or a ``groups=1``
      convolution (weight-based rules);
    - ``needs_step_start``: :meth:`step_start` at the first training forward of each due step;
    - ``never_fires``: never evaluated (static baselines).

    :meth:`check` adds the kind's own conditions on a group, :meth:`cap` a width it never
    exceeds (schedules), :meth:`state_dict` the running state a checkpoint must keep.
    """

    needs_activations = False
    needs_gradient = False
    needs_bridge = False
    needs_candidate_producer = False
    needs_step_start = False
    never_fires = False

    def __init__(self, config: Any, binding: GroupBinding):
        self.config = config

    @classmethod
    def check(cls, config: Any, binding: GroupBinding) -> list[Problem]:
        """Problems that stop this kind from running on ``binding``'s group (none by default)."""
        return []

    def cap(self, binding: GroupBinding) -> int | None:
        """A width the group never grows past, besides ``max_width`` (None: no other cap)."""
        return None

    @property
    def measures_step_forward(self) -> bool:
        """Activations come from the training step's own forward (``source: step``), not the buffer."""
        return False

    @property
    def buffer_size(self) -> int | None:
        """Input-buffer capacity asked for (None: Table 2's default for the model kind)."""
        return None

    @property
    def full_buffer_baseline(self) -> bool:
        """The baseline is meant to be measured on a full buffer (see ``GrowingModel.prefill``)."""
        return self.needs_activations and not self.measures_step_forward

    def orthogonality(self) -> tuple[str, float, str | None] | None:
        """``(metric, epsilon, scale)`` that candidate scoring should share with this trigger, or None
        for the paper's defaults."""
        return None

    def start(self, binding: GroupBinding, measurement: Measurement | None) -> None:
        """Set the baseline from the network at initialisation (phi(f_0))."""

    def step_start(self, binding: GroupBinding) -> None:
        """The due step's first training forward is about to run (weights are still pre-update)."""

    def evaluate(self, binding: GroupBinding, step: int, measurement: Measurement | None) -> Decision:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Running state to checkpoint (plain numbers; empty for stateless triggers)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class BaselineRule(TriggerRule):
    """A trigger comparing a count with ``base * width``, ``base`` set at :meth:`start` (eqs. 3, 5)."""

    def __init__(self, config: Any, binding: GroupBinding):
        super().__init__(config, binding)
        self.base: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {} if self.base is None else {"base": self.base}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base = state.get("base")


R = TypeVar("R", bound=type[TriggerRule])


def register_trigger(name: str, *, config: type[TriggerConfig], replace: bool = False) -> Callable[[R], R]:
    """Class decorator: make ``kind: name`` in spec files run the decorated :class:`TriggerRule`,
    with options validated by ``config`` (a :class:`archgrow.spec.TriggerConfig` subclass whose
    ``kind`` field is ``Literal[name]``)."""

    def decorate(rule: R) -> R:
        if not (isinstance(rule, type) and issubclass(rule, TriggerRule)):
            raise RegistrationError(f"trigger kind '{name}': {rule!r} is not a subclass of archgrow.triggers.TriggerRule")
        TRIGGERS.register(name, rule, config, replace=replace)
        return rule

    return decorate
