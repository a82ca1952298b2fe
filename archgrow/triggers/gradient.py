"""T_grad (eq. 6, §4.4): grow when a new unit could get more gradient than the existing ones have.

The auxiliary gradient's ``k``-th singular value is the largest fan-in gradient norm the ``k``-th
new unit can get (GradMax's bound).  It is compared with the existing units' gradient norms, each
``||dL/dW_in[m]|| + ||dL/dW_out[:, m]||`` (weights only; over every producer and consumer of the
group, and over a channel's whole block after a flatten, §9.29).

Default (``threshold: code``, the authors' code): ``sigma >= sum / 2``.  ``paper``: ``sigma > sum``.
At most ``min(G.shape)`` units per event, the number of singular vectors.

Both gradients come from the same backward, at the same (pre-update) weights; the authors' code
mixed pre-update weight gradients with a post-update auxiliary gradient (§9.7).

``unit_norms: update`` compares with the norms of the optimizer's step instead: the authors' code
read the per-unit "gradient" norms after ``Flux.Optimise.update!``, which in the Flux of that time
overwrote the gradient arrays with the step ``dW`` (inferred from their code; the Flux version is
not pinned).  With Adam that step has a roughly constant per-unit size ``~lr * sqrt(fan)``, so the
threshold shrinks with the learning rate rather than with the gradients, and T_grad keeps firing
as training converges.  The weights are copied at the first training forward of a due step (no
extra pass) and subtracted after the update.
"""

from __future__ import annotations

import warnings

import torch

from archgrow.errors import ArchgrowError
from archgrow.growth.binding import GroupBinding
from archgrow.growth.measure import Measurement
from archgrow.ir.roles import FAN_IN, FAN_OUT
from archgrow.spec.schema import GradientTrigger
from archgrow.surgery.channels import unit_norms_by_roles, weight_snapshot
from archgrow.triggers.base import Decision, TriggerRule, register_trigger

ROLES = (FAN_IN, FAN_OUT)


def unit_gradient_norms(binding: GroupBinding) -> torch.Tensor:
    """Per existing unit: fan-in plus fan-out gradient norm, from the weights' ``.grad``."""
    graph = binding.group.graph
    try:
        norms = unit_norms_by_roles(graph, binding.group, ROLES, grad=True)
    except LookupError as exc:
        raise ArchgrowError(
            f"group '{binding.name}' uses the gradient trigger but '{exc.args[0]}' has no .grad: call grow_step "
            "after loss.backward() and optimizer.step(), before optimizer.zero_grad()"
        ) from None
    return norms[FAN_IN] + norms[FAN_OUT]


def unit_update_norms(binding: GroupBinding, before: dict[tuple[str, str], torch.Tensor]) -> torch.Tensor:
    """Per existing unit: fan-in plus fan-out norm of the weights' change since ``before``."""
    norms = unit_norms_by_roles(binding.group.graph, binding.group, ROLES, minus=before)
    return norms[FAN_IN] + norms[FAN_OUT]


@register_trigger("gradient", config=GradientTrigger)
class GradientRule(TriggerRule):
    needs_gradient = True
    config: GradientTrigger

    def __init__(self, config: GradientTrigger, binding: GroupBinding):
        super().__init__(config, binding)
        self.needs_step_start = config.unit_norms == "update"
        self._before: dict[tuple[str, str], torch.Tensor] | None = None
        self._warned_still = False

    def step_start(self, binding: GroupBinding) -> None:
        """Copy the weights before the update (``unit_norms: update``)."""
        self._before = weight_snapshot(binding.group.graph, binding.group, ROLES)

    def _unit_norms(self, binding: GroupBinding) -> torch.Tensor:
        if self.config.unit_norms == "gradient":
            return unit_gradient_norms(binding)
        before, self._before = self._before, None
        if before is None:
            raise ArchgrowError(
                f"group '{binding.name}' uses the gradient trigger with unit_norms: update, but no forward of the "
                "wrapped model in training mode ran since the last grow_step, so the step's change of the weights "
                "is unknown: call grown(x) in training mode, backward and optimizer.step(), then grow_step"
            )
        return unit_update_norms(binding, before)

    def evaluate(self, binding: GroupBinding, step: int, measurement: Measurement | None) -> Decision:
        total = float(self._unit_norms(binding).sum())
        if self.config.unit_norms == "update" and not total > 0:
            # No step moved the weights (lr 0, frozen weights, grow_step before optimizer.step()):
            # a zero threshold would pass every singular value, so nothing is added.
            if not self._warned_still:
                self._warned_still = True
                warnings.warn(
                    f"group '{binding.name}': unit_norms: update saw no change of the weights in this step (was "
                    "optimizer.step() called before grow_step, with a learning rate above 0?); no units added",
                    stacklevel=4,
                )
            return Decision(0, 0.0, total)
        code = self.config.threshold == "code"
        threshold = 0.5 * total if code else total
        # Most steps do not grow: a cheap upper bound on sigma_1 below the threshold settles them
        # without the spectrum (the reported score is then that bound).
        bound = sigma_max_bound(binding.bridge.gradient())
        if bound < threshold or (not code and bound == threshold):
            return Decision(0, bound, threshold)
        s = binding.bridge.singular_values()
        count = int((s >= threshold).sum()) if code else int((s > threshold).sum())
        return Decision(min(count, s.numel()), float(s[0]) if s.numel() else 0.0, threshold)


def sigma_max_bound(g: torch.Tensor) -> float:
    """An upper bound on the largest singular value: ``||G||_F``, reduced in float32 or wider and
    raised by 1e-4 relative so that the reduction's rounding (~1e-6) cannot make it a non-bound.

    Tight when ``G`` is close to rank one, which the auxiliary gradient of a batch usually is
    (measured on the benchmark's VGG-11: ``||G||_F / sigma_1`` between 1.0 and 1.9 across its
    groups); one reduction, no factorisation.
    """
    wide = g.dtype in (torch.float32, torch.float64)
    return float(torch.linalg.vector_norm(g.detach(), dtype=None if wide else torch.float32)) * (1 + 1e-4)
