"""Tracing and width-group discovery."""

from archgrow.graph.widthgraph import Member, Slot, WidthGraph, WidthGroup, trace

__all__ = ["Member", "Slot", "WidthGraph", "WidthGroup", "trace"]
