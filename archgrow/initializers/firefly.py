"""Firefly (§5.6, the authors' code): try split and new candidates, keep those with the most gradient.

``candidates + k`` candidates (1000 dense / 100 conv by default).  Half of them (at most the
width) split existing units chosen without replacement: the copy gets fan-in ``w + delta``, the
original ``w - delta`` with ``delta = epsilon * ||w|| * U(-1, 1)`` (the unit's own norm), both
keep half the fan-out, and every other tensor of the channel (bias, norm layer state) is copied.
The rest are new units: fan-in uniform at the mean fan-in norm, fan-out ``N(0, 1) * epsilon *``
the mean fan-out norm.  All candidates are added at once, the step's loss (``loss_fn``) is
differentiated with respect to the producers' weights, and the ``k`` candidates with the largest
fan-in gradient norm are kept; everything else is undone exactly (no gradient steps on
candidates, unlike the original Firefly).  Function changes by ``O(epsilon)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from archgrow.growth.binding import GroupBinding, InitContext
from archgrow.initializers.base import InitRule, Units, apply_units, candidate_count, register_initializer, rescale_rows
from archgrow.initializers.gradmax import mean_role_norm
from archgrow.ir.roles import FAN_IN, FAN_OUT
from archgrow.spec.schema import FireflyInit
from archgrow.surgery.channels import copy_channels, read_channels, scale_channels, trial, write_channels


@register_initializer("firefly", config=FireflyInit)
class FireflyRule(InitRule):
    needs_bridge = True
    config: FireflyInit

    def units(self, binding: GroupBinding, k: int, ctx: InitContext) -> Units:
        graph, group, bridge = binding.group.graph, binding.group, binding.bridge
        width = binding.width
        n = candidate_count(self.config, binding, k)
        gen = ctx.generator
        eps = self.config.epsilon
        splits = torch.randperm(width, generator=gen)[: min(n // 2, width)].tolist()
        fresh = n - len(splits)
        originals = read_channels(graph, group, splits, FAN_IN)
        own = torch.zeros(len(splits), dtype=torch.float64)
        for w in originals.values():
            own += w.detach().double().cpu().pow(2).reshape(len(splits), -1).sum(dim=1)  # beside the CPU draws
        own = own.sqrt()
        deltas = {}
        for name, w in originals.items():
            noise = torch.rand(w.shape, generator=gen, dtype=torch.float64) * 2 - 1
            scale = (eps * own).reshape(-1, *([1] * (w.ndim - 1)))
            deltas[name] = (noise * scale).to(device=w.device, dtype=w.dtype)
        rows, cols = sum(bridge.row_sizes), sum(bridge.col_sizes)
        device = binding.producer.weight.device
        new_in = rescale_rows(torch.rand(fresh, cols, generator=gen, dtype=torch.float64) * 2 - 1, mean_role_norm(binding, FAN_IN))
        new_out = torch.randn(fresh, rows, generator=gen, dtype=torch.float64) * (eps * mean_role_norm(binding, FAN_OUT))
        new_in, new_out = new_in.to(device), new_out.to(device)

        def make(split_idx: Sequence[int], new_idx: Sequence[int]) -> Units:
            s = len(split_idx)
            flat_in = torch.cat([new_in.new_zeros(s, cols), new_in[list(new_idx)]])
            flat_out = torch.cat([new_out.new_zeros(s, rows), new_out[list(new_idx)]])

            def after(old: int) -> None:
                if not s:
                    return
                src = [splits[i] for i in split_idx]
                dst = list(range(old, old + s))
                copy_channels(graph, group, src, dst)
                w = {name: v[list(split_idx)] for name, v in originals.items()}
                d = {name: v[list(split_idx)] for name, v in deltas.items()}
                write_channels(graph, group, dst, FAN_IN, {name: w[name] + d[name] for name in w})
                write_channels(graph, group, src, FAN_IN, {name: w[name] - d[name] for name in w})
                scale_channels(graph, group, src + dst, 0.5, FAN_OUT)

            return Units(bridge.split_fan_in(flat_in), bridge.split_fan_out(flat_out), after)

        with trial(graph, group, ctx.model):
            apply_units(binding, n, make(range(len(splits)), range(fresh)))
            weights = {name: m.weight for name, m in bridge.producers}
            loss = ctx.loss(binding, grad=True)
            grads = dict(zip(weights, map(ctx.across_ranks, torch.autograd.grad(loss, list(weights.values()))), strict=True))
            per = read_channels(graph, group, list(range(width, width + n)), FAN_IN, grads)
            scores = sum(g.double().pow(2).reshape(n, -1).sum(dim=1) for g in per.values())
        keep = torch.topk(scores, k).indices.sort().values.tolist()
        return make([j for j in keep if j < len(splits)], [j - len(splits) for j in keep if j >= len(splits)])
