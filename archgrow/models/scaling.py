"""Width multipliers shared by the built-in models."""

from __future__ import annotations

from archgrow.errors import ArgumentError


def scaled(width: int, mult: float) -> int:
    """``width * mult`` rounded, at least 1; rejects non-positive multipliers with a clear error."""
    if not mult > 0:
        raise ArgumentError(f"width_mult must be > 0, got {mult!r}")
    return max(1, round(width * mult))
