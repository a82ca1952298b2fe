"""Which ops between a group and its consumers have gradient 0 at input 0 (ReLU-like).

A new unit with zero fan-in sits at 0 behind such an op and would never get a gradient (paper
§6.1), so GradMax gives it a tiny fan-in there.  What each op does is the op registry's fact.
"""

from __future__ import annotations

from typing import Any

from archgrow.graph.widthgraph import WidthGraph, WidthGroup


def dead_at_zero(graph: WidthGraph, group: WidthGroup, limit: int = 256) -> list[str]:
    """Traced ops between the group's producers and its consumers whose gradient at 0 is 0.

    A zero-fan-in unit sits at 0 there and would get no gradient (paper §6.1); the modified ReLU
    ``where(x >= 0, x, 0)`` is not among them.
    """
    nodes = {n.name: n for n in graph.fx.graph.nodes}
    consumers = {c.name for c in group.consumers}
    # a consumer computing its output with a function (F.conv2d in timm's Conv2dSame)
    consumer_nodes = {n for c in group.consumers if (n := graph.member_node(c.name, "consumer")) is not None}
    frontier = [nodes[n] for p in group.producers if (n := graph.member_node(p.name, "producer")) in nodes]
    seen: set[Any] = set(frontier)
    found: list[str] = []
    while frontier and len(seen) < limit:
        node = frontier.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            if (user.op == "call_module" and str(user.target) in consumers) or user.name in consumer_nodes:
                continue
            if _is_dead_at_zero(graph, user):
                found.append(user.name)
            frontier.append(user)
    return found


def _is_dead_at_zero(graph: WidthGraph, node: Any) -> bool:
    if node.op == "call_module":
        module = graph.fx.get_submodule(str(node.target))
        rule = graph.ops.layer(module)
        return rule is not None and rule.is_dead_at_zero(module, graph.ops)
    info = graph.ops.info(node.op, node.target)
    return info is not None and info.dead_at_zero


__all__ = ["dead_at_zero"]
