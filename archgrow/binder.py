"""A spec bound to a traced model: every group's settings resolved, checked and turned into rules.

Binding happens once, in :func:`archgrow.wrap` (and ``archgrow validate --model``).  Everything
that depends on the model is checked here and reported all at once, each problem naming the spec
file and rule: a ``match`` that selects nothing, a frozen group named exactly, a cap below the
current width, and whatever the chosen kinds declare they need (activations, the auxiliary
gradient, a candidate-capable producer) or check themselves.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

from torch import nn

from archgrow.errors import SpecError
from archgrow.graph.widthgraph import WidthGraph
from archgrow.growth.auxgrad import build_bridge
from archgrow.growth.binding import GroupBinding
from archgrow.growth.measure import supports_candidates
from archgrow.growth.probes import ProbeError, build_probe
from archgrow.growth.svd import BridgeError
from archgrow.initializers import INITIALIZERS
from archgrow.spec.schema import Settings, Spec, resolve_width
from archgrow.triggers import TRIGGERS


def bind(spec: Spec, graph: WidthGraph) -> list[GroupBinding]:
    """Resolve the spec for every group; every model-dependent problem is reported at once."""
    problems: list[str] = []
    src = spec.source
    names = [g.name for g in graph.groups]
    growable = [g.name for g in graph.groups if g.growable]
    listing = ", ".join(f"{g.name} ({g.width})" for g in graph.groups if g.growable) or "(none)"
    conv = {g.name: _is_conv(graph, g) for g in graph.groups}
    for i, rule in enumerate(spec.rules):
        hits = [n for n in names if rule.selects(n, conv[n])]
        if not hits:
            what = f"'{rule.match}'" + (f" with layers: {rule.layers}" if rule.layers != "any" else "")
            problems.append(f"{src}: rules[{i}].match: {what} selects no width group; growable groups: {listing}")
            continue
        if rule.frozen:
            continue
        if not rule.is_pattern and rule.match not in growable:
            problems.append(
                f"{src}: rules[{i}].match: group '{rule.match}' cannot grow: {graph.group(rule.match).reason}; "
                f"growable groups: {listing}"
            )
        elif not any(n in growable for n in hits):
            warnings.warn(f"{src}: rules[{i}] ('{rule.match}') selects only frozen groups: {', '.join(hits)}", stacklevel=3)
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in graph.model.modules())
    bindings = []
    unfit: list[str] = []  # groups a pattern selected for kinds that cannot handle them
    for g in graph.groups:
        if not g.growable:
            continue
        settings, matched = spec.settings_for(g.name, conv[g.name])
        if not matched or settings.frozen:
            continue
        origin = _origins(spec, matched)
        try:
            b = _bind_group(g, settings, origin, graph, has_conv, src)
        except SpecError as exc:
            problems.extend(exc.problems)
            kinds = any(".trigger" in p or ".initializer" in p for p in exc.problems)
            if kinds and all(spec.rules[i].is_pattern for i in matched):
                unfit.append(g.name)
            continue
        bindings.append(b)
    if unfit:  # said after the last problem, not as one more (each problem is one entry)
        problems[-1] += (
            f"\n{src}: rules: patterns select {len(unfit)} group(s) the problems above rule out ({', '.join(unfit)}); "
            f"to leave one out, add a rule after them such as {{match: '{unfit[0]}', frozen: true}} (a glob may "
            "cover several), or give it a trigger and initializer that can handle it"
        )
    if problems:
        problems = list(dict.fromkeys(problems))  # a default shared by many groups is reported once
        raise SpecError("\n".join(problems), problems=problems)
    return bindings


def _origins(spec: Spec, matched: list[int]) -> dict[str, str]:
    origin = {name: "defaults" for name in Settings.model_fields}
    for i in matched:
        for name in Settings.model_fields:
            if getattr(spec.rules[i], name) is not None:
                origin[name] = f"rules[{i}]"
    return origin


def _bind_group(g, settings: Settings, origin: dict[str, str], graph: WidthGraph, has_conv: bool, src: str) -> GroupBinding:
    where = lambda field: f"{src}: {origin[field]}.{field}"  # noqa: E731
    producer_name = g.producers[0].name
    try:
        producer = graph.model.get_submodule(producer_name)
    except AttributeError:
        producer = None
    width = g.width
    max_width = resolve_width(settings.max_width, width)
    problems = []
    if max_width < width:
        problems.append(
            f"{where('max_width')}: {settings.max_width!r} gives {max_width}, below group '{g.name}'s current "
            f"width {width}"
        )
    tkind, ikind = settings.trigger.kind, settings.initializer.kind
    for field, kind, registry in (("trigger", tkind, TRIGGERS), ("initializer", ikind, INITIALIZERS)):
        if kind not in registry:  # validated against the registry, then unregistered
            problems.append(f"{where(field)}: kind '{kind}' is not registered; registered: {', '.join(registry) or '(none)'}")
    if problems:
        raise SpecError("\n".join(problems), problems=problems)
    fields = {
        "group": g,
        "settings": settings,
        "origin": origin,
        "initial_width": width,
        "max_width": max_width,
        "producer": producer,
        "producer_name": producer_name,
        "conv_model": has_conv,
    }
    # What the kinds declare they need, with the field to blame when the group cannot provide it.
    uses = (("trigger", tkind, TRIGGERS[tkind]), ("initializer", ikind, INITIALIZERS[ikind]))
    bridged = next(((f, k) for f, k, rule in uses if rule.needs_gradient or rule.needs_bridge), None)
    if bridged is not None:
        field, kind = bridged
        try:
            fields["bridge"] = build_bridge(graph, g)
        except BridgeError as exc:
            problems.append(f"{where(field)}: '{kind}' cannot be used on group '{g.name}': {exc}")
        if g.step != 1:
            problems.append(
                f"{where(field)}: '{kind}' cannot be used on group '{g.name}', which grows in multiples of {g.step}"
            )
    measured = next((f for f, _, rule in uses if rule.needs_activations), None)
    if measured is not None:
        try:
            fields["probe"] = build_probe(graph, g)
        except ProbeError as exc:
            problems.append(f"{where(measured)}: group '{g.name}' cannot be measured: {exc}")
    module_type = type(producer).__name__
    b = GroupBinding(**fields)  # what the kinds' checks and constructors see
    for field, kind, rule in reversed(uses):  # the initializer's problems first, as they were listed
        if rule.needs_candidate_producer and (producer is None or not supports_candidates(producer)):
            hint = "; use 'random'" if field == "initializer" else ""
            problems.append(
                f"{where(field)}: '{kind}' needs the group's first producer to be nn.Linear or an nn.ConvNd with "
                f"groups=1; group '{g.name}' starts with '{producer_name}' ({module_type}){hint}"
            )
            continue
        parts = len(g.producers[0].slots)
        if rule.needs_candidate_producer and parts > 1:  # a unit is one row per part (an equal split)
            hint = "; use 'random'" if field == "initializer" else ""
            problems.append(
                f"{where(field)}: '{kind}' needs the group's first producer to hold each unit in one row; "
                f"'{producer_name}' holds group '{g.name}' in {parts} equal parts (split by chunk/tensor_split){hint}"
            )
            continue
        config = getattr(settings, field)
        for problem in rule.check(config, b):
            at = f"{where(field)}.{problem.field}" if problem.field else where(field)
            problems.append(f"{at}: {problem.message}")
    if problems:
        raise SpecError("\n".join(problems), problems=problems)
    trigger = TRIGGERS[tkind](settings.trigger, b)
    initializer = INITIALIZERS[ikind](settings.initializer, b)
    return replace(b, trigger=trigger, initializer=initializer)


def _is_conv(graph: WidthGraph, g) -> bool:
    try:
        return isinstance(graph.model.get_submodule(g.producers[0].name), nn.modules.conv._ConvNd)
    except AttributeError:
        return False


__all__ = ["bind"]
