"""Where widths live inside a tensor dimension, and which widths are tied together.

A tensor dimension either carries no growable width (``None``: batch, spatial, token or any fixed
size) or is a *layout*: a tuple of segments laid end to end.  A segment is either one width
variable, each channel of which occupies ``inner`` consecutive positions (``inner`` is H*W after a
conv output is flattened), or a fixed run of positions that never grows (an input image's channels
concatenated with features).  Concatenation joins layouts; flatten multiplies ``inner``.

Width variables are created where a width is born (a Linear's out_features, a conv's
out_channels, a parameter's dimension) and are merged by union-find whenever two dimensions must
stay equal (residual adds, a depthwise conv, a shared module).  Every reason a variable cannot grow,
or grows without preserving the function, is recorded on the variable so that a group can explain
itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Seg:
    """One run of a layout: a width variable (``var``) or ``fixed`` positions that never grow."""

    var: int | None
    inner: int = 1
    fixed: int = 0


Layout = tuple[Seg, ...]


@dataclass
class TensorMeta:
    """Shape of one traced tensor and the layout of each of its dimensions."""

    shape: tuple[int, ...]
    dims: tuple[Layout | None, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass
class WidthVars:
    """Union-find over width variables, with the constraints and reasons attached to each."""

    width: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    origin: list[str] = field(default_factory=list)
    frozen: dict[int, list[str]] = field(default_factory=dict)
    not_preserving: dict[int, list[str]] = field(default_factory=dict)
    step: dict[int, list[tuple[int, str]]] = field(default_factory=dict)

    def new(self, width: int, origin: str) -> int:
        self.width.append(int(width))
        self.parent.append(len(self.parent))
        self.origin.append(origin)
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        root = v
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[v] != root:  # path compression
            self.parent[v], v = root, self.parent[v]
        return root

    def union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.width[ra] != self.width[rb]:
            self.freeze(ra, f"{where} ties widths {self.width[ra]} and {self.width[rb]}")
            self.freeze(rb, f"{where} ties widths {self.width[rb]} and {self.width[ra]}")
        self.parent[max(ra, rb)] = min(ra, rb)

    def freeze(self, v: int, reason: str) -> None:
        reasons = self.frozen.setdefault(v, [])
        if reason not in reasons:
            reasons.append(reason)

    def mark_not_preserving(self, v: int, reason: str) -> None:
        reasons = self.not_preserving.setdefault(v, [])
        if reason not in reasons:
            reasons.append(reason)

    def require_step(self, v: int, multiple: int, reason: str) -> None:
        if multiple > 1:
            self.step.setdefault(v, []).append((multiple, reason))

    def seg_size(self, seg: Seg) -> int:
        return seg.fixed if seg.var is None else self.width[self.find(seg.var)] * seg.inner

    def layout_size(self, layout: Layout) -> int:
        return sum(self.seg_size(s) for s in layout)

    def layout_vars(self, layout: Layout | None) -> list[int]:
        return [] if layout is None else [s.var for s in layout if s.var is not None]

    def describe(self, layout: Layout | None) -> str:
        if layout is None:
            return "fixed"
        parts = []
        for s in layout:
            if s.var is None:
                parts.append(f"fixed({s.fixed})")
            else:
                name = self.origin[s.var]
                parts.append(name if s.inner == 1 else f"{name}x{s.inner}")
        return " + ".join(parts)
