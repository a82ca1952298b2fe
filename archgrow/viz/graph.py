"""Draw a model's width groups: which layers must grow together, how wide they are, what is frozen.

A :class:`~archgrow.WidthGraph` knows its groups as lists of member names and its traced ops as a
graph with one node per fx op; neither is something to show a person.  This module collapses the
op graph onto layers (:func:`layer_graph`: modules with parameters, inputs, outputs and the
junctions where widths meet, such as residual adds and concatenations), colours each layer by the
group whose channels it produces or follows, and renders it top to bottom (:func:`render_width_graph`)
with Graphviz ``dot`` when installed, otherwise with a small layered layout drawn by matplotlib.
Given the widths at the start of a run, labels read ``64 -> 210``: the picture of a growth run.
"""

from __future__ import annotations

import colorsys
import html
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from archgrow.errors import VizDependencyError
from archgrow.graph.widthgraph import WidthGraph, WidthGroup

ENGINES = ("auto", "dot", "python")
FORMATS = ("svg", "png")


def group_colour(index: int) -> str:
    """The fill colour of the group at ``index`` in ``graph.groups``: a pastel, light enough for black text.

    Hues step by the golden angle, so consecutive groups differ most and no colour repeats; the
    lightness cycles over three levels to separate hues that come close after many steps.
    """
    h = (0.5 + index * 0.381966) % 1.0
    r, g, b = colorsys.hls_to_rgb(h, (0.80, 0.70, 0.75)[index % 3], 0.7)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


NO_GROUP_FILL = "#ffffff"
FROZEN_EDGE = "#444444"
EDGE_COLOUR = "#555555"

# Ops whose extra tensor arguments only lend a shape or dtype: they never join two widths.
_SHAPE_ONLY = {"view_as", "expand_as", "reshape_as", "type_as", "to", "new_zeros", "new_ones", "new_empty", "new_full"}


# ---------------------------------------------------------------------------------------- layer graph
def _carries_tensor(shape: Any) -> bool:
    """Does a node's ``shape`` attribute describe a tensor (or a container holding one)?

    Tensors have a tuple of ints; sizes and other plain values have None (or a tuple of None).
    """
    if not isinstance(shape, tuple):
        return False
    if all(isinstance(s, int) for s in shape):
        return True
    return any(_carries_tensor(s) for s in shape)


def _op_name(target: str) -> str:
    return str(target).rsplit(".", 1)[-1]


def layer_graph(graph: WidthGraph) -> nx.DiGraph:
    """Collapse the traced op graph of ``graph`` onto its layers.

    Nodes (keyed by fx node name, in execution order) are the inputs, every call of a module that
    has parameters, every parameter used directly, the output, and *junctions*: ops that combine
    tensors coming from different layers (residual ``add``, ``cat``, gating ``mul``, ...).
    Activations, pooling, reshapes and other single-source ops are passed through.  There is an
    edge A -> B when a tensor flows from A to B without passing another kept node.

    Node attributes: ``label`` (module path, parameter path, input name or op node name),
    ``kind`` (module class, ``"Parameter"``, ``"input"``, ``"output"`` or the op's name),
    ``role`` (``"input"``, ``"layer"``, ``"parameter"``, ``"junction"``, ``"output"``),
    ``group`` (the group whose channels the layer produces, else the one it follows, else None),
    ``width`` (that group's current width or None) and ``growable`` (the group's flag or None).
    """
    ops = graph.nx
    modules = dict(graph.model.named_modules())
    parameters = dict(graph.model.named_parameters())
    group_of: dict[str, WidthGroup] = {}
    for g in graph.groups:
        for m in g.producers:
            group_of.setdefault(m.name, g)
    for g in graph.groups:
        for m in g.followers:
            group_of.setdefault(m.name, g)

    out = nx.DiGraph()
    sources: dict[str, frozenset[str]] = {}  # op node -> kept nodes whose tensors reach it directly

    def keep(node: str, label: str, kind: str, role: str, member: str | None) -> None:
        g = group_of.get(member) if member is not None else None
        out.add_node(
            node,
            label=label,
            kind=kind,
            role=role,
            group=g.name if g is not None else None,
            width=g.width if g is not None else None,
            growable=g.growable if g is not None else None,
        )

    for node, data in ops.nodes(data=True):
        op = data["op"]
        target = str(data["target"])
        preds = [p for p in ops.predecessors(node) if _carries_tensor(ops.nodes[p]["shape"]) or p in out]
        if op == "call_method" and target in _SHAPE_ONLY:
            first = sorted(ops.in_edges(node, data="arg"), key=lambda e: e[2])
            preds = [e[0] for e in first[:1] if e[0] in preds]
        contributions = [frozenset({p}) if p in out else sources.get(p, frozenset()) for p in preds]
        reaching = frozenset().union(*contributions)

        if op == "placeholder":
            keep(node, target, "input", "input", None)
        elif op == "output":
            keep(node, "output", "output", "output", None)
        elif op == "call_module" and any(True for _ in modules[target].parameters()):
            keep(node, target, data["module_type"], "layer", target)
        elif op == "get_attr" and target in parameters:
            keep(node, target, "Parameter", "parameter", target)
        elif op in ("call_function", "call_method", "call_module") and len({c for c in contributions if c}) >= 2:
            kind = data["module_type"] if op == "call_module" else _op_name(target)
            keep(node, node, kind, "junction", None)
        else:
            sources[node] = reaching
            continue
        for src in sorted(reaching):
            out.add_edge(src, node)
    return out


# ---------------------------------------------------------------------------------------- styling
@dataclass(frozen=True)
class _GroupStyle:
    name: str
    index: int
    colour: str
    width: int
    before: int | None
    frozen: bool
    why: str | None  # why it is frozen

    @property
    def width_text(self) -> str:
        if self.before is not None and self.before != self.width:
            return f"{self.before} -> {self.width}"
        return str(self.width)


def _styles(
    graph: WidthGraph, before: Mapping[str, int] | None, growing: Iterable[str] | None
) -> dict[str, _GroupStyle]:
    before = dict(before or {})
    chosen: set[str] | None = None
    if growing is not None:
        chosen = {growing} if isinstance(growing, str) else set(growing)
    for name in sorted(set(before) | (chosen or set())):
        graph.group(name)  # raises UnknownGroupError listing the groups
    styles = {}
    for i, g in enumerate(graph.groups):
        if not g.growable:
            frozen, why = True, g.reason
        elif chosen is not None and g.name not in chosen:
            frozen, why = True, "not grown by the spec"
        else:
            frozen, why = False, None
        styles[g.name] = _GroupStyle(g.name, i, group_colour(i), g.width, before.get(g.name), frozen, why)
    return styles


def _node_lines(data: Mapping[str, Any], styles: Mapping[str, _GroupStyle]) -> list[str]:
    """Text lines of one node's label."""
    role = data["role"]
    if role == "junction":
        return [str(data["kind"])]
    if role in ("input", "output"):
        return [str(data["label"])]
    style = styles.get(data["group"]) if data["group"] else None
    second = str(data["kind"])
    if style is not None:
        second += f" | {style.width_text}" + (" | frozen" if style.frozen else "")
    return [str(data["label"]), second]


def _default_title(graph: WidthGraph, styles: Mapping[str, _GroupStyle], before: Mapping[str, int] | None) -> str:
    n_frozen = sum(s.frozen for s in styles.values())
    title = f"{type(graph.model).__name__}: {len(styles)} width groups, {len(styles) - n_frozen} growing"
    if before:
        grown = sum(s.before is not None and s.before != s.width for s in styles.values())
        title += f", {grown} grown since the start"
    return title


def _legend_lines(style: _GroupStyle) -> tuple[str, str | None]:
    note = None
    if style.frozen:
        why = style.why or "frozen"
        note = "frozen: " + (why if len(why) <= 60 else why[:57] + "...")
    return f"{style.name}: {style.width_text}", note


def _check(engine: str, formats: str | Sequence[str]) -> tuple[str, ...]:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; accepted: {', '.join(ENGINES)}")
    fmts = (formats,) if isinstance(formats, str) else tuple(formats)
    for f in fmts:
        if f not in FORMATS:
            raise ValueError(f"unknown format {f!r}; accepted: {', '.join(FORMATS)}")
    if not fmts:
        raise ValueError(f"no output format given; accepted: {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(fmts))


# ---------------------------------------------------------------------------------------- DOT
def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dot_source(
    graph: WidthGraph,
    *,
    before: Mapping[str, int] | None = None,
    growing: Iterable[str] | None = None,
    title: str | None = None,
) -> str:
    """The Graphviz DOT text of the layer graph (what the ``dot`` engine renders).

    Same styling as :func:`render_width_graph`: a fill colour per group, frozen layers dashed
    with ``frozen`` in their label, widths as ``before -> now`` where they changed, and a legend.
    """
    styles = _styles(graph, before, growing)
    lg = layer_graph(graph)
    title = _default_title(graph, styles, before) if title is None else title
    out = [
        "digraph archgrow {",
        f"  graph [rankdir=TB, labelloc=t, fontsize=18, fontname=Helvetica, nodesep=0.25, ranksep=0.35, "
        f"label={_dot_quote(title)}];",
        '  node [fontname=Helvetica, fontsize=10, shape=box, style="rounded,filled", fillcolor="#ffffff", '
        'color="#333333", penwidth=1];',
        f'  edge [color="{EDGE_COLOUR}", arrowsize=0.6];',
    ]
    for node, data in lg.nodes(data=True):
        label = "\n".join(_node_lines(data, styles))
        attrs = [f"label={_dot_quote(label)}"]
        style = styles.get(data["group"]) if data["group"] else None
        if data["role"] in ("input", "output"):
            attrs += ["shape=ellipse", 'style="filled"', 'fillcolor="#f2f2f2"']
        elif data["role"] == "junction":
            attrs += ["shape=circle", 'style="filled"', 'fillcolor="#ffffff"', "fontsize=9", "width=0.3", "margin=0"]
        elif style is not None:
            attrs.append(f'fillcolor="{style.colour}"')
            if style.frozen:
                attrs += ['style="rounded,filled,dashed"', f'color="{FROZEN_EDGE}"', "penwidth=2"]
        out.append(f"  {_dot_quote(node)} [{', '.join(attrs)}];")
    for a, b in lg.edges:
        out.append(f"  {_dot_quote(a)} -> {_dot_quote(b)};")
    if styles:
        rows = ['<TR><TD COLSPAN="2"><B>width groups</B></TD></TR>']
        for s in styles.values():
            text, note = _legend_lines(s)
            cell = html.escape(text, quote=False) + (
                f'<BR/><FONT POINT-SIZE="8">{html.escape(note, quote=False)}</FONT>' if note else ""
            )
            mark = ' STYLE="dashed"' if s.frozen else ""
            rows.append(
                f'<TR><TD BGCOLOR="{s.colour}" WIDTH="18"{mark}> </TD><TD ALIGN="LEFT" BALIGN="LEFT">{cell}</TD></TR>'
            )
        table = '<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="2" CELLPADDING="3">' + "".join(rows) + "</TABLE>"
        out.append(f'  "__legend__" [shape=plaintext, style="", label=<{table}>];')
        out.append('  { rank=source; "__legend__"; }')
    out.append("}")
    return "\n".join(out) + "\n"


def _render_dot(source: str, paths: Sequence[tuple[str, Path]]) -> None:
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError("Graphviz `dot` was not found on PATH; install Graphviz or use engine='python'")
    for fmt, path in paths:
        done = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=source, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"Graphviz `dot -T{fmt}` failed ({done.returncode}): {done.stderr.strip()}")


# ---------------------------------------------------------------------------------------- layout
_FONT_PT = 8.0
_CHAR_IN = 0.068  # mean advance of an 8 pt DejaVu Sans character, in inches
_LINE_IN = 0.16
_RANK_GAP = 0.38  # vertical space between two ranks' boxes
_NODE_GAP = 0.22
_DUMMY_W = 0.12


@dataclass
class _Layout:
    x: dict[Any, float]
    y: dict[Any, float]
    w: dict[Any, float]
    h: dict[Any, float]
    routes: dict[tuple[str, str], list[Any]]  # edge -> nodes it passes, dummies included
    ranks: list[list[Any]]


def _box(lines: Sequence[str], role: str) -> tuple[float, float]:
    chars = max(len(s) for s in lines)
    if role == "junction":
        return max(0.36, chars * _CHAR_IN + 0.16), 0.3
    return chars * _CHAR_IN + 0.3, len(lines) * _LINE_IN + 0.14


def _crossings(upper: Sequence[Any], lower: Sequence[Any], edges: Mapping[Any, list[Any]]) -> int:
    pos = {v: i for i, v in enumerate(lower)}
    ends = [pos[v] for u in upper for v in sorted(edges.get(u, []), key=pos.__getitem__) if v in pos]
    # Inversions among edge ends, upper nodes taken in order.
    return sum(1 for i in range(len(ends)) for j in range(i + 1, len(ends)) if ends[j] < ends[i])


def _isotonic(targets: Sequence[float]) -> list[float]:
    """Least-squares nondecreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for t in targets:
        blocks.append([t, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, c2 = blocks.pop()
            m1, c1 = blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    out: list[float] = []
    for m, c in blocks:
        out.extend([m] * int(c))
    return out


def _layout(lg: nx.DiGraph, sizes: Mapping[str, tuple[float, float]]) -> _Layout:
    """A layered (Sugiyama-style) layout, top to bottom, in inches.

    Ranks are longest-path layers (``topological_generations``); an edge spanning several ranks
    gets a dummy point on each rank so that it is routed around boxes; a few barycenter sweeps
    order each rank to reduce crossings; x positions then relax towards the mean of their
    neighbours while keeping each rank's order and spacing (an isotonic fit).
    """
    order = {v: i for i, v in enumerate(lg.nodes)}
    rank_of: dict[Any, int] = {}
    for r, gen in enumerate(nx.topological_generations(lg)):
        for v in gen:
            rank_of[v] = r
    # Outputs go on the last rank, so the flow ends on one line.
    last = max(rank_of.values(), default=0)
    for v, data in lg.nodes(data=True):
        if data["role"] == "output":
            rank_of[v] = last
    # Parameters used directly have no inputs: draw them just above their first use, not at the top.
    for v, data in lg.nodes(data=True):
        if data["role"] != "input" and lg.in_degree(v) == 0 and lg.out_degree(v) > 0:
            rank_of[v] = min(rank_of[s] for s in lg.successors(v)) - 1

    down: dict[Any, list[Any]] = {v: [] for v in lg.nodes}
    up: dict[Any, list[Any]] = {v: [] for v in lg.nodes}
    w = {v: sizes[v][0] for v in lg.nodes}
    h = {v: sizes[v][1] for v in lg.nodes}
    routes: dict[tuple[str, str], list[Any]] = {}
    for a, b in lg.edges:
        chain: list[Any] = [a]
        for r in range(rank_of[a] + 1, rank_of[b]):
            d = ("dummy", a, b, r)
            rank_of[d], w[d], h[d] = r, _DUMMY_W, 0.0
            order[d] = order[a] + 0.5
            down[d], up[d] = [], []
            chain.append(d)
        chain.append(b)
        for u, v in zip(chain, chain[1:], strict=False):
            down[u].append(v)
            up[v].append(u)
        routes[(a, b)] = chain

    ranks: list[list[Any]] = [[] for _ in range(max(rank_of.values(), default=-1) + 1)]
    for v in sorted(rank_of, key=lambda v: (order[v], str(v))):
        ranks[rank_of[v]].append(v)

    def total_crossings(rs: list[list[Any]]) -> int:
        return sum(_crossings(rs[i], rs[i + 1], down) for i in range(len(rs) - 1))

    def sweep(rs: list[list[Any]], downward: bool) -> list[list[Any]]:
        rs = [list(r) for r in rs]
        idx = range(1, len(rs)) if downward else range(len(rs) - 2, -1, -1)
        for i in idx:
            ref = rs[i - 1] if downward else rs[i + 1]
            pos = {v: j for j, v in enumerate(ref)}
            nbrs = up if downward else down
            cur = {v: j for j, v in enumerate(rs[i])}

            def key(v: Any, pos: dict[Any, int] = pos, nbrs: dict[Any, list[Any]] = nbrs, cur: dict = cur) -> float:
                ps = [pos[u] for u in nbrs[v] if u in pos]
                return sum(ps) / len(ps) if ps else cur[v]

            rs[i].sort(key=key)
        return rs

    best, best_cross = ranks, total_crossings(ranks)
    current = ranks
    for i in range(8):
        if best_cross == 0:
            break
        current = sweep(current, downward=i % 2 == 0)
        c = total_crossings(current)
        if c < best_cross:
            best, best_cross = current, c
    ranks = best

    # y: each rank as tall as its tallest box, top to bottom.
    y: dict[Any, float] = {}
    top = 0.0
    for r in ranks:
        rh = max((h[v] for v in r), default=0.0)
        for v in r:
            y[v] = top - rh / 2
        top -= rh + _RANK_GAP

    # x: packed, then relaxed towards neighbours.
    x: dict[Any, float] = {}

    def place(r: list[Any], want: Sequence[float]) -> None:
        offsets = [0.0]
        for a, b in zip(r, r[1:], strict=False):
            gap = _NODE_GAP if not (isinstance(a, tuple) and isinstance(b, tuple)) else _NODE_GAP / 2
            offsets.append(offsets[-1] + (w[a] + w[b]) / 2 + gap)
        fit = _isotonic([t - o for t, o in zip(want, offsets, strict=True)])
        for v, f, o in zip(r, fit, offsets, strict=True):
            x[v] = f + o

    for r in ranks:
        place(r, [0.0] * len(r))
        shift = (x[r[0]] + x[r[-1]]) / 2 if r else 0.0
        for v in r:
            x[v] -= shift
    for it in range(12):
        seq = ranks if it % 2 == 0 else ranks[::-1]
        for r in seq:
            want = []
            for v in r:
                nb = up[v] + down[v]
                want.append(sum(x[u] for u in nb) / len(nb) if nb else x[v])
            place(r, want)
    return _Layout(x, y, w, h, routes, ranks)


# ---------------------------------------------------------------------------------------- matplotlib
def _import_matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise VizDependencyError(
            "the pure-Python renderer needs matplotlib: pip install 'archgrow[viz]' "
            "(or install Graphviz and use engine='dot')"
        ) from exc
    return matplotlib, Figure


def _render_python(
    graph: WidthGraph,
    styles: Mapping[str, _GroupStyle],
    title: str,
    paths: Sequence[tuple[str, Path]],
) -> None:
    matplotlib, Figure = _import_matplotlib()
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
    from matplotlib.path import Path as MplPath

    lg = layer_graph(graph)
    lines = {v: _node_lines(d, styles) for v, d in lg.nodes(data=True)}
    sizes = {v: _box(lines[v], lg.nodes[v]["role"]) for v in lg.nodes}
    lay = _layout(lg, sizes)

    real = list(lg.nodes)
    left = min((lay.x[v] - lay.w[v] / 2 for v in lay.x), default=0.0)
    right = max((lay.x[v] + lay.w[v] / 2 for v in lay.x), default=1.0)
    bottom = min((lay.y[v] - lay.h[v] / 2 for v in real), default=-1.0)
    margin = 0.3
    title_h = 0.5

    # Legend column on the right, from the top.
    entries = [(s, *_legend_lines(s)) for s in styles.values()]
    legend_text_w = max([len(t) for _, t, _ in entries] + [len(n or "") * 0.85 for *_, n in entries] + [12])
    legend_w = 0.45 + legend_text_w * _CHAR_IN
    legend_h = 0.3 + sum(0.22 + (0.15 if n else 0.0) for *_, n in entries) + 0.45

    x0, x1 = left - margin, right + margin + legend_w + 0.2
    y1 = title_h + margin
    y0 = min(bottom, -legend_h) - margin
    x1 = max(x1, x0 + len(title) * _CHAR_IN * 1.6 + 2 * margin)
    fig_w, fig_h = x1 - x0, y1 - y0
    dpi = max(30.0, min(100.0, 30000.0 / max(fig_w, fig_h)))  # stay far below Agg's 2^16 pixel limit

    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_axis_off()
    font = {"family": "DejaVu Sans", "fontsize": _FONT_PT}

    ax.text(x0 + margin, y1 - margin, title, ha="left", va="top", fontsize=13, fontweight="bold", family="DejaVu Sans")

    # Edges first, under the boxes: smooth curves through the dummy points.
    for (a, b), chain in lay.routes.items():
        pts = [(lay.x[a], lay.y[a] - lay.h[a] / 2)]
        pts += [(lay.x[d], lay.y[d]) for d in chain[1:-1]]
        pts.append((lay.x[b], lay.y[b] + lay.h[b] / 2 + 0.02))
        verts = [pts[0]]
        codes = [MplPath.MOVETO]
        for (px, py), (qx, qy) in zip(pts, pts[1:], strict=False):
            mid = (py + qy) / 2
            verts += [(px, mid), (qx, mid), (qx, qy)]
            codes += [MplPath.CURVE4] * 3
        ax.add_patch(
            FancyArrowPatch(
                path=MplPath(verts, codes),
                arrowstyle="-|>,head_length=0.5,head_width=0.25",
                mutation_scale=10,
                linewidth=0.8,
                color=EDGE_COLOUR,
                zorder=1,
            )
        )

    for v, data in lg.nodes(data=True):
        cx, cy, bw, bh = lay.x[v], lay.y[v], lay.w[v], lay.h[v]
        style = styles.get(data["group"]) if data["group"] else None
        role = data["role"]
        fill, edge, ls, lw, hatch = NO_GROUP_FILL, "#333333", "solid", 0.8, None
        if role in ("input", "output"):
            fill, box = "#f2f2f2", f"round,pad=0,rounding_size={bh / 2:.3f}"
        elif role == "junction":
            box = f"round,pad=0,rounding_size={bh / 2:.3f}"
        else:
            box = "round,pad=0,rounding_size=0.06"
            if style is not None:
                fill = style.colour
                if style.frozen:
                    edge, ls, lw, hatch = FROZEN_EDGE, (0, (4, 2)), 1.6, "///"
        ax.add_patch(
            FancyBboxPatch(
                (cx - bw / 2, cy - bh / 2),
                bw,
                bh,
                boxstyle=box,
                facecolor=fill,
                edgecolor=edge,
                linestyle=ls,
                linewidth=lw,
                hatch=hatch,
                zorder=2,
            )
        )
        text = lines[v]
        bbox = {"boxstyle": "round,pad=0.05", "facecolor": fill, "edgecolor": "none"} if hatch else None
        if len(text) == 1:
            ax.text(cx, cy, text[0], ha="center", va="center", zorder=3, bbox=bbox, **font)
        else:
            ax.text(cx, cy + _LINE_IN / 2, text[0], ha="center", va="center", zorder=3, bbox=bbox,
                    fontweight="bold", **font)  # fmt: skip
            ax.text(cx, cy - _LINE_IN / 2, text[1], ha="center", va="center", zorder=3, bbox=bbox, **font)

    # Legend: swatch + "group: width", frozen ones dashed and hatched with the reason below.
    lx = right + margin + 0.2
    ly = -0.05
    ax.text(lx, ly, "width groups", ha="left", va="top", fontweight="bold", **font)
    ly -= 0.3
    for s, text, note in entries:
        ax.add_patch(
            Rectangle(
                (lx, ly - 0.14),
                0.28,
                0.16,
                facecolor=s.colour,
                edgecolor=FROZEN_EDGE if s.frozen else "#333333",
                linestyle=(0, (3, 1.5)) if s.frozen else "solid",
                linewidth=1.2 if s.frozen else 0.6,
                hatch="///" if s.frozen else None,
            )
        )
        ax.text(lx + 0.38, ly - 0.06, text, ha="left", va="center", **font)
        ly -= 0.22
        if note:
            ax.text(lx + 0.38, ly + 0.02, note, ha="left", va="center", color="#444444",
                    family="DejaVu Sans", fontsize=_FONT_PT - 1.5)  # fmt: skip
            ly -= 0.15
    ax.text(lx, ly - 0.1, "dashed, hatched: frozen (does not grow)", ha="left", va="top", color="#444444",
            family="DejaVu Sans", fontsize=_FONT_PT - 1.5)  # fmt: skip

    for fmt, path in paths:
        if fmt == "svg":
            # Text as <text> elements (searchable, selectable) and fixed ids: deterministic output.
            with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "archgrow"}):
                fig.savefig(path, format="svg", metadata={"Date": None})
        else:
            fig.savefig(path, format=fmt)


# ---------------------------------------------------------------------------------------- public
def render_width_graph(
    graph: WidthGraph,
    path_stem: str | os.PathLike[str],
    *,
    before: Mapping[str, int] | None = None,
    growing: Iterable[str] | None = None,
    title: str | None = None,
    engine: str = "auto",
    formats: str | Sequence[str] = ("svg", "png"),
) -> list[Path]:
    """Draw the width-group graph of ``graph`` to ``<path_stem>.svg`` and/or ``.png``.

    One box per layer (see :func:`layer_graph`), filled with its group's colour (stable: from the
    group's index in ``graph.groups``) and labelled with its name, type and the group's width.
    ``before`` maps group names to their width at the start; a changed width reads ``4 -> 9``.
    A group is drawn frozen (dashed, hatched, ``frozen`` in the label and legend) when it is not
    growable or, with ``growing`` given, not among the groups that will grow.  ``engine`` is
    ``"dot"`` (Graphviz), ``"python"`` (matplotlib) or ``"auto"`` (dot when on PATH).  Returns the
    written paths in the order of ``formats``; parent folders are created.
    """
    fmts = _check(engine, formats)
    styles = _styles(graph, before, growing)
    title = _default_title(graph, styles, before) if title is None else title
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [(f, stem.with_name(f"{stem.name}.{f}")) for f in fmts]
    use = engine if engine != "auto" else ("dot" if shutil.which("dot") else "python")
    if use == "dot":
        _render_dot(dot_source(graph, before=before, growing=growing, title=title), paths)
    else:
        _render_python(graph, styles, title, paths)
    return [p for _, p in paths]


__all__ = ["ENGINES", "FORMATS", "dot_source", "group_colour", "layer_graph", "render_width_graph"]
