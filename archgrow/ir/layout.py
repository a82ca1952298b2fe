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

An equal split (``x.chunk(n, dim)`` along a width) *refines* a width into ``n`` equal parts laid
end to end: one new variable repeated ``n`` times, so that each part's new channels go at the end of
its own slice, as concatenation does for ``cat([x, x])``.  A split is met after the layer that made
the width, so layouts recorded earlier still name the whole variable; :meth:`WidthVars.resolve`
expands them, and the analysis rewrites every recorded layout with it once the graph is done.
A slice or a split at a position the code reads from a module attribute *cuts* a width the same way
into two widths that grow apart (:meth:`WidthVars.cut`).  A width reshaped into ``(heads, head_dim)`` whose head count grows is *coarsened* the same way
(:meth:`WidthVars.coarsen`): one new variable counting whole blocks of ``head_dim`` channels.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable
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
    parts: dict[int, Layout] = field(default_factory=dict)  # root -> its equal parts, end to end

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
        self._merge_parts(ra, rb, where)

    def _merge_parts(self, ra: int, rb: int, where: str) -> None:
        """Two tied widths lay out their channels alike: equal splits of either apply to both."""
        pa, pb = self.parts.pop(ra, None), self.parts.pop(rb, None)
        if pa is None and pb is None:
            return
        root = min(ra, rb)
        self.parts[root] = pa if pa is not None else pb  # type: ignore[assignment]
        if pa is None or pb is None:
            return
        if len(pa) != len(pb):
            self.freeze(root, f"{where} ties a width split into {len(pa)} equal parts to one split into {len(pb)}")
            return
        if any(x.inner != y.inner for x, y in zip(pa, pb, strict=True)):
            self.freeze(root, f"{where} ties a width counted in blocks of {pa[0].inner} to one in blocks of {pb[0].inner}")
            return
        for x, y in zip(pa, pb, strict=True):
            if x.var is not None and y.var is not None:
                self.union(x.var, y.var, where)

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

    def refine(self, v: int, n: int) -> Layout:
        """Width ``v`` is ``n`` equal parts laid end to end (an equal split): its channels become one
        new width repeated ``n`` times, so growth adds the same channels at the end of every part.
        Refining again into as many parts returns the same parts."""
        r = self.find(v)
        found = self.parts.get(r)
        if found is not None:
            if len(found) != n:
                raise ValueError(f"width '{self.origin[r]}' is already split into {len(found)} parts, not {n}")
            return found
        part = self.new(self.width[r] // n, f"{self.origin[r]}/{n}")
        self.parts[r] = (Seg(part),) * n
        return self.parts[r]

    def cut(self, v: int, offset: int) -> bool:
        """Width ``v`` cut at ``offset`` of its channels (a slice bound, one entry of a list of split
        sizes, an attribute the code reads to cut it): the channels before and after become two
        widths laid end to end, each growing at the end of its own run.  A width already cut or
        split is cut inside the part holding ``offset`` (the parts of an equal split are one
        width, so all of them are cut alike).  False when ``offset`` falls inside a block of
        channels that grow together (a head)."""
        r = self.find(v)
        if offset <= 0 or offset >= self.width[r]:
            return True
        parts = self.parts.get(r)
        if parts is None:
            first = self.new(offset, f"{self.origin[r]}[:{offset}]")
            rest = self.new(self.width[r] - offset, f"{self.origin[r]}[{offset}:]")
            self.parts[r] = (Seg(first), Seg(rest))
            return True
        start = 0
        for seg in parts:
            size = self.seg_size(seg)
            if start < offset < start + size:
                if seg.var is None or (offset - start) % seg.inner:
                    return False
                return self.cut(seg.var, (offset - start) // seg.inner)
            start += size
        return True

    def coarsen(self, v: int, inner: int) -> Layout:
        """Width ``v`` counts channels in whole blocks of ``inner`` (a reshape into ``(heads,
        head_dim)`` whose head count grows): it becomes one new width of ``width / inner`` units,
        each ``inner`` consecutive channels, so growth adds whole blocks (whole heads) at its end.
        Coarsening again by the same block returns the same layout."""
        r = self.find(v)
        found = self.parts.get(r)
        if found is not None:
            if len(found) != 1 or found[0].inner != inner:
                raise ValueError(f"width '{self.origin[r]}' is already laid out as {self.describe(found)}")
            return found
        unit = self.new(self.width[r] // inner, f"{self.origin[r]}/x{inner}")
        self.parts[r] = (Seg(unit, inner),)
        return self.parts[r]

    def resolve(self, layout: Layout) -> Layout:
        """``layout`` with every refined width replaced by its parts (recursively)."""
        if not self.parts:
            return layout
        out: list[Seg] = []
        for seg in layout:
            out.extend(self._resolve_seg(seg, frozenset()))
        return tuple(out)

    def _resolve_seg(self, seg: Seg, seen: frozenset[int]) -> list[Seg]:
        if seg.var is None:
            return [seg]
        r = self.find(seg.var)
        parts = self.parts.get(r)
        if parts is None or r in seen:  # a width tied to its own part is frozen (sizes differ): stop
            return [seg]
        return [
            Seg(x.var, x.inner * seg.inner, x.fixed * seg.inner)
            for part in parts
            for x in self._resolve_seg(part, seen | {r})
        ]

    def resolver(self) -> Callable[[Layout], Layout]:
        """:meth:`resolve`, remembering each layout, for a pass that resolves every recorded
        layout while the parts stay as they are: nodes share layouts, and resolving one walks
        every segment through every level of parts (RegNets nest them through grouped convs)."""
        return functools.cache(self.resolve)

    def carry_to_parts(self) -> None:
        """What was recorded on a refined width applies to its parts: reasons to freeze, reasons it
        changes the function, and steps (a width of ``c`` parts, or of blocks of ``c`` channels,
        grows ``c`` channels per unit, so a step of ``m`` becomes ``m / gcd(m, c)``)."""
        resolve = self.resolver()
        for v in range(len(self.parent)):
            if self.find(v) not in self.parts:
                continue
            segs = resolve((Seg(v),))
            counts: Counter[int] = Counter()
            for s in segs:
                if s.var is not None:
                    counts[self.find(s.var)] += s.inner
            for root, c in counts.items():
                for reason in self.frozen.get(v, []):
                    self.freeze(root, reason)
                for reason in self.not_preserving.get(v, []):
                    self.mark_not_preserving(root, reason)
                for multiple, reason in self.step.get(v, []):
                    self.require_step(root, multiple // math.gcd(multiple, c), reason)

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
