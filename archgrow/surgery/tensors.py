"""Tensor-level growth: where old entries go and what new entries contain.

Every growth is an *expansion plan* per dimension: the positions old entries move to and the
positions new entries take.  The same plan is applied to a parameter, its gradient and each of
its optimizer state tensors, so all of them stay aligned by construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from archgrow.graph.widthgraph import SegmentSize


@dataclass(frozen=True)
class Expansion:
    """Grow dimension ``dim`` from ``len(old_pos)`` to ``size`` entries."""

    dim: int
    old_pos: tuple[int, ...]
    new_pos: tuple[int, ...]
    size: int

    @property
    def appends(self) -> bool:
        """New entries all come after the old ones (a plain concatenation suffices)."""
        return self.old_pos == tuple(range(len(self.old_pos)))


def plan(segments: Sequence[SegmentSize], k: int, dim: int) -> Expansion:
    """Insert ``k`` channels at the end of every growing segment (see ``WidthGroup.segments``)."""
    old_pos: list[int] = []
    new_pos: list[int] = []
    pos = 0
    for seg in segments:
        old_pos.extend(range(pos, pos + seg.size))
        pos += seg.size
        if seg.grows:
            added = k * seg.inner
            new_pos.extend(range(pos, pos + added))
            pos += added
    return Expansion(dim, tuple(old_pos), tuple(new_pos), pos)


def expand(t: torch.Tensor, e: Expansion, fill: torch.Tensor) -> torch.Tensor:
    """``t`` grown along ``e.dim`` with ``fill`` (shaped like ``t`` but ``len(e.new_pos)`` there).

    The result keeps ``t``'s memory format: ``torch.cat`` of a channels-last tensor with a
    contiguous fill is contiguous, which would silently undo ``model.to(memory_format=...)``.
    """
    fill = fill.to(device=t.device, dtype=t.dtype)
    out = torch.empty(new_shape(t, e.dim, e.size), dtype=t.dtype, device=t.device, memory_format=memory_format(t))
    if e.appends:
        n = len(e.old_pos)
        out.narrow(e.dim, 0, n).copy_(t)
        out.narrow(e.dim, n, e.size - n).copy_(fill)
        return out
    out.index_copy_(e.dim, torch.tensor(e.old_pos, device=t.device), t)
    out.index_copy_(e.dim, torch.tensor(e.new_pos, device=t.device), fill)
    return out


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def memory_format(t: torch.Tensor) -> torch.memory_format:
    """The format ``t`` is laid out in (``Tensor.suggest_memory_format`` has no public spelling).

    Size-1 dims make some tensors both contiguous and channels-last (a depthwise weight
    ``(C, 1, k, k)``, a 1x1 kernel); their strides decide then, so that a later growth of that
    dim still knows which layout the tensor had.
    """
    fmt = _CHANNELS_LAST.get(t.ndim)
    if fmt is None or not t.is_contiguous(memory_format=fmt):
        return torch.contiguous_format
    if not t.is_contiguous():
        return fmt
    channels_last = torch.empty(t.shape, device="meta", memory_format=fmt).stride()
    contiguous = torch.empty(t.shape, device="meta").stride()
    return fmt if t.stride() == channels_last != contiguous else torch.contiguous_format


def new_shape(t: torch.Tensor, dim: int, n: int) -> list[int]:
    shape = list(t.shape)
    shape[dim] = n
    return shape


def unit_norms(t: torch.Tensor, dim: int) -> torch.Tensor:
    """L2 norm of each slice of ``t`` along ``dim`` (a neuron's fan-in, a channel's filter...)."""
    return t.detach().movedim(dim, 0).reshape(t.shape[dim], -1).float().norm(dim=1)


def rescale_units(w: torch.Tensor, dim: int, target: float) -> torch.Tensor:
    """Scale each slice of ``w`` along ``dim`` to L2 norm ``target``."""
    norms = unit_norms(w, dim).clamp_min(1e-12).to(w.dtype)
    shape = [1] * w.ndim
    shape[dim] = -1
    return w * (target / norms).reshape(shape)


def random_units(existing: torch.Tensor, dim: int, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """Xavier-uniform units rescaled to the mean norm of the existing ones (paper B.1, §5.0)."""
    shape = new_shape(existing, dim, n)
    per_unit = max(1, math.prod(shape) // max(n, 1))
    bound = math.sqrt(6.0 / (per_unit + n))
    w = (torch.rand(shape, generator=generator) * 2 - 1) * bound
    w = w.to(device=existing.device, dtype=existing.dtype)
    if existing.shape[dim] == 0:
        return w
    target = float(unit_norms(existing, dim).mean())
    if not math.isfinite(target) or target == 0.0:
        return w
    return rescale_units(w, dim, target)


def mean_units(existing: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """New entries equal to the mean of the existing ones along ``dim``."""
    return existing.detach().mean(dim=dim, keepdim=True).expand(new_shape(existing, dim, n)).clone()
