"""Initializers: the fan-in of new units (fan-out and bias stay zero, so growth preserves function).

One class per spec ``kind`` (registered in :data:`INITIALIZERS`).  Each returns the new fan-in of
the group's measured producer, or ``None`` for archgrow's default (Xavier-uniform rescaled to
the mean fan-in norm).  Other producers of a residual group always get the default, as the paper
does for the non-first convs of a WRN group.
"""

from __future__ import annotations

from archgrow.initializers.base import InitRule
from archgrow.initializers.firefly import FireflyRule
from archgrow.initializers.gradmax import GradMaxRule
from archgrow.initializers.nest import NestRule
from archgrow.initializers.preactivation import PreactivationRule
from archgrow.initializers.random import RandomRule
from archgrow.initializers.select import SelectRule
from archgrow.initializers.weight import WeightInitRule

INITIALIZERS: dict[str, type[InitRule]] = {
    "random": RandomRule,
    "select": SelectRule,
    "preactivation": PreactivationRule,
    "weight": WeightInitRule,
    "gradmax": GradMaxRule,
    "firefly": FireflyRule,
    "nest": NestRule,
}

__all__ = ["INITIALIZERS", "FireflyRule", "GradMaxRule", "NestRule", "InitRule", "PreactivationRule", "RandomRule", "SelectRule", "WeightInitRule"]
