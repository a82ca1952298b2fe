"""Triggers: after an optimizer step, how many units should a group gain?

One class per spec ``kind``, registered with :func:`register_trigger` where it is defined (the
registry :data:`TRIGGERS` maps a kind to its class).  A trigger returns a
:class:`Decision`; capping at ``max_width`` and rounding to the group's step is done once, by the
grower, so every trigger respects them the same way.
"""

from __future__ import annotations

from archgrow.spec.kinds import TRIGGERS, Problem
from archgrow.triggers.base import BaselineRule, Decision, TriggerRule, grow_count, register_trigger

# isort: off
# Imported (so registered) in the order error messages and the schema list the kinds.
from archgrow.triggers.activation import ActivationRule
from archgrow.triggers.weight import WeightRule
from archgrow.triggers.gradient import GradientRule
from archgrow.triggers.schedules import BatchedRule, LinearRule, StaticRule
# isort: on

__all__ = [
    "TRIGGERS",
    "ActivationRule",
    "BaselineRule",
    "BatchedRule",
    "Decision",
    "GradientRule",
    "LinearRule",
    "Problem",
    "StaticRule",
    "TriggerRule",
    "WeightRule",
    "grow_count",
    "register_trigger",
]
