"""Which module attribute a number in the traced graph was computed from.

fx runs a forward's Python once and bakes every int it computes into the graph: CSPNet's
``x.split(self.expand_chs // 2, dim=1)`` becomes ``split(x, 128, dim=1)`` and DPN's
``x[:, :self.num_1x1_c]`` a slice ending at 208.  After growth the user's forward computes those
numbers again from the attributes, so a split or a slice follows growth exactly when archgrow
updates the attribute it came from.  Matching numbers to attributes by value guesses; this module
knows.  While fx traces, every int attribute (and every int in a list or tuple attribute) of the
modules whose forward is traced is replaced by an :class:`AttributeInt`: an int that remembers its
attribute and stays affine through ``+``, ``-``, ``*`` by plain ints and ``//`` by any int, so the number fx
bakes in carries its :class:`SizeSource`.  Anything else (two attributes combined, ``/``, ``%``,
``int()``) gives a plain int, which analysis treats as written in the code.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from torch import nn


@dataclass(frozen=True)
class SizeSource:
    """A number that moves by ``(attr - attr0) * scale`` when the attribute moves from its traced
    value ``attr0`` by a multiple of ``period`` (the floor divisions on the way are exact then)."""

    module: str  # path of the module owning the attribute ("" for the root)
    attr: str
    index: int | None  # position inside a list or tuple attribute
    attr0: int
    scale: Fraction
    period: int = 1

    def step(self) -> int:
        """The smallest growth of the number the attribute can follow (``scale * period`` whole)."""
        return abs((self.scale * self.period).numerator)

    def describe(self) -> str:
        where = f"{self.module}.{self.attr}" if self.module else self.attr
        return where if self.index is None else f"{where}[{self.index}]"

    @property
    def key(self) -> tuple[str, str, int | None]:
        return (self.module, self.attr, self.index)


# GraphModule.meta key under which tracing leaves the attributes used structurally
STRUCTURAL_ATTRIBUTES = "archgrow_structural_attributes"


class StructuralUses:
    """Attributes whose value the traced Python used to decide something fx cannot record: a
    condition (``if self.n > 1``, ``max(self.n, 8)``).  Rewriting such an attribute would change
    the forward's structure, not just a size, so it is never bound.  Only uses while fx traces
    count (``open``).  A loop count (``range(self.n)``) is not seen: Python reads an int subclass's
    value without asking it."""

    def __init__(self) -> None:
        self.open = True
        self.found: dict[tuple[str, str, int | None], str] = {}

    def note(self, source: SizeSource, how: str) -> None:
        if self.open:
            self.found.setdefault(source.key, how)


def _noting(compare: Callable[[int, Any], Any]) -> Callable[[AttributeInt, Any], Any]:
    """An int comparison that first notes the attribute was compared (a condition's input)."""

    def method(self: AttributeInt, other: Any) -> Any:
        self._structural("a comparison")
        return compare(self, other)

    return method


class AttributeInt(int):
    """An int read from a module attribute (or computed affinely from one) while fx traces."""

    source: SizeSource
    uses: StructuralUses | None

    def __new__(cls, value: int, source: SizeSource, uses: StructuralUses | None = None) -> AttributeInt:
        out = super().__new__(cls, value)
        out.source = source
        out.uses = uses
        return out

    def __reduce__(self) -> tuple[Any, ...]:  # pickles and copies as the plain number
        return (int, (int(self),))

    def _derived(self, value: int, scale: Fraction, period: int) -> AttributeInt:
        s = self.source
        return AttributeInt(value, SizeSource(s.module, s.attr, s.index, s.attr0, scale, period), self.uses)

    def _structural(self, how: str) -> None:
        if self.uses is not None:
            self.uses.note(self.source, how)

    def __bool__(self) -> bool:
        self._structural("a condition")
        return int.__bool__(self)

    __lt__ = _noting(int.__lt__)
    __le__ = _noting(int.__le__)
    __gt__ = _noting(int.__gt__)
    __ge__ = _noting(int.__ge__)

    def __add__(self, other: Any) -> Any:
        value = int.__add__(self, other)
        if value is NotImplemented or isinstance(other, bool):
            return value
        if isinstance(other, AttributeInt):
            if self.source.key != other.source.key:
                return value
            s, o = self.source, other.source
            return self._derived(value, s.scale + o.scale, math.lcm(s.period, o.period))
        if type(other) is int:
            return self._derived(value, self.source.scale, self.source.period)
        return value

    __radd__ = __add__

    def __neg__(self) -> Any:
        return self._derived(-int(self), -self.source.scale, self.source.period)

    def __pos__(self) -> Any:
        return self

    def __sub__(self, other: Any) -> Any:
        if isinstance(other, int) and not isinstance(other, bool):
            return self + (-other if isinstance(other, AttributeInt) else -int(other))
        return int.__sub__(self, other)

    def __rsub__(self, other: Any) -> Any:
        if type(other) is int:
            return (-self) + other
        return int.__rsub__(self, other)

    def __mul__(self, other: Any) -> Any:
        value = int.__mul__(self, other)
        if type(other) is int and value is not NotImplemented:
            return self._derived(value, self.source.scale * other, self.source.period)
        return value

    __rmul__ = __mul__

    def __floordiv__(self, other: Any) -> Any:
        # a size divided by a count read from another attribute (``self.in_channels //
        # self.num_paths``): the count is taken as fixed, the size as what grows
        value = int.__floordiv__(self, other)
        if isinstance(other, int) and not isinstance(other, bool) and other > 0 and value is not NotImplemented:
            other = int(other)
            s = self.source
            # floor(f / n) moves by whole numbers when f moves by multiples of n
            exact = s.scale.denominator * other // math.gcd(s.scale.numerator, other)
            return self._derived(value, s.scale / other, math.lcm(s.period, exact))
        return value


def size_source(value: Any) -> SizeSource | None:
    """Where a traced number came from, or None when the code wrote it (or combined attributes)."""
    return value.source if isinstance(value, AttributeInt) else None


def _is_int(value: Any) -> bool:
    return type(value) is int


@contextlib.contextmanager
def attribute_ints(model: nn.Module, traced: Callable[[nn.Module, str], bool]) -> Iterator[StructuralUses]:
    """Int attributes of every module for which ``traced(module, path)`` holds replaced by
    :class:`AttributeInt` for the duration, each restored (the very object) on exit.  Yields the
    record of attributes used structurally meanwhile."""
    saved: list[tuple[dict[str, Any], str, Any]] = []
    uses = StructuralUses()
    try:
        for path, module in model.named_modules():
            if not traced(module, path):
                continue
            state = vars(module)
            for name, value in list(state.items()):
                if name.startswith("_") or isinstance(value, bool):
                    continue
                if _is_int(value):
                    wrapped: Any = AttributeInt(value, SizeSource(path, name, None, value, Fraction(1)), uses)
                elif type(value) in (list, tuple) and value and all(map(_is_int, value)):
                    wrapped = type(value)(
                        AttributeInt(v, SizeSource(path, name, i, v, Fraction(1)), uses) for i, v in enumerate(value)
                    )
                else:
                    continue
                saved.append((state, name, value))
                state[name] = wrapped
        yield uses
    finally:
        uses.open = False
        for state, name, value in reversed(saved):
            state[name] = value


__all__ = ["STRUCTURAL_ATTRIBUTES", "AttributeInt", "SizeSource", "StructuralUses", "attribute_ints", "size_source"]
