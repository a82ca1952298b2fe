"""T_weight (eq. 5): the activation trigger's rule on the effective dimension of the fan-in matrix.

The matrix is the measured producer's weight, one row per unit (conv: the flattened filter),
scaled by ``1/sqrt(fan_in)`` and without the bias column (the authors' code; ``include_bias``
gives the paper's form).  The count can never exceed ``fan_in``, which is what stops it (§4.1).
"""

from __future__ import annotations

from archgrow.growth.binding import GroupBinding
from archgrow.growth.measure import Measurement
from archgrow.metrics import weight_count
from archgrow.spec.schema import WeightTrigger
from archgrow.triggers.base import BaselineRule, Decision, grow_count, register_trigger


@register_trigger("weight", config=WeightTrigger)
class WeightRule(BaselineRule):
    needs_candidate_producer = True

    def __init__(self, config: WeightTrigger, binding: GroupBinding):
        super().__init__(config, binding)
        self.running_max = config.running_max if config.running_max is not None else binding.conv_model

    def orthogonality(self) -> tuple[str, float, str | None]:
        return "effective_dim", self.config.epsilon, None

    def count(self, binding: GroupBinding) -> int:
        p = binding.producer
        bias = getattr(p, "bias", None) if self.config.include_bias else None
        return weight_count(p.weight, epsilon=self.config.epsilon, bias=bias)

    def start(self, binding: GroupBinding, measurement: Measurement | None) -> None:
        self.base = self.config.gamma * self.count(binding) / binding.width

    def evaluate(self, binding: GroupBinding, step: int, measurement: Measurement | None) -> Decision:
        width = binding.width
        score = self.count(binding)
        base = self.base
        add, threshold = grow_count(score, base, width, self.config.rounding)
        if self.running_max:
            self.base = max(base, self.config.gamma * score / width)
        return Decision(add, score, threshold)
