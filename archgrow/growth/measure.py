"""Where and how a group's activations are measured.

A trigger or initializer that looks at activations needs, for a group, the tensor that feeds the
next layer (post-activation, post-pool: the paper's recording point, §9.20).  archgrow finds it
on the traced graph, starting at the group's first producer and walking forward through ops
that keep the group's channels where they are (activations, norm layers, pooling, dropout),
stopping before a consumer, a fork, a merge or a reshape.  That walk is a *probe*.

Residual groups (several producers tied by adds) are measured on their first producer's output,
as the paper measures the first conv of each WRN group.  Unlike the paper, residual additions
stay on: archgrow cannot switch off skips in an arbitrary model.

Measurement runs the real model (never a GraphModule, which fx may have baked stale sizes into)
in eval mode, without autograd and with the RNG forked, on a FIFO buffer of raw training inputs.
Forward hooks capture each probed producer's input and output on its first call; the rest of the
probe is replayed from the traced nodes on the live modules.  The forward stops as soon as every
probe has its capture.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from archgrow.errors import ArgumentError, MeasurementError
from archgrow.graph.trace import forked_rng
from archgrow.graph.widthgraph import WidthGraph, WidthGroup
from archgrow.growth.hooks import HookSet
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

    @property
    def dense(self) -> bool:
        """True when the measured tensor is ``(samples, channels)``."""
        return self.ndim == 2

    @property
    def point(self) -> str:
        """The traced node whose value is measured (for docs and reports)."""
        return self.chain[-1].name if self.chain else self.producer


@dataclass
class Measurement:
    """A probe's values on the buffer: producer input ``x``, producer output ``z``, measured ``h``."""

    x: torch.Tensor
    z: torch.Tensor
    h: torch.Tensor


def build_probe(graph: WidthGraph, group: WidthGroup) -> Probe:
    """Find the measurement point of ``group`` (see the module docstring)."""
    first = group.producers[0]
    node_name = graph.member_node(first.name, "producer")
    nodes = {n.name: n for n in graph.fx.graph.nodes}
    node = nodes.get(node_name) if node_name else None
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
    end = _hookable_end(graph, chain, stateless)
    return Probe(group.name, first.name, cd, meta.ndim, tuple(chain), end, stateless, skipped)


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
            rule = graph.ops.layer(graph.fx.get_submodule(str(n.target)))
            if rule is None or not rule.mode_free:
                return False
        elif n.op in ("call_function", "call_method"):
            name = function_name(n.target) if n.op == "call_function" else str(n.target)
            if graph.ops.is_random(n.op, n.target, name) or "training" in n.kwargs:
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


# --------------------------------------------------------------------------- running probes
@contextlib.contextmanager
def measuring(model: nn.Module) -> Iterator[None]:
    """Eval mode, no autograd, forked RNG; every module's own training flag restored after."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in saved:
            m.training = False
        with torch.no_grad(), forked_rng(model):
            yield
    finally:
        for m, flag in saved:
            m.training = flag


class _Done(Exception):
    pass


def measure(
    model: nn.Module, probes: Sequence[Probe], inputs: Sequence[torch.Tensor], *, chunk: int = 512
) -> dict[str, Measurement]:
    """Run ``model`` on ``inputs`` (chunked along the batch) and return each probe's values.

    Call inside :func:`measuring`.
    """
    producers = sorted({p.producer for p in probes})
    captured: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in producers}
    seen: set[str] = set()

    def hook(name: str):
        def fn(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if name in seen:
                return
            seen.add(name)
            # a copy: an in-place op right after the producer (ReLU(inplace=True)) would edit it
            captured[name].append((args[0].detach() if args else None, output.detach().clone()))
            if len(seen) == len(producers):
                raise _Done

        return fn

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in producers]
    try:
        n = inputs[0].shape[0]
        for start in range(0, n, chunk):
            seen.clear()
            try:
                model(*(t[start : start + chunk] for t in inputs))
            except _Done:
                pass
            missing = [p for p in producers if p not in seen]
            if missing:
                raise MeasurementError(f"the forward pass never called {', '.join(missing)}; cannot measure it")
    finally:
        for h in handles:
            h.remove()
    out = {}
    for p in probes:
        xs, zs = zip(*captured[p.producer], strict=True)
        x = torch.cat(xs) if xs[0] is not None else None
        z = torch.cat(zs)
        out[p.group] = Measurement(x, z, replay(model, p, z))
    return out


def replay(model: nn.Module, probe: Probe, z: torch.Tensor, *, candidates: bool = False) -> torch.Tensor:
    """Apply the probe's chain to a producer output ``z``.

    With ``candidates``, ``z`` holds only new channels: modules with parameters (norm layers,
    per-channel affine) act as the identity, which is what a new channel's reset state does
    (weight 1, bias 0, running mean 0, running variance 1, up to ``1/sqrt(1 + eps)``).
    """
    if not probe.chain:
        return z
    if any(_in_place(model, n) for n in probe.chain):  # keep the caller's z (Measurement.z) intact
        z = z.clone()
    env: dict[fx.Node, Any] = {_chain_input(probe): z}

    def value(n: fx.Node) -> Any:
        if n in env:
            return env[n]
        if n.op == "get_attr":
            return operator.attrgetter(str(n.target))(model)
        raise MeasurementError(f"probe of '{probe.group}' reads node '{n.name}' outside its chain")

    out = z
    for node in probe.chain:
        args = fx.node.map_arg(node.args, value)
        kwargs = fx.node.map_arg(node.kwargs, value)
        if node.op == "call_module":
            mod = model.get_submodule(str(node.target))
            if candidates and any(True for _ in mod.parameters(recurse=False)):
                out = args[0]
            else:
                out = mod(*args, **kwargs)
        elif node.op == "call_function":
            out = args[0] if node.name in probe.skipped_in_eval else node.target(*args, **kwargs)
        else:
            out = getattr(args[0], str(node.target))(*args[1:], **kwargs)
        env[node] = out
    return out


def _in_place(model: nn.Module, node: fx.Node) -> bool:
    """The op may overwrite its input: ``ReLU(inplace=True)``, ``F.relu(x, inplace=True)``, ``x.relu_()``."""
    if node.op == "call_module":
        return bool(getattr(model.get_submodule(str(node.target)), "inplace", False))
    name = function_name(node.target) if node.op == "call_function" else str(node.target)
    return bool(node.kwargs.get("inplace")) or (name.endswith("_") and not name.endswith("__"))


def _chain_input(probe: Probe) -> fx.Node:
    first = probe.chain[0]
    inside = set(probe.chain)
    return next(a for a in first.all_input_nodes if a not in inside and a.op != "get_attr")


def producer_forward(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The producer's output for other output units (``weight``), without bias."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module._conv_forward(x, weight, None)
    raise TypeError(f"no candidate forward for {type(module).__name__}")


def supports_candidates(module: nn.Module) -> bool:
    """Initializers that score candidates need a producer whose units are independent filters."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups == 1


class StepCapture:
    """Probe values taken from the training forward itself (``source: step``): no extra forward.

    Forward hooks keep each probed producer's input and (a copy of its) output, and the probe's
    value where its chain ends in a hookable module (see :func:`_hookable_end`); otherwise the
    chain is replayed on the output: under ``no_grad`` alone when it is stateless (element-wise
    functions, :func:`_stateless`), else in eval mode, as :func:`measure` does.  Values come from the
    latest training forward (pre-update weights, the step's batch); only armed steps keep any.
    The producer's input needs no copy: autograd saved it for the weight gradient, so an in-place
    edit would have failed the backward.  Its output may legally be edited in place (an
    ``inplace=True`` ReLU), hence the copy.
    """

    def __init__(self, model: nn.Module, probes: Sequence[Probe], hooks: HookSet):
        self.model = model
        self.probes = list(probes)
        self.armed = False
        self._values: dict[tuple[str, str], tuple[torch.Tensor | None, torch.Tensor]] = {}
        for name in sorted({p.producer for p in self.probes}):
            hooks.forward(model.get_submodule(name), self._hook("producer", name))
        for name in sorted({p.end_module for p in self.probes if p.end_module}):
            hooks.forward(model.get_submodule(name), self._hook("end", name))

    def _hook(self, role: str, name: str):
        def fn(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            key = (role, name)
            if not self.armed or not module.training or not torch.is_grad_enabled() or key in self._values:
                return
            if role == "producer":
                self._values[key] = (args[0].detach() if args else None, output.detach().clone())
            else:
                self._values[key] = (None, output.detach())

        return fn

    def begin(self) -> None:
        """A new training forward: forget the last one's values."""
        self._values = {}

    def measurement(self, probe: Probe) -> Measurement | None:
        """The probe's values from the latest armed training forward, or ``None`` if it did not run."""
        produced = self._values.get(("producer", probe.producer))
        if produced is None:
            return None
        x, z = produced
        end = self._values.get(("end", probe.end_module)) if probe.end_module else None
        if end is not None:
            return Measurement(x, z, end[1])
        if probe.stateless:  # element-wise functions only: no need to switch every module's mode
            with torch.no_grad():
                return Measurement(x, z, replay(self.model, probe, z))
        with measuring(self.model):
            return Measurement(x, z, replay(self.model, probe, z))


# --------------------------------------------------------------------------- input buffer
class InputBuffer:
    """A FIFO of raw inputs, newest first, holding at most ``capacity`` samples (paper §2).

    ``capacity=None`` keeps the latest batch only (what ``source: step`` groups re-measure on).
    Stores detached copies, so the training graph is never retained and memory is bounded.
    """

    def __init__(self, capacity: int | None):
        if capacity is not None and capacity < 1:
            raise ArgumentError(f"buffer capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._chunks: list[tuple[torch.Tensor, ...]] = []
        self.size = 0

    def push(self, inputs: Sequence[torch.Tensor]) -> None:
        batch = tuple(t.detach()[: self.capacity].clone() for t in inputs)
        n = batch[0].shape[0]
        if any(t.shape[0] != n for t in batch):
            raise ArgumentError("all buffered inputs must share the batch dimension")
        if self.capacity is None:
            self._chunks, self.size = [batch], n
            return
        self._chunks.insert(0, batch)
        self.size += n
        while self.size > self.capacity:
            last = self._chunks[-1]
            excess = self.size - self.capacity
            if last[0].shape[0] <= excess:
                self._chunks.pop()
                self.size -= last[0].shape[0]
            else:
                self._chunks[-1] = tuple(t[: t.shape[0] - excess] for t in last)
                self.size -= excess

    def tensors(self) -> tuple[torch.Tensor, ...]:
        if not self._chunks:
            return ()
        return tuple(torch.cat(parts) for parts in zip(*self._chunks, strict=True))

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "inputs": list(self.tensors())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = state["capacity"]
        inputs = tuple(state["inputs"])
        self._chunks = [inputs] if inputs else []
        self.size = inputs[0].shape[0] if inputs else 0
