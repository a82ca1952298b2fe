"""Triggers: after an optimizer step, how many units should a group gain?

One class per spec ``kind`` (registered in :data:`TRIGGERS`).  A trigger returns a
:class:`Decision`; capping at ``max_width`` and rounding to the group's step is done once, by the
grower, so every trigger respects them the same way.
"""

from __future__ import annotations

from archgrow.triggers.activation import ActivationRule
from archgrow.triggers.base import Decision, TriggerRule, grow_count
from archgrow.triggers.gradient import GradientRule
from archgrow.triggers.schedules import BatchedRule, LinearRule, StaticRule
from archgrow.triggers.weight import WeightRule

TRIGGERS: dict[str, type[TriggerRule]] = {
    "activation": ActivationRule,
    "weight": WeightRule,
    "gradient": GradientRule,
    "linear_schedule": LinearRule,
    "batched_schedule": BatchedRule,
    "static": StaticRule,
}

__all__ = ["TRIGGERS", "ActivationRule", "BatchedRule", "Decision", "GradientRule", "LinearRule", "StaticRule", "TriggerRule", "WeightRule", "grow_count"]
