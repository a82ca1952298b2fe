"""The public result of tracing: a networkx graph of the traced ops and its width groups.

A :class:`WidthGraph` stays bound to the model it traced.  Growth updates it in place (widths
live in one table shared by groups and graph nodes), so it never needs re-tracing to stay right;
:meth:`WidthGraph.retrace` exists to check exactly that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch
from torch import nn

from archgrow.errors import GrowthError, TraceError, UnknownGroupError
from archgrow.graph.export import export_graph
from archgrow.graph.trace import LeafSpec, record_shapes, symbolic_trace
from archgrow.ir.bindings import AttrBinding, TensorBinding
from archgrow.ir.captured import CapturedGraph, as_captured
from archgrow.ir.layout import Layout, TensorMeta, WidthVars
from archgrow.ops.context import LayoutState
from archgrow.ops.integrations import register_installed_integrations
from archgrow.ops.registry import OPS, OpTable, Registration
from archgrow.passes import analyze


@dataclass(frozen=True)
class Slot:
    """Where the group's channels sit in a member's dimension: channel c covers
    positions ``offset + c*inner`` to ``offset + (c+1)*inner - 1``."""

    offset: int
    inner: int


@dataclass(frozen=True)
class Member:
    """A module (or a parameter used directly) whose tensors change when the group grows."""

    name: str
    module_type: str
    slots: tuple[Slot, ...]


@dataclass(frozen=True)
class BoundTensor:
    """One tensor dimension that changes with a group: where it is, its layout and the role of new
    entries (fan-in, fan-out, zero, one, mean), with its module already resolved."""

    binding: TensorBinding
    module: nn.Module

    @property
    def module_name(self) -> str:
        return self.binding.module

    @property
    def tensor(self) -> str:
        return self.binding.tensor

    @property
    def dim(self) -> int:
        return self.binding.dim

    @property
    def layout(self) -> Layout:
        return self.binding.layout

    @property
    def role(self) -> str:
        return self.binding.role


@dataclass(frozen=True)
class SegmentSize:
    """A layout segment at the current widths: ``size`` entries, in blocks of ``inner`` per
    channel; ``grows`` when its channels are the group's (new channels go at its end)."""

    size: int
    inner: int
    grows: bool


@dataclass(eq=False)
class WidthGroup:
    """A set of tensor dimensions that must change size together."""

    name: str
    producers: tuple[Member, ...]
    consumers: tuple[Member, ...]
    followers: tuple[Member, ...]
    growable: bool
    reasons: tuple[str, ...]
    preserves_function: bool
    not_preserving_reasons: tuple[str, ...]
    step: int
    _graph: WidthGraph = field(repr=False)
    _root: int = field(repr=False)

    @property
    def width(self) -> int:
        return self._graph.width_of(self)

    @property
    def graph(self) -> WidthGraph:
        """The graph the group belongs to (growth goes through it)."""
        return self._graph

    def bindings(self) -> tuple[BoundTensor, ...]:
        """Every tensor dimension bound to the group, one per (module, tensor, dim); cached in the graph."""
        return self._graph.bound_tensors(self)

    def segments(self, layout: Layout) -> tuple[SegmentSize, ...]:
        """``layout`` at the current widths, marking the segments that are this group's channels."""
        return self._graph.segment_sizes(layout, self)

    @property
    def reason(self) -> str | None:
        """Why the group is frozen (the most specific reason first), or None if growable."""
        if not self.reasons:
            return None
        more = len(self.reasons) - 1
        return self.reasons[0] + (f" (and {more} more: see .reasons)" if more else "")

    @property
    def members(self) -> tuple[Member, ...]:
        return self.producers + self.consumers + self.followers

    def __repr__(self) -> str:
        state = "growable" if self.growable else f"frozen: {self.reason}"
        return f"WidthGroup({self.name!r}, width={self.width}, {state})"


class WidthGraph:
    """Traced ops as a ``networkx.DiGraph`` plus the width groups found on them."""

    def __init__(
        self, model: nn.Module, example_inputs: tuple[Any, ...], analysis: LayoutState, trace_options: dict[str, Any]
    ):
        self.model = model
        self.example_inputs = example_inputs
        self._trace_options = trace_options
        self._vars: WidthVars = analysis.vars
        self._tensor_bindings: list[TensorBinding] = analysis.tensor_bindings
        self._attr_bindings: list[AttrBinding] = analysis.attr_bindings
        self._bound: dict[int, tuple[BoundTensor, ...]] = {}  # per group root, built on first use
        self._module_index: dict[str, nn.Module] | None = None  # see modules_fixed
        self._deferred_widths: dict[int, int] | None = None  # see shapes_deferred
        # The traced graph is kept for passes that read it (measurement points), never run:
        # ints baked into it by fx can be stale after growth.
        self._gm = analysis.gm
        self._ops = analysis.ops
        self._member_nodes = {(r.module, r.kind): r.node for r in reversed(analysis.members)}
        self._node_meta: dict[str, Any] = {}
        self.nx = nx.DiGraph()
        self._build_nx(analysis)
        self._groups: list[WidthGroup] = self._build_groups(analysis)
        self._by_name = {g.name: g for g in self._groups}
        called = {str(n.target) for n in analysis.gm.graph.nodes if n.op == "call_module"}
        attrs = {str(n.target) for n in analysis.gm.graph.nodes if n.op == "get_attr"}

        def reached(name: str, m: nn.Module) -> bool:
            parts = name.split(".")
            if any(".".join(parts[:i]) in called for i in range(1, len(parts) + 1)):
                return True  # called itself, or inside a called (leaf) module
            return all((f"{name}.{p}" if name else p) in attrs for p, _ in m.named_parameters(recurse=False))

        self.untraced_modules: tuple[str, ...] = tuple(
            name or "(root)"
            for name, m in model.named_modules()
            if any(True for _ in m.parameters(recurse=False)) and not reached(name, m)
        )

    # ------------------------------------------------------------------ public
    @property
    def groups(self) -> list[WidthGroup]:
        """All groups, in topological order of their first producer."""
        return list(self._groups)

    def group(self, name: str) -> WidthGroup:
        try:
            return self._by_name[name]
        except KeyError:
            names = ", ".join(self._by_name) or "(none)"
            raise UnknownGroupError(f"no width group named '{name}'; the groups are: {names}") from None

    def __iter__(self) -> Iterator[WidthGroup]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)

    def widths(self) -> dict[str, int]:
        return {g.name: g.width for g in self._groups}

    def freeze(self, group: str | WidthGroup, reason: str) -> WidthGroup:
        """Mark a group as not growable, with ``reason`` (a width a check found unsafe to grow, or
        one the user wants kept).  Returns the group as it now stands; ``graph.group(name)`` and
        ``graph.groups`` give it from now on."""
        grp = self.group(group) if isinstance(group, str) else group
        self._check_owner(grp)
        self._vars.freeze(grp._root, reason)
        frozen = dataclasses.replace(grp, growable=False, reasons=(reason, *grp.reasons))
        self._groups = [frozen if g is grp else g for g in self._groups]
        self._by_name[frozen.name] = frozen
        return frozen

    @property
    def frontend(self) -> str:
        """The front-end that traced the model: ``"fx"`` or ``"export"`` (see :func:`trace`)."""
        return str(self._trace_options["frontend"])

    def retrace(self) -> WidthGraph:
        """Trace the (possibly grown) model again with the same inputs and options."""
        return trace(self.model, self.example_inputs, **self._trace_options)

    # ------------------------------------------------------------------ internal API (surgery, growth)
    @property
    def fx(self) -> CapturedGraph:
        """The captured graph and the module its targets name, for passes that read its nodes; never
        run it (fx bakes sizes into it that growth makes stale)."""
        return self._gm

    @property
    def ops(self) -> OpTable:
        """The op and layer rules this graph was traced with (the global ones plus ``rules=``)."""
        return self._ops

    def node_meta(self, node: str) -> Any:
        """The analysed layout of a node's output (a ``TensorMeta``, a tuple of them, or None)."""
        return self._node_meta.get(node)

    def member_node(self, module: str, kind: str = "producer") -> str | None:
        """Name of the first fx node where ``module`` takes part as ``kind`` (producer, consumer, follower)."""
        return self._member_nodes.get((module, kind))

    def width_of(self, group: WidthGroup) -> int:
        return self._vars.width[group._root]

    def bound_tensors(self, group: WidthGroup) -> tuple[BoundTensor, ...]:
        """See :meth:`WidthGroup.bindings`.

        The gradient trigger reads a group's weights on every step; scanning every binding of the
        graph and resolving dotted module names each time cost more than the norms themselves on
        an MLP.  Bindings and modules are fixed once traced: growth replaces tensors, not modules.
        """
        self._check_owner(group)
        found = self._bound.get(group._root)
        if found is None:
            found = self._bound[group._root] = tuple(
                BoundTensor(b, self.module(b.module))
                for b in self._tensors_by_root.get(group._root, ())
            )
        return found

    def tensor_bindings(self) -> tuple[TensorBinding, ...]:
        """Every bound tensor dimension of the model, whatever its group."""
        return tuple(self._tensor_bindings)

    def attr_bindings(self, group: WidthGroup | None = None) -> tuple[AttrBinding, ...]:
        """Module attributes that record a width (``in_features``, ``num_features``...), of one group or all."""
        if group is None:
            return tuple(self._attr_bindings)
        self._check_owner(group)
        return tuple(self._attrs_by_root.get(group._root, ()))

    def segment_sizes(self, layout: Layout, group: WidthGroup) -> tuple[SegmentSize, ...]:
        vars_ = self._vars
        root = group._root
        return tuple(
            SegmentSize(vars_.seg_size(seg), seg.inner, seg.var is not None and vars_.find(seg.var) == root)
            for seg in layout
        )

    def commit_growth(self, group: WidthGroup, k: int) -> None:
        """Record that surgery widened ``group`` by ``k`` (negative to undo a trial): the width,
        the width attributes of its modules and the traced nodes' shapes follow."""
        self._check_owner(group)
        root = group._root
        self._vars.width[root] += k
        for a in self._attrs_by_root.get(root, ()):
            module = self.module(a.module)
            size = a.value(self._vars.layout_size(a.layout))
            if a.index is None:
                setattr(module, a.attr, size)
            else:
                current = getattr(module, a.attr)
                value = list(current)
                value[a.index] = size
                setattr(module, a.attr, value if isinstance(current, list) else tuple(value))
        if self._deferred_widths is None:
            self._refresh_shapes(root)
        else:
            self._deferred_widths.setdefault(root, self._vars.width[root] - k)

    @contextlib.contextmanager
    def shapes_deferred(self) -> Iterator[None]:
        """Within, growth leaves the traced nodes' ``shape`` attributes as they are; on exit those
        of groups whose width then differs from before are refreshed, once.  For the growth check,
        which grows and undoes groups in a row: refreshing a group's nodes twice per group (and
        indexing every node by group on the first refresh) was a tenth of its time."""
        if self._deferred_widths is not None:  # already deferred: the outermost block refreshes
            yield
            return
        self._deferred_widths = {}
        try:
            yield
        finally:
            touched, self._deferred_widths = self._deferred_widths, None
            for root, width in touched.items():
                if self._vars.width[root] != width:
                    self._refresh_shapes(root)

    def _check_owner(self, group: WidthGroup) -> None:
        if group._graph is not self:
            raise GrowthError(f"group '{group.name}' belongs to another WidthGraph")

    def module(self, name: str) -> nn.Module:
        """The model's submodule ``name`` (qualified, ``""`` for the model), as it is now (a user
        may have replaced it since tracing), or from the index of :meth:`modules_fixed`."""
        index = self._module_index
        found = index.get(name) if index is not None else None
        return found if found is not None else self.model.get_submodule(name)  # or a shared module's second name

    @contextlib.contextmanager
    def modules_fixed(self) -> Iterator[None]:
        """Within, :meth:`module` looks modules up in an index built once.  For the growth check,
        which grows and undoes many groups in a row with no user code in between that could
        replace a module: ``get_submodule`` walked every dotted path again on each event."""
        self._module_index = dict(self.model.named_modules())
        try:
            yield
        finally:
            self._module_index = None

    @functools.cached_property
    def _attrs_by_root(self) -> dict[int, list[AttrBinding]]:
        return self._by_root(self._attr_bindings)

    @functools.cached_property
    def _tensors_by_root(self) -> dict[int, list[TensorBinding]]:
        return self._by_root(self._tensor_bindings)

    def _by_root(self, bindings: list[Any]) -> dict[int, list[Any]]:
        """``bindings`` by the group roots their layouts carry, in order.  Indexed once: growth and
        its trials look a group's bindings up every time, and groups never merge after tracing
        (freezing changes no root)."""
        index: dict[int, list[Any]] = {}
        for b in bindings:
            for root in dict.fromkeys(self._vars.find(s.var) for s in b.layout if s.var is not None):
                index.setdefault(root, []).append(b)
        return index

    def node_shape(self, node: str) -> Any:
        """Current shape(s) of a traced node's output, following any growth since tracing."""
        return _current_shape(self._node_meta.get(node), self._vars)

    def _refresh_shapes(self, root: int) -> None:
        """Update the ``shape`` attribute of nodes whose output carries group ``root``."""
        if not hasattr(self, "_nodes_by_root"):
            self._nodes_by_root: dict[int, list[str]] = {}
            for name, meta in self._node_meta.items():
                for r in {self._vars.find(v) for v in _meta_vars(meta)}:
                    self._nodes_by_root.setdefault(r, []).append(name)
        for name in self._nodes_by_root.get(root, []):
            self.nx.nodes[name]["shape"] = _current_shape(self._node_meta[name], self._vars)

    def summary(self, max_members: int = 4) -> str:
        """A readable table: one row per group."""
        rows = [("group", "width", "step", "growable", "members", "note")]
        for g in self._groups:
            names = [m.name for m in g.members]
            shown = ", ".join(names[:max_members]) + (
                f" (+{len(names) - max_members})" if len(names) > max_members else ""
            )
            if not g.growable:
                note = g.reason or ""
            elif not g.preserves_function:
                note = "changes outputs: " + g.not_preserving_reasons[0]
            else:
                note = ""
            rows.append((g.name, str(g.width), str(g.step), "yes" if g.growable else "no", shown, note))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = []
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
            if i == 0:
                lines.append("-" * (sum(widths) + 2 * 5 + 4))
        n_grow = sum(g.growable for g in self._groups)
        lines.append(f"{len(self._groups)} groups: {n_grow} growable, {len(self._groups) - n_grow} frozen")
        if self.untraced_modules:
            lines.append("modules with parameters never reached by the trace: " + ", ".join(self.untraced_modules))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    # ------------------------------------------------------------------ building
    def _build_nx(self, analysis: LayoutState) -> None:
        modules = dict(self.model.named_modules())
        for node in analysis.gm.graph.nodes:
            meta = analysis.meta.get(node)
            self._node_meta[node.name] = meta
            module = str(node.target) if node.op == "call_module" else None
            self.nx.add_node(
                node.name,
                op=node.op,
                target=str(node.target) if node.op != "call_function" else _fn_name(node.target),
                module=module,
                module_type=type(modules[module]).__name__ if module else None,
                shape=_current_shape(meta, self._vars),
            )
            for pos, arg in enumerate(node.all_input_nodes):
                self.nx.add_edge(arg.name, node.name, arg=pos)

    def _build_groups(self, analysis: LayoutState) -> list[WidthGroup]:
        vars_ = self._vars
        frozen: dict[int, list[str]] = {}
        changing: dict[int, list[str]] = {}
        steps: dict[int, list[int]] = {}
        for v in range(len(vars_.parent)):
            r = vars_.find(v)
            for reason in vars_.frozen.get(v, []):
                if reason not in frozen.setdefault(r, []):
                    frozen[r].append(reason)
            for reason in vars_.not_preserving.get(v, []):
                if reason not in changing.setdefault(r, []):
                    changing[r].append(reason)
            steps.setdefault(r, []).extend(m for m, _ in vars_.step.get(v, []))
        by_root: dict[int, dict[str, list[Member]]] = {}
        order: list[int] = []
        for rec in analysis.members:
            for root, slots in _slots_by_root(rec.layout, vars_).items():
                kinds = by_root.setdefault(root, {"producer": [], "consumer": [], "follower": []})
                if rec.kind == "producer" and not kinds["producer"]:
                    order.append(root)
                kinds[rec.kind].append(Member(rec.module, rec.module_type, slots))
        names = _group_names(order, by_root)
        groups = []
        for root in order:
            kinds = by_root[root]
            # Ties to a fixed size are usually the consequence of a more specific reason.
            reasons = sorted(frozen.get(root, []), key=lambda r: r.startswith("tied to a fixed-size"))
            changes = changing.get(root, [])
            groups.append(
                WidthGroup(
                    name=names[root],
                    producers=tuple(kinds["producer"]),
                    consumers=tuple(kinds["consumer"]),
                    followers=tuple(kinds["follower"]),
                    growable=not reasons,
                    reasons=tuple(reasons),
                    preserves_function=not changes,
                    not_preserving_reasons=tuple(changes),
                    step=math.lcm(1, *steps.get(root, [])),
                    _graph=self,
                    _root=root,
                )
            )
        return groups


def _group_names(order: list[int], by_root: dict[int, dict[str, list[Member]]]) -> dict[int, str]:
    """Each group is named after its first producer; a producer whose channels are cut into
    several groups (``x[:, :self.n]``) names them ``conv[0]``, ``conv[1]``... in channel order,
    which growth keeps."""
    first = {root: by_root[root]["producer"][0] for root in order}
    shared: dict[str, list[int]] = {}
    for root in order:
        shared.setdefault(first[root].name, []).append(root)
    names = {}
    for name, roots in shared.items():
        if len(roots) == 1:
            names[roots[0]] = name
            continue
        for i, root in enumerate(sorted(roots, key=lambda r: first[r].slots[0].offset)):
            names[root] = f"{name}[{i}]"
    return names


def _slots_by_root(layout: Layout, vars_: WidthVars) -> dict[int, tuple[Slot, ...]]:
    found: dict[int, list[Slot]] = {}
    offset = 0
    for seg in layout:
        if seg.var is not None:
            found.setdefault(vars_.find(seg.var), []).append(Slot(offset, seg.inner))
        offset += vars_.seg_size(seg)
    return {r: tuple(s) for r, s in found.items()}


def _current_shape(meta: Any, vars_: WidthVars) -> Any:
    if isinstance(meta, TensorMeta):
        return tuple(s if lay is None else vars_.layout_size(lay) for s, lay in zip(meta.shape, meta.dims, strict=True))
    if isinstance(meta, (tuple, list)):
        return tuple(_current_shape(m, vars_) for m in meta)
    return None


def _meta_vars(meta: Any) -> list[int]:
    if isinstance(meta, TensorMeta):
        return [s.var for lay in meta.dims if lay is not None for s in lay if s.var is not None]
    if isinstance(meta, (tuple, list)):
        return [v for m in meta for v in _meta_vars(m)]
    return []


def _fn_name(fn: Any) -> str:
    from archgrow.ops.tensor_ops import function_name

    return function_name(fn)


def trace(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    leaf_modules: Sequence[LeafSpec] = (),
    autowrap_functions: Sequence[Any] = (),
    concrete_args: dict[str, Any] | None = None,
    rules: Sequence[Registration] = (),
    frontend: str = "auto",
) -> WidthGraph:
    """Trace ``model`` and find its width groups.

    ``example_inputs`` is one tensor or a tuple with one tensor per forward argument; a batch of
    one is enough.  ``leaf_modules`` (types, instances or qualified names) are not traced into;
    their widths are frozen unless a layer rule describes them, which is the way out for modules
    fx cannot trace.  ``rules``: op and layer descriptions for this trace only
    (``archgrow.ops.op(...)``, ``archgrow.ops.layer(...)``), on top of the registered ones.  The
    model's parameters, buffers, train/eval flags and the global RNG are left as they were.

    ``frontend``: ``"auto"`` (default) traces with torch.fx and, where fx fails, captures the model
    with ``torch.export`` (non-strict; :mod:`archgrow.graph.export`); ``"fx"`` or ``"export"`` use
    one only.  The export front-end takes ``concrete_args`` as keyword arguments of the forward and
    ignores ``autowrap_functions``; :attr:`WidthGraph.frontend` says which one traced.
    """
    if frontend not in FRONTENDS:
        raise TraceError(f"trace(frontend={frontend!r}): the front-ends are {', '.join(map(repr, FRONTENDS))}")
    register_installed_integrations()
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    ops = OPS.with_rules(rules) if rules else OPS
    options = {
        "leaf_modules": tuple(leaf_modules),
        "autowrap_functions": tuple(autowrap_functions),
        "concrete_args": concrete_args,
        "rules": tuple(rules),
        "frontend": frontend,
    }
    fx_error: TraceError | None = None
    if frontend != "export":
        try:
            gm = symbolic_trace(
                model, leaf_modules=options["leaf_modules"], autowrap_functions=options["autowrap_functions"],
                concrete_args=concrete_args, is_leaf=ops.is_leaf,
            )  # fmt: skip
            values = record_shapes(gm, model, inputs, ops)
        except TraceError as exc:
            if frontend == "fx":
                raise
            fx_error = exc
        else:
            options["frontend"] = "fx"
    if frontend == "export" or fx_error is not None:
        try:
            exported = export_graph(
                model, inputs, leaf_modules=options["leaf_modules"], is_leaf=ops.is_leaf, kwargs=concrete_args
            )
        except TraceError as exc:
            if fx_error is None:
                raise TraceError(f"{exc}. Check that example_inputs are what the forward takes") from exc
            raise TraceError(
                f"neither front-end could trace {type(model).__name__}. (1) {fx_error} (2) {exc}. To fix: make the "
                "forward traceable by one of them, or mark the failing submodule as a leaf "
                "(leaf_modules=[...]: its widths are then frozen)"
            ) from exc
        gm, values = as_captured(exported.gm), exported.values
        options["frontend"] = "export"
    analysis = analyze(gm, values, model, ops)
    graph = WidthGraph(model, inputs, analysis, options)
    # surgery builds on this module, so it is imported here, where it runs
    from archgrow.surgery.check import freeze_groups_that_break_the_forward

    if options["frontend"] == "export":
        freeze_groups_that_break_the_forward(graph)
    elif analysis.sourced_at:
        # growth rewrites attributes the code reads (x[:, :self.n]): check those groups once
        rewritten = {key[:2] for key in analysis.sourced_at}
        checked = [
            g for g in graph.groups
            if g.growable and any((a.module, a.attr) in rewritten for a in graph.attr_bindings(g))
        ]  # fmt: skip
        freeze_groups_that_break_the_forward(graph, checked)
    return graph


FRONTENDS = ("auto", "fx", "export")


__all__ = ["BoundTensor", "Member", "SegmentSize", "Slot", "WidthGraph", "WidthGroup", "trace"]
