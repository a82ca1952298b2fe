"""Where a group's activations are measured: the *probe*, planned once on the traced graph.

A trigger or initializer that looks at activations needs, for a group, the tensor that feeds the
next layer (post-activation, post-pool: the paper's recording point, §9.20).  archgrow finds it
on the traced graph, starting at the group's first producer and walking forward through ops
that keep the group's channels where they are (activations, norm layers, pooling, dropout),
stopping before a consumer, a fork, a merge or a reshape.  That walk is the probe.  What each op
does in eval mode (mode-free, random, the identity) comes from the op registry.

Residual groups (several producers tied by adds) are measured on their first producer's output,
as the paper measures the first conv of each WRN group.  Unlike the paper, residual additions
stay on: archgrow cannot switch off skips in an arbitrary model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.fx as fx

from archgrow.errors import MeasurementError
from archgrow.graph.widthgraph import WidthGraph, WidthGroup
from archgrow.ir.layout import TensorMeta
from archgrow.ops.tensor_ops import function_name


class ProbeError(MeasurementError):
    """The group cannot be measured; the message says why (used in wrap-time errors)."""


@dataclass(frozen=True)
class Probe:
    """How to obtain a group's activations: hook ``producer``, then replay ``chain``."""

    group: str
    producer: str
    channel_dim: int
    ndim: int
    chain: tuple[fx.Node, ...]
    end_module: str | None = None  # hookable end of a mode-independent chain (see StepCapture)
    stateless: bool = False  # the chain computes the same in training and eval mode, with no RNG
    skipped_in_eval: frozenset[str] = frozenset()  # chain nodes that are the identity in eval mode (dropout)
    # chain nodes traced with training-mode arguments (F.batch_norm in timm's BatchNormAct2d), with
    # the op registry's rewrite into their eval-mode call
    in_eval: tuple[tuple[str, Callable[..., Any]], ...] = ()

    @property
    def dense(self) -> bool:
        """True when the measured tensor is ``(samples, channels)``."""
        return self.ndim == 2

    @property
    def point(self) -> str:
        """The traced node whose value is measured (for docs and reports)."""
        return self.chain[-1].name if self.chain else self.producer


def build_probe(graph: WidthGraph, group: WidthGroup) -> Probe:
    """Find the measurement point of ``group`` (see the module docstring)."""
    first = group.producers[0]
    node_name = graph.member_node(first.name, "producer")
    nodes = {n.name: n for n in graph.fx.graph.nodes}
    node = nodes.get(node_name) if node_name else None
    if node is not None and node.op == "call_function":
        raise ProbeError(
            f"its first producer '{first.name}' ({first.module_type}) computes its output with a function "
            f"call inside its forward (node '{node.name}'), so its output cannot be hooked; trace with "
            f"leaf_modules=[{first.module_type}] to measure it"
        )
    if node is None or node.op != "call_module":
        raise ProbeError(
            f"its first producer '{first.name}' is a parameter used directly in a forward, not a module "
            "call, so its output cannot be hooked"
        )
    meta = graph.node_meta(node.name)
    if not isinstance(meta, TensorMeta):
        raise ProbeError(f"its first producer '{first.name}' does not return a single tensor")
    cd = _channel_dim(graph, group, meta)
    if cd is None:
        raise ProbeError(f"the output of '{first.name}' has no dimension made of the group's channels alone")
    chain: list[fx.Node] = []
    if len(group.producers) == 1:
        consumers = {m.name for m in group.consumers}
        followers = {m.name for m in group.followers}
        order = list(graph.fx.graph.nodes)
        position = {n: i for i, n in enumerate(order)}
        cur = node
        while True:
            step = _next_region(graph, cur, order, position, consumers, followers)
            if step is None:
                break
            region, end = step
            m = graph.node_meta(end.name)
            if not isinstance(m, TensorMeta) or m.ndim != meta.ndim or not _is_channels(graph, group, m, cd):
                break
            chain.extend(region)
            cur = end
    stateless = _stateless(graph, chain)
    skipped = frozenset(
        n.name for n in chain if (info := graph.ops.info(n.op, n.target)) is not None and info.identity_in_eval
    )
    in_eval = tuple(
        (n.name, info.in_eval)
        for n in chain
        if (info := graph.ops.info(n.op, n.target)) is not None and info.in_eval is not None
    )
    end = _hookable_end(graph, chain, stateless)
    return Probe(group.name, first.name, cd, meta.ndim, tuple(chain), end, stateless, skipped, in_eval)


def _hookable_end(graph: WidthGraph, chain: list[fx.Node], stateless: bool) -> str | None:
    """The module computing the chain's last node, when its output in a training forward equals
    the eval-mode replay (a ``stateless`` chain, :func:`_stateless`: no norm layer, dropout,
    random or mode-dependent step on the way) and it is called exactly once, so that its first
    output in a forward is the probe's value."""
    if not chain or chain[-1].op != "call_module" or not stateless:
        return None
    target = str(chain[-1].target)
    calls = sum(1 for n in graph.fx.graph.nodes if n.op == "call_module" and str(n.target) == target)
    return target if calls == 1 else None


def _stateless(graph: WidthGraph, chain: list[fx.Node]) -> bool:
    """Every step of the chain computes the same in training and eval mode and draws no random
    numbers: known parameter-free torch modules, and functions or methods that are not random.
    Replaying such a chain without autograd gives the training forward's value with no mode
    switch and no RNG side effect (anything else is replayed under :func:`measuring`)."""
    for n in chain:
        if n.op == "call_module":
            module = graph.fx.get_submodule(str(n.target))
            rule = graph.ops.layer(module)
            if rule is None or not rule.is_mode_free(module, graph.ops):
                return False
        elif n.op in ("call_function", "call_method"):
            name = function_name(n.target) if n.op == "call_function" else str(n.target)
            info = graph.ops.info(n.op, n.target)
            if graph.ops.is_random(n.op, n.target, name) or "training" in n.kwargs:
                return False
            if info is not None and info.in_eval is not None:  # depends on the mode (F.batch_norm)
                return False
        else:
            return False
    return True


def _next_region(
    graph: WidthGraph,
    cur: fx.Node,
    order: list[fx.Node],
    position: dict[fx.Node, int],
    consumers: set[str],
    followers: set[str],
    limit: int = 64,
) -> tuple[list[fx.Node], fx.Node] | None:
    """The ops from ``cur`` to the next node where every path out of ``cur`` meets again.

    A single-user op is the common case; an activation traced into several ops (``where(x >= 0,
    x, 0)``) forms a small diamond that rejoins.  Every op in between must take only values
    from inside the region (or parameters/buffers), and must not be a consumer or another layer
    with weights.
    """
    inside = {cur}
    pending: dict[fx.Node, set[fx.Node]] = {cur: set(cur.users)}
    region: list[fx.Node] = []
    for n in order[position[cur] + 1 : position[cur] + 1 + limit]:
        inputs = n.all_input_nodes
        if not any(a in inside for a in inputs):
            continue
        if n.op not in ("call_module", "call_function", "call_method"):
            return None
        if n.op != "call_module" and any(graph.member_node(c, "consumer") == n.name for c in consumers):
            return None  # a consumer computing with a function on its own tensors (timm's Conv2dSame)
        if n.op == "call_module":
            target = str(n.target)
            mod = graph.fx.get_submodule(target)
            if target in consumers or (any(True for _ in mod.parameters(recurse=False)) and target not in followers):
                return None
        if any(a not in inside and a.op != "get_attr" for a in inputs):
            return None
        inside.add(n)
        region.append(n)
        for a in inputs:
            if a in pending:
                pending[a].discard(n)
                if not pending[a]:
                    del pending[a]
        if not n.users:
            return None
        pending[n] = set(n.users)
        if len(pending) == 1:
            return region, n
    return None


def _is_channels(graph: WidthGraph, group: WidthGroup, meta: TensorMeta, dim: int) -> bool:
    lay = meta.dims[dim]
    if lay is None or len(lay) != 1:
        return False
    (seg,) = group.segments(lay)
    return seg.grows and seg.inner == 1


def _channel_dim(graph: WidthGraph, group: WidthGroup, meta: TensorMeta) -> int | None:
    found = [d for d in range(meta.ndim) if _is_channels(graph, group, meta, d)]
    return found[0] if len(found) == 1 else None


__all__ = ["Probe", "ProbeError", "build_probe"]
