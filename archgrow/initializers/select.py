"""NORTH-Select (§5.2-5.3): keep the ``k`` most orthogonal of ``candidates + k`` random fan-ins.

Each candidate's activation is scored alone against the existing units' activations by
``count + sum of singular values`` and the ``k`` highest are kept: the paper's intent.  (The
authors' MLP code keeps the lowest; ``order: lowest`` reproduces that.)  For conv groups each
candidate channel is scored by its full ``(samples x positions)`` column, not the authors' code's
mis-indexed rows (§9.9).
"""

from __future__ import annotations

import torch

from archgrow.growth.binding import GroupBinding, InitContext
from archgrow.initializers.base import InitRule, candidate_count, draw, keep_best, register_initializer, score
from archgrow.spec.schema import SelectInit


@register_initializer("select", config=SelectInit)
class SelectRule(InitRule):
    needs_candidate_producer = True
    needs_activations = True
    config: SelectInit

    def fan_in(self, binding: GroupBinding, k: int, ctx: InitContext) -> torch.Tensor | None:
        m = ctx.measurement(binding)
        candidates = draw(binding, candidate_count(self.config, binding, k), ctx.generator)
        best = keep_best(score(binding, m, candidates, ctx), k, self.config.order)
        return candidates[best.to(candidates.device)]
