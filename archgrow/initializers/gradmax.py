"""GradMax (§5.7): zero fan-in, fan-out along the top left singular vectors of the auxiliary gradient.

With zero fan-in and fan-out ``w``, a new unit's fan-in gradient is ``G^T w``; the unit-norm
``w`` maximising it is ``G``'s top left singular vector, and ``k`` units take the top ``k``
(at most ``min(G.shape)`` per event).  Fan-outs are rescaled to the mean fan-out norm of the
existing units (over all consumers and whole flatten blocks).  Zero fan-in keeps the function.

Zero fan-in needs an activation with gradient 1 at 0 (the paper's modified ReLU, §6.1).  With
``nn.ReLU``/``F.relu`` (gradient 0 at 0), as in stock models, such a unit would never learn, so
``fan_in_scale`` (auto: on exactly when a ReLU-like op lies between the group and its consumers)
gives the fan-in a tiny norm, ``fan_in_scale`` times the mean fan-in norm, along ``-v`` (the
direction one gradient step from zero would take); the new channels' norm-layer scales are set
to ``fan_in_scale`` too, so that a batch norm cannot blow the tiny pre-activation back up to unit
size.  The function then changes by ``O(fan_in_scale)``.
"""

from __future__ import annotations

import torch

from archgrow.growth.binding import GroupBinding, InitContext
from archgrow.growth.dead_at_zero import dead_at_zero
from archgrow.initializers.base import InitRule, Units, register_initializer
from archgrow.ir.roles import FAN_IN, FAN_OUT, ONE
from archgrow.spec.schema import GradMaxInit
from archgrow.surgery.channels import channel_positions, group_members, unit_norms_by_role

AUTO_FAN_IN_SCALE = 1e-3


def mean_role_norm(binding: GroupBinding, role: str) -> float:
    """Mean over existing units of their fan-in (or fan-out) norm; 1 when all are zero."""
    norms = unit_norms_by_role(binding.group.graph, binding.group, role)
    value = float(norms.mean()) if norms.numel() else 0.0
    return value if value > 0 else 1.0


@register_initializer("gradmax", config=GradMaxInit)
class GradMaxRule(InitRule):
    needs_gradient = True
    config: GradMaxInit

    def __init__(self, config: GradMaxInit, binding: GroupBinding):
        super().__init__(config, binding)
        if config.fan_in_scale is not None:
            self.fan_in_scale = config.fan_in_scale
        else:
            dead = dead_at_zero(binding.group.graph, binding.group)
            self.fan_in_scale = AUTO_FAN_IN_SCALE if dead else 0.0

    def max_units(self, binding: GroupBinding) -> int | None:
        return min(binding.bridge.gradient().shape)

    def units(self, binding: GroupBinding, k: int, ctx: InitContext) -> Units:
        bridge = binding.bridge
        u, _, v = bridge.svd()
        u, v = bridge.conform(u, "rows"), bridge.conform(v, "cols")
        device = binding.producer.weight.device
        fan_out = (u[:, :k].T * mean_role_norm(binding, FAN_OUT)).to(device)
        scale = self.fan_in_scale
        fan_in = (-v[:, :k].T * (scale * mean_role_norm(binding, FAN_IN))).to(device)
        after = None
        if scale > 0:
            def after(old: int) -> None:
                _scale_new_norm_weights(binding, old, k, scale)
        return Units(fan_in=bridge.split_fan_in(fan_in), fan_out=bridge.split_fan_out(fan_out), after=after)


def _scale_new_norm_weights(binding: GroupBinding, old: int, k: int, value: float) -> None:
    graph = binding.group.graph
    new = list(range(old, old + k))
    for b, module in group_members(graph, binding.group):
        rule = graph.ops.layer(module)
        if b.tensor != "weight" or b.role != ONE or rule is None or not rule.normalizes:
            continue
        t = getattr(module, b.tensor)
        idx = channel_positions(graph, b, binding.group, new).to(t.device)
        with torch.no_grad():
            t.index_fill_(b.dim, idx, value)
