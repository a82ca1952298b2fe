"""NeST (§5.8): new units wired to the large entries of the auxiliary gradient.

Dense groups (the authors' code): entries of ``|G|`` above its ``quantile`` (0.4: the top 60%)
are kept; for each new unit and kept entry ``(o, i)`` a random sign ``s`` gives ``d = s*sqrt|G_oi|``,
added to fan-in ``i`` and, as ``|d|``, to fan-out ``o`` (so fan-outs are positive and the sign of
``G`` is unused).  ``sign_aware`` instead gives the fan-out ``-sign(G_oi)*d``, so that each pair's
product points down the gradient, as original NeST intends.  Both are rescaled to the mean norms.

Conv groups (the paper): ``candidates + k`` random units (fan-in and fan-out at the mean norms)
are each added alone to the model, the step's loss is computed, and the ``k`` with the lowest
loss are kept.  That needs ``grow_step(..., loss_fn=...)``.
"""

from __future__ import annotations

import torch

from archgrow.growth.binding import GroupBinding, InitContext
from archgrow.initializers.base import CONV_CANDIDATES, InitRule, Units, apply_units, register_initializer, rescale_rows
from archgrow.initializers.gradmax import mean_role_norm
from archgrow.ir.roles import FAN_IN, FAN_OUT
from archgrow.spec.schema import NestInit
from archgrow.surgery.channels import trial


def quantile(values: torch.Tensor, q: float) -> float:
    """``torch.quantile`` (linear interpolation) without its input-size limit."""
    flat = values.flatten().sort().values
    pos = q * (flat.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, flat.numel() - 1)
    return float(flat[lo] + (flat[hi] - flat[lo]) * (pos - lo))


@register_initializer("nest", config=NestInit)
class NestRule(InitRule):
    needs_bridge = True
    config: NestInit

    def __init__(self, config: NestInit, binding: GroupBinding):
        super().__init__(config, binding)
        self.by_loss = binding.conv
        self.needs_gradient = not self.by_loss

    def units(self, binding: GroupBinding, k: int, ctx: InitContext) -> Units:
        if self.by_loss:
            return self._by_loss(binding, k, ctx)
        bridge = binding.bridge
        g = bridge.conform(bridge.conform(bridge.gradient().double(), "rows").T, "cols").T
        mag = g.abs()
        kept = mag > quantile(mag, self.config.quantile)
        root = mag.sqrt() * kept
        fan_in, fan_out = [], []
        for _ in range(k):
            signs = (torch.randint(0, 2, g.shape, generator=ctx.generator, dtype=torch.float64) * 2 - 1).to(g.device)
            d = signs * root
            fan_in.append(d.sum(dim=0))
            fan_out.append(((-g.sign()) * d).sum(dim=1) if self.config.sign_aware else d.abs().sum(dim=1))
        device = binding.producer.weight.device
        win = rescale_rows(torch.stack(fan_in), mean_role_norm(binding, FAN_IN)).to(device)
        wout = rescale_rows(torch.stack(fan_out), mean_role_norm(binding, FAN_OUT)).to(device)
        return Units(fan_in=bridge.split_fan_in(win), fan_out=bridge.split_fan_out(wout))

    def _by_loss(self, binding: GroupBinding, k: int, ctx: InitContext) -> Units:
        bridge = binding.bridge
        n = (self.config.candidates or CONV_CANDIDATES) + k
        rows, cols = sum(bridge.row_sizes), sum(bridge.col_sizes)
        gen = ctx.generator
        device = binding.producer.weight.device
        win = rescale_rows(torch.rand(n, cols, generator=gen, dtype=torch.float64) * 2 - 1, mean_role_norm(binding, FAN_IN))
        wout = rescale_rows(torch.rand(n, rows, generator=gen, dtype=torch.float64) * 2 - 1, mean_role_norm(binding, FAN_OUT))
        win, wout = win.to(device), wout.to(device)
        losses = torch.empty(n, dtype=torch.float64)
        graph = binding.group.graph
        for c in range(n):
            with trial(graph, binding.group, ctx.model):
                apply_units(binding, 1, Units(bridge.split_fan_in(win[c : c + 1]), bridge.split_fan_out(wout[c : c + 1])))
                losses[c] = float(ctx.loss(binding, grad=False))
        losses = ctx.across_ranks(losses)
        best = torch.topk(losses, k, largest=False).indices.sort().values.to(device)
        return Units(fan_in=bridge.split_fan_in(win[best]), fan_out=bridge.split_fan_out(wout[best]))
