"""Initializers: the weights of new units.

One class per spec ``kind`` (registered in :data:`INITIALIZERS`).  NORTH* rules choose only the
fan-in of the group's measured producer (``None``: archgrow's default, Xavier-uniform rescaled to
the mean fan-in norm) and leave fan-out and bias zero, so growth preserves the function; other
producers of a residual group get the default, as the paper does for the non-first convs of a WRN
group.  Gradient-based rules (GradMax, Firefly, NeST) return :class:`Units` with fan-in and
fan-out for every producer and consumer, and Firefly an edit of the units it splits.
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
