"""archgrow: grow any PyTorch model's layers while it trains (NORTH* neurogenesis)."""

from archgrow.errors import ArchgrowError, GrowthError, TraceError, UnknownGroupError
from archgrow.graph import Member, Slot, WidthGraph, WidthGroup, trace
from archgrow.surgery import grow

__version__ = "0.1.0"

__all__ = [
    "ArchgrowError",
    "GrowthError",
    "Member",
    "Slot",
    "TraceError",
    "UnknownGroupError",
    "WidthGraph",
    "WidthGroup",
    "grow",
    "trace",
]
