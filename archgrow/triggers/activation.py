"""T_act (eq. 3) with the running maximum of eq. 10.

Baseline ``base = gamma * s_0 / M_0`` from the first batch the wrapped model sees (before the
first update).  Each evaluation: ``s = count(activations)`` and add ``s - floor(base * M)`` units
when positive (eq. 3 with ``max`` for the paper's ``min`` typo, code rounding by default).  With
``running_max`` the baseline becomes ``max(base, gamma * s / M)`` *after* the threshold is used,
as the authors' code does on every layer of CNN runs, for T_act and T_weight alike.
"""

from __future__ import annotations

from archgrow.growth.binding import GroupBinding
from archgrow.growth.measure import Measurement
from archgrow.metrics import activation_count, gap_count, per_sample
from archgrow.spec.schema import ActivationTrigger
from archgrow.triggers.base import BaselineRule, Decision, grow_count, register_trigger


@register_trigger("activation", config=ActivationTrigger)
class ActivationRule(BaselineRule):
    needs_activations = True

    def __init__(self, config: ActivationTrigger, binding: GroupBinding):
        super().__init__(config, binding)
        self.gamma = config.gamma if config.gamma is not None else (0.9 if binding.conv_model else 0.97)
        self.running_max = config.running_max if config.running_max is not None else binding.conv_model
        self.epsilon = config.epsilon
        self.metric = config.metric
        self.rounding = config.rounding
        dense = binding.probe is not None and binding.probe.dense
        self.scale = config.scale if config.scale != "auto" else ("samples" if dense else "channels")

    @property
    def measures_step_forward(self) -> bool:
        return self.config.source == "step"

    @property
    def buffer_size(self) -> int | None:
        return self.config.buffer_size

    @property
    def full_buffer_baseline(self) -> bool:
        return not self.measures_step_forward and self.config.baseline != "first_batch"

    def orthogonality(self) -> tuple[str, float, str | None]:
        return self.metric, self.epsilon, self.scale

    def count(self, binding: GroupBinding, m: Measurement) -> int:
        if self.metric == "orthogonality_gap":
            return gap_count(per_sample(m.h), binding.width)
        return activation_count(m.h, binding.probe.channel_dim, epsilon=self.epsilon, scale=self.scale)

    def start(self, binding: GroupBinding, measurement: Measurement | None) -> None:
        if measurement is not None:
            self.base = self.gamma * self.count(binding, measurement) / binding.width

    def evaluate(self, binding: GroupBinding, step: int, measurement: Measurement | None) -> Decision:
        width = binding.width
        score = self.count(binding, measurement)
        base = self.base
        add, threshold = grow_count(score, base, width, self.rounding)
        if self.running_max:
            self.base = max(base, self.gamma * score / width)
        return Decision(add, score, threshold)
