"""NORTH-Random (§5.1): archgrow's default fan-in (Xavier-uniform at the mean fan-in norm)."""

from __future__ import annotations

import torch

from archgrow.growth.binding import GroupBinding, InitContext
from archgrow.initializers.base import InitRule, register_initializer
from archgrow.spec.schema import RandomInit


@register_initializer("random", config=RandomInit)
class RandomRule(InitRule):
    def fan_in(self, binding: GroupBinding, k: int, ctx: InitContext) -> torch.Tensor | None:
        return None  # grow() draws it with the grower's generator
