"""NORTH-Pre (eq. 7, §5.4; dense groups only).

Candidate pre-activations are drawn in the kernel of the existing pre-activations ``Z`` (over the
buffer's samples) and mapped back to fan-ins through the pseudo-inverse of the layer input ``X``:
``w = pinv(X) (I - Q Q^T) g`` with ``g ~ N(0, I)`` and ``Q`` an orthonormal basis of ``Z``'s
``M`` columns.  Projecting a standard Gaussian onto the kernel has the distribution of
``K a`` for a basis ``K`` of the paper's ``n - M`` kernel vectors (§9.11), without forming the
``n x n`` right singular basis.  Candidates are rescaled to the mean fan-in norm, then scored and
selected like NORTH-Select.  With ``n <= M`` there is no kernel and plain random candidates are
used (with a warning).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from archgrow.growth.binding import GroupBinding, InitContext
from archgrow.initializers.base import (
    InitRule,
    candidate_count,
    draw,
    keep_best,
    mean_norm,
    register_initializer,
    score,
)
from archgrow.metrics import as_matrix
from archgrow.spec.kinds import Problem
from archgrow.spec.schema import PreactivationInit
from archgrow.surgery.tensors import rescale_units


@register_initializer("preactivation", config=PreactivationInit)
class PreactivationRule(InitRule):
    needs_candidate_producer = True

    @classmethod
    def check(cls, config: PreactivationInit, binding: GroupBinding) -> list[Problem]:
        if isinstance(binding.producer, nn.Linear):
            return []
        return [
            Problem(
                f"'preactivation' is for dense groups (eq. 7); group '{binding.name}' is produced by "
                f"'{binding.producer_name}' ({type(binding.producer).__name__}); use 'select', 'weight' or 'random'"
            )
        ]
    needs_activations = True
    config: PreactivationInit

    def fan_in(self, binding: GroupBinding, k: int, ctx: InitContext) -> torch.Tensor | None:
        m = ctx.measurement(binding)
        n_cand = candidate_count(self.config, binding, k)
        x = as_matrix(m.x, -1).to(torch.float64)
        z = as_matrix(m.z, -1).to(torch.float64)
        n, width = z.shape
        if n <= width:
            warnings.warn(
                f"group '{binding.name}': NORTH-Pre needs more buffered samples ({n}) than units ({width}); "
                "using random candidates",
                stacklevel=2,
            )
            candidates = draw(binding, n_cand, ctx.generator)
        else:
            q = torch.linalg.svd(z, full_matrices=False).U
            g = torch.randn(n, n_cand, generator=ctx.generator, dtype=torch.float64).to(z.device)
            kernel = g - q @ (q.T @ g)
            w = (torch.linalg.pinv(x) @ kernel).T
            weight = binding.producer.weight
            candidates = rescale_units(w, 0, mean_norm(binding)).to(dtype=weight.dtype, device=weight.device)
        best = keep_best(score(binding, m, candidates, ctx), k)
        return candidates[best.to(candidates.device)]
