"""The records layout analysis leaves behind: which tensor dimensions and module attributes carry
which layout, and which modules take part in a width (as producer, consumer or follower)."""

from __future__ import annotations

from dataclasses import dataclass

from archgrow.ir.layout import Layout


@dataclass(frozen=True)
class TensorBinding:
    """Dimension ``dim`` of ``module.<tensor>`` is laid out as ``layout``; new entries play ``role``."""

    module: str
    tensor: str
    dim: int
    layout: Layout
    role: str
    is_buffer: bool = False


@dataclass(frozen=True)
class AttrBinding:
    """Module attribute that must equal ``(size * multiplier + offset) // divisor`` for the size of
    ``layout`` (a grouped conv's ``groups`` counts channels per group; CSPNet's ``expand_chs`` is
    twice the split size it is read for)."""

    module: str
    attr: str
    layout: Layout
    index: int | None = None  # position inside a tuple attribute (LayerNorm.normalized_shape)
    divisor: int = 1
    multiplier: int = 1
    offset: int = 0

    def value(self, size: int) -> int:
        return (size * self.multiplier + self.offset) // self.divisor


@dataclass(frozen=True)
class MemberRecord:
    """A module (or parameter) taking part in some width: what it does and along which layout."""

    module: str
    module_type: str
    kind: str  # "producer" | "consumer" | "follower"
    layout: Layout
    node: str


__all__ = ["AttrBinding", "MemberRecord", "TensorBinding"]
