"""Initializers: the weights of new units.

One class per spec ``kind``, registered with :func:`register_initializer` where it is defined
(the registry :data:`INITIALIZERS` maps a kind to its class).  NORTH* rules choose only the
fan-in of the group's measured producer (``None``: archgrow's default, Xavier-uniform rescaled to
the mean fan-in norm) and leave fan-out and bias zero, so growth preserves the function; other
producers of a residual group get the default, as the paper does for the non-first convs of a WRN
group.  Gradient-based rules (GradMax, Firefly, NeST) return :class:`Units` with fan-in and
fan-out for every producer and consumer, and Firefly an edit of the units it splits.
"""

from __future__ import annotations

from archgrow.initializers.base import InitRule, Units, register_initializer
from archgrow.spec.kinds import INITIALIZERS

# isort: off
# Imported (so registered) in the order error messages and the schema list the kinds.
from archgrow.initializers.random import RandomRule
from archgrow.initializers.select import SelectRule
from archgrow.initializers.preactivation import PreactivationRule
from archgrow.initializers.weight import WeightInitRule
from archgrow.initializers.gradmax import GradMaxRule
from archgrow.initializers.firefly import FireflyRule
from archgrow.initializers.nest import NestRule
# isort: on

__all__ = [
    "INITIALIZERS",
    "FireflyRule",
    "GradMaxRule",
    "InitRule",
    "NestRule",
    "PreactivationRule",
    "RandomRule",
    "SelectRule",
    "Units",
    "WeightInitRule",
    "register_initializer",
]
