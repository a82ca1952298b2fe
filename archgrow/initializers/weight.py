"""NORTH-Weight (eq. 8, §5.5): random fan-ins projected onto the kernel of the existing fan-ins.

Each new unit draws ``u`` (Xavier-uniform at the mean norm), removes its component in the row
space of the existing weight (all ``M`` right singular vectors, no threshold) and is scaled back
to ``||u||``.  Units are projected against the old rows only, not each other.  Unlike the
authors' code, whose size test never passed for MLPs (§9.10), the projection runs whenever
``M < fan_in``; otherwise the kernel is trivial and ``u`` is kept.  ``projection: false`` keeps
``u`` as drawn, which is what the authors' MLP runs did (NORTH-Weight there is T_weight plus
NORTH-Random's init).
"""

from __future__ import annotations

import torch

from archgrow.growth.binding import GroupBinding, InitContext
from archgrow.initializers.base import InitRule, draw, register_initializer
from archgrow.spec.schema import WeightInit


@register_initializer("weight", config=WeightInit)
class WeightInitRule(InitRule):
    needs_candidate_producer = True
    config: WeightInit

    def fan_in(self, binding: GroupBinding, k: int, ctx: InitContext) -> torch.Tensor | None:
        weight = binding.producer.weight.detach()
        u = draw(binding, k, ctx.generator)
        if not self.config.projection:
            return u
        rows = weight.reshape(weight.shape[0], -1).to(torch.float64)
        if rows.shape[0] >= rows.shape[1]:
            return u
        basis = torch.linalg.svd(rows, full_matrices=False).Vh  # (M, fan_in), orthonormal rows
        flat = u.reshape(k, -1).to(torch.float64)
        projected = flat - (flat @ basis.T) @ basis
        norms = projected.norm(dim=1, keepdim=True)
        scale = torch.where(norms > 1e-12, flat.norm(dim=1, keepdim=True) / norms.clamp_min(1e-300), 0.0)
        out = torch.where(norms > 1e-12, projected * scale, flat)
        return out.reshape(u.shape).to(u.dtype)
