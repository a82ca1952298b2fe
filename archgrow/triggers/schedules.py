"""Fixed schedules (paper B.1.2) and the static baseline.

Progress ``p = step / (total_steps * grow_fraction)`` (capped at 1), counted in ``grow_step``
calls.  Linear: grow by one unit (one step of the group) whenever the width is below the ramp
``initial + (final - initial) * p``; so it tracks the ramp and never adds more than one unit per
call.  Batched: ``stages`` equal batches of ``floor((final - initial) / stages)`` units, the
``j``-th once ``p >= j / stages``.
"""

from __future__ import annotations

import math

from archgrow.growth.binding import GroupBinding
from archgrow.growth.measure import Measurement
from archgrow.spec.kinds import Problem
from archgrow.spec.schema import BatchedSchedule, LinearSchedule, StaticTrigger, resolve_width
from archgrow.triggers.base import Decision, TriggerRule, register_trigger


class _ScheduleRule(TriggerRule):
    def __init__(self, config: LinearSchedule | BatchedSchedule, binding: GroupBinding):
        super().__init__(config, binding)
        self.initial = config.initial_width if config.initial_width is not None else binding.initial_width
        self.final = resolve_width(config.final_width, binding.initial_width)

    @classmethod
    def check(cls, config: LinearSchedule | BatchedSchedule, binding: GroupBinding) -> list[Problem]:
        final = resolve_width(config.final_width, binding.width)
        if final < binding.width:
            return [Problem(f"{final} is below group '{binding.name}'s current width {binding.width}", field="final_width")]
        return []

    def cap(self, binding: GroupBinding) -> int | None:
        return self.final

    def progress(self, step: int) -> float:
        return min(1.0, step / (self.config.total_steps * self.config.grow_fraction))


@register_trigger("linear_schedule", config=LinearSchedule)
class LinearRule(_ScheduleRule):
    def evaluate(self, binding: GroupBinding, step: int, measurement: Measurement | None) -> Decision:
        width = binding.width
        target = self.initial + (self.final - self.initial) * self.progress(step)
        add = binding.group.step if width < target - 1e-9 and width < self.final else 0
        return Decision(add, width, target)


@register_trigger("batched_schedule", config=BatchedSchedule)
class BatchedRule(_ScheduleRule):
    def evaluate(self, binding: GroupBinding, step: int, measurement: Measurement | None) -> Decision:
        width = binding.width
        stages = self.config.stages
        span = self.final - self.initial
        batch = span // stages
        stage = self.initial + math.floor(math.floor(stages * self.progress(step) + 1e-9) * span / stages)
        add = batch if batch > 0 and width < stage and width + batch <= self.final else 0
        return Decision(add, width, stage)


@register_trigger("static", config=StaticTrigger)
class StaticRule(TriggerRule):
    never_fires = True

    def evaluate(self, binding: GroupBinding, step: int, measurement: Measurement | None) -> Decision:
        return Decision(0, binding.width, binding.width)
