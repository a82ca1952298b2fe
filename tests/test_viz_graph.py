"""The width-group graph: layers collapsed from the traced ops, and its SVG/PNG drawings.

Checks the layer graph exactly on the MLP and structurally on ResNet-18 and a branching model,
then renders with the pure-Python engine (always) and Graphviz (when ``dot`` is on PATH) and reads
the files back: SVG as XML with the expected texts, PNG by its signature and size.
"""

from __future__ import annotations

import re
import shutil
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archgrow
from archgrow.models import mlp, vgg11
from archgrow.viz import graph as viz
from archgrow.viz.graph import dot_source, group_colour, layer_graph, render_width_graph

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def svg_texts(path: Path) -> list[str]:
    """Every text line drawn in an SVG file (it must parse as XML)."""
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    return ["".join(el.itertext()).strip() for el in root.iter() if el.tag.endswith("text")]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])


def small_mlp() -> archgrow.WidthGraph:
    torch.manual_seed(0)
    return archgrow.trace(mlp(64, (4, 4), 2), torch.randn(1, 64))


@pytest.fixture(scope="module")
def resnet18() -> archgrow.WidthGraph:
    torchvision = pytest.importorskip("torchvision")
    return archgrow.trace(torchvision.models.resnet18(), torch.randn(1, 3, 32, 32))


@pytest.fixture(scope="module")
def vgg() -> archgrow.WidthGraph:
    return archgrow.trace(vgg11(width_mult=0.125), torch.randn(1, 3, 32, 32))


class Gated(nn.Module):
    """Two branches concatenated, a squeeze-excitation gate and a layer scale used directly."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 5, 1)
        self.fc = nn.Linear(9, 9)
        self.gamma = nn.Parameter(torch.ones(9))
        self.head = nn.Conv2d(9, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.relu(self.a(x)), self.b(x)], 1)
        n, c, _, _ = y.size()
        s = torch.sigmoid(self.fc(y.mean((2, 3)))).view(n, c, 1, 1)  # sizes read from y: no junction
        return self.head(y * s * self.gamma.view(1, -1, 1, 1))


class LayerScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.full((8,), 0.1))
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(x + self.gamma.view(1, -1, 1, 1) * self.conv(x))


# ------------------------------------------------------------------------------------ layer graph
def test_layer_graph_mlp_is_the_chain_of_linears() -> None:
    lg = layer_graph(small_mlp())
    assert list(lg.nodes) == ["input_1", "hidden1", "hidden2", "out", "output"]
    assert set(lg.edges) == {("input_1", "hidden1"), ("hidden1", "hidden2"), ("hidden2", "out"), ("out", "output")}
    attrs = {
        n: (d["label"], d["kind"], d["role"], d["group"], d["width"], d["growable"]) for n, d in lg.nodes(data=True)
    }
    assert attrs == {
        "input_1": ("input", "input", "input", None, None, None),
        "hidden1": ("hidden1", "Linear", "layer", "hidden1", 4, True),
        "hidden2": ("hidden2", "Linear", "layer", "hidden2", 4, True),
        "out": ("out", "Linear", "layer", "out", 2, False),
        "output": ("output", "output", "output", None, None, None),
    }


def test_layer_graph_widths_follow_growth() -> None:
    g = small_mlp()
    archgrow.grow(g, "hidden2", 3)
    lg = layer_graph(g)
    assert lg.nodes["hidden2"]["width"] == 7
    assert lg.nodes["hidden1"]["width"] == 4


def test_layer_graph_resnet18(resnet18: archgrow.WidthGraph) -> None:
    lg = layer_graph(resnet18)
    kinds = {d["kind"] for _, d in lg.nodes(data=True)}
    assert kinds == {"input", "output", "Conv2d", "BatchNorm2d", "Linear", "add"}  # no ReLU, pooling, flatten
    adds = [n for n, d in lg.nodes(data=True) if d["role"] == "junction"]
    assert len(adds) == 8 and all(lg.in_degree(n) == 2 for n in adds)
    assert all(lg.nodes[n]["label"] == n for n in adds)
    # Edges pass through relu and maxpool; the first residual add reads bn1 (skip) and layer1.0.bn2.
    assert lg.has_edge("bn1", "layer1_0_conv1")
    assert set(lg.predecessors("add")) == {"bn1", "layer1_0_bn2"}
    assert list(lg.successors("add_7")) == ["fc"] and list(lg.successors("fc")) == ["output"]
    assert nx_is_dag(lg)
    label = {d["label"]: d for _, d in lg.nodes(data=True)}
    # A BatchNorm follows the group of the conv before it.
    for conv, bn in [
        ("conv1", "bn1"),
        ("layer1.0.conv1", "layer1.0.bn1"),
        ("layer3.0.downsample.0", "layer3.0.downsample.1"),
    ]:
        assert label[bn]["group"] == label[conv]["group"] is not None
        assert label[bn]["width"] == label[conv]["width"]
    # The convs writing into a residual stage's stream share one group; the inner convs have their own.
    stage2 = {label[n]["group"] for n in ("layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2", "layer2.1.bn2")}
    assert stage2 == {"layer2.0.conv2"}
    assert label["layer2.0.conv1"]["group"] == "layer2.0.conv1"
    assert label["layer4.1.conv2"]["width"] == 512
    assert label["fc"]["growable"] is False


def nx_is_dag(lg) -> bool:
    import networkx as nx

    return nx.is_directed_acyclic_graph(lg)


def test_layer_graph_junctions_cat_and_gate() -> None:
    lg = layer_graph(archgrow.trace(Gated(), torch.randn(1, 3, 8, 8)))
    kinds = {n: d["kind"] for n, d in lg.nodes(data=True)}
    assert kinds == {
        "x": "input",
        "a": "Conv2d",
        "b": "Conv2d",
        "cat": "cat",
        "fc": "Linear",
        "mul": "mul",
        "gamma": "Parameter",
        "mul_1": "mul",
        "head": "Conv2d",
        "output": "output",
    }
    assert set(lg.edges) == {
        ("x", "a"),
        ("x", "b"),
        ("a", "cat"),
        ("b", "cat"),
        ("cat", "fc"),
        ("cat", "mul"),
        ("fc", "mul"),  # the view(n, c, 1, 1) in between reads sizes of y, yet it is no junction
        ("mul", "mul_1"),
        ("gamma", "mul_1"),
        ("mul_1", "head"),
        ("head", "output"),
    }


def test_layer_graph_parameter_follows_its_group() -> None:
    g = archgrow.trace(LayerScale(), torch.randn(1, 3, 8, 8))
    lg = layer_graph(g)
    assert lg.nodes["gamma"]["role"] == "parameter"
    # conv is added to the stem's output, so stem, conv and the scale on conv share one group.
    assert lg.nodes["gamma"]["group"] == lg.nodes["conv"]["group"] == lg.nodes["stem"]["group"] == "stem"
    assert lg.nodes["gamma"]["width"] == 8
    junctions = [n for n, d in lg.nodes(data=True) if d["role"] == "junction"]
    assert [lg.nodes[n]["kind"] for n in junctions] == ["mul", "add"]
    assert set(lg.predecessors(junctions[1])) == {"stem", junctions[0]}


# ------------------------------------------------------------------------------------ colours and layout
def test_group_colours_are_distinct_stable_hex() -> None:
    colours = [group_colour(i) for i in range(24)]
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colours)
    assert len(set(colours)) == 24
    assert colours == [group_colour(i) for i in range(24)]
    # Light enough for black text.
    assert all(sum(int(c[i : i + 2], 16) for i in (1, 3, 5)) / 3 > 140 for c in colours)


def test_layout_flows_down_without_overlaps(resnet18: archgrow.WidthGraph) -> None:
    lg = layer_graph(resnet18)
    sizes = {
        v: viz._box(viz._node_lines(d, viz._styles(resnet18, None, None)), d["role"]) for v, d in lg.nodes(data=True)
    }
    lay = viz._layout(lg, sizes)
    assert set(lay.routes) == set(lg.edges)
    for chain in lay.routes.values():
        ys = [lay.y[v] for v in chain]
        assert all(a > b for a, b in zip(ys, ys[1:], strict=False)), chain
    for rank in lay.ranks:
        for a, b in zip(rank, rank[1:], strict=False):
            assert lay.x[a] + lay.w[a] / 2 < lay.x[b] - lay.w[b] / 2
    assert lay.y["output"] == min(lay.y[v] for v in lg.nodes)


def test_layout_orders_ranks_to_remove_crossings() -> None:
    import networkx as nx

    lg = nx.DiGraph()
    lg.add_nodes_from(["a0", "a1", "b0", "b1", "c0", "c1"], role="layer")
    lg.add_edges_from([("a0", "b1"), ("a1", "b0"), ("b0", "c1"), ("b1", "c0")])  # crossed in insertion order
    lay = viz._layout(lg, {v: (1.0, 0.4) for v in lg.nodes})
    assert [sorted(r) for r in lay.ranks] == [["a0", "a1"], ["b0", "b1"], ["c0", "c1"]]
    down = {a: [b] for a, b in lg.edges}
    assert sum(viz._crossings(lay.ranks[i], lay.ranks[i + 1], down) for i in range(2)) == 0
    assert viz._crossings(["a0", "a1"], ["b0", "b1"], down) == 1


# ------------------------------------------------------------------------------------ python renderer
def test_render_python_mlp_before_after_and_frozen(tmp_path: Path) -> None:
    g = small_mlp()
    start = g.widths()
    archgrow.grow(g, "hidden1", 5)
    paths = render_width_graph(g, tmp_path / "mlp", before=start, engine="python")
    assert paths == [tmp_path / "mlp.svg", tmp_path / "mlp.png"]
    texts = svg_texts(paths[0])
    assert "Linear | 4 -> 9" in texts and "hidden1: 4 -> 9" in texts  # node and legend
    assert "Linear | 4" in texts and "hidden2: 4" in texts  # unchanged: no arrow
    assert "Linear | 2 | frozen" in texts and "out: 2" in texts
    assert any(t.startswith("frozen: reaches the model output") for t in texts)
    assert any("1 grown since the start" in t for t in texts)
    assert "stroke-dasharray" in paths[0].read_text()
    w, h = png_size(paths[1])
    assert w > 200 and h > 200 and paths[1].stat().st_size > 5000


def test_render_python_vgg_every_group_and_deterministic_svg(tmp_path: Path, vgg: archgrow.WidthGraph) -> None:
    (svg,) = render_width_graph(vgg, tmp_path / "a", engine="python", formats=("svg",), title="VGG-11 small")
    assert not (tmp_path / "a.png").exists()
    texts = svg_texts(svg)
    assert "VGG-11 small" in texts
    for grp in vgg.groups:
        assert f"{grp.name}: {grp.width}" in texts
    assert sum(t.endswith("| frozen") for t in texts) == 1  # only classifier.4
    (again,) = render_width_graph(vgg, tmp_path / "b", engine="python", formats="svg", title="VGG-11 small")
    assert svg.read_bytes() == again.read_bytes()


def test_render_python_growing_marks_the_rest_frozen(tmp_path: Path, vgg: archgrow.WidthGraph) -> None:
    (svg,) = render_width_graph(vgg, tmp_path / "g", engine="python", formats=["svg"], growing=["features.0"])
    texts = svg_texts(svg)
    assert texts.count("frozen: not grown by the spec") == len(vgg.groups) - 2  # all but features.0 and the head
    assert "Conv2d | 8" in texts and "Conv2d | 16 | frozen" in texts
    all_grow = render_width_graph(vgg, tmp_path / "h", engine="python", formats=["svg"])[0].read_text()
    assert svg.read_text().count("stroke-dasharray") > all_grow.count("stroke-dasharray")


def test_render_python_resnet18_is_tall_and_labelled(tmp_path: Path, resnet18: archgrow.WidthGraph) -> None:
    svg, png = render_width_graph(resnet18, tmp_path / "sub" / "resnet18.v1", engine="python")
    assert svg.name == "resnet18.v1.svg" and png.name == "resnet18.v1.png"
    texts = svg_texts(svg)
    for grp in resnet18.groups:
        assert f"{grp.name}: {grp.width}" in texts
    assert "layer2.0.downsample.0" in texts and "BatchNorm2d | 512" in texts
    assert texts.count("add") == 8
    w, h = png_size(png)
    assert h > 2 * w and h > 2000
    assert png.stat().st_size > 50_000


def test_bad_group_names_are_refused(tmp_path: Path) -> None:
    g = small_mlp()
    with pytest.raises(archgrow.UnknownGroupError, match="hidden3"):
        render_width_graph(g, tmp_path / "x", growing=["hidden3"], engine="python")
    with pytest.raises(archgrow.UnknownGroupError, match="nope"):
        dot_source(g, before={"nope": 3})
    assert list(tmp_path.iterdir()) == []


def test_bad_engine_and_format(tmp_path: Path) -> None:
    g = small_mlp()
    with pytest.raises(ValueError, match="accepted: auto, dot, python"):
        render_width_graph(g, tmp_path / "x", engine="graphviz")
    with pytest.raises(ValueError, match="'pdf'.*accepted: svg, png"):
        render_width_graph(g, tmp_path / "x", formats=("svg", "pdf"))
    with pytest.raises(ValueError, match="accepted: svg, png"):
        render_width_graph(g, tmp_path / "x", formats=())
    assert list(tmp_path.iterdir()) == []


def test_missing_matplotlib_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'archgrow[viz]'")):
        render_width_graph(small_mlp(), tmp_path / "x", engine="python")


def test_auto_engine_without_dot_uses_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(viz.shutil, "which", lambda name: None)
    (svg,) = render_width_graph(small_mlp(), tmp_path / "auto", formats=("svg",))
    assert "Matplotlib" in svg.read_text() or "matplotlib" in svg.read_text()
    with pytest.raises(RuntimeError, match="engine='python'"):
        render_width_graph(small_mlp(), tmp_path / "dot", engine="dot")


# ------------------------------------------------------------------------------------ DOT
def test_dot_source_mlp() -> None:
    g = small_mlp()
    start = g.widths()
    archgrow.grow(g, "hidden2", 5)
    src = dot_source(g, before=start, title='say "hi"')
    assert src.startswith("digraph archgrow {") and src.rstrip().endswith("}")
    assert src.count("{") == src.count("}")
    assert 'label="say \\"hi\\""' in src
    for node in ["input_1", "hidden1", "hidden2", "out", "output"]:
        assert re.search(rf'^  "{node}" \[label=', src, re.M), node
    for a, b in [("input_1", "hidden1"), ("hidden1", "hidden2"), ("hidden2", "out"), ("out", "output")]:
        assert f'  "{a}" -> "{b}";' in src
    assert src.count(' -> "') == 4
    assert 'label="hidden2\\nLinear | 4 -> 9"' in src and "hidden2: 4 -&gt; 9" in src
    (out_line,) = [ln for ln in src.splitlines() if ln.startswith('  "out" [')]
    assert "dashed" in out_line and "frozen" in out_line
    (h1_line,) = [ln for ln in src.splitlines() if ln.startswith('  "hidden1" [')]
    assert "dashed" not in h1_line and f'fillcolor="{group_colour(0)}"' in h1_line


def test_dot_source_resnet18_colours_by_group(resnet18: archgrow.WidthGraph) -> None:
    src = dot_source(resnet18)
    fill = dict(re.findall(r'^  "(\w+)" \[label=.*fillcolor="(#[0-9a-f]{6})"', src, re.M))
    lg = layer_graph(resnet18)
    assert set(lg.nodes) <= set(fill)
    stage = {fill[n] for n in ("layer3_0_conv2", "layer3_0_bn2", "layer3_0_downsample_0", "layer3_1_conv2")}
    assert stage == {group_colour([g.name for g in resnet18.groups].index("layer3.0.conv2"))}
    assert fill["layer3_0_conv1"] != fill["layer3_0_conv2"]
    assert src.count(" -> ") == lg.number_of_edges()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_dot_engine_renders_svg_and_png(tmp_path: Path, resnet18: archgrow.WidthGraph) -> None:
    svg, png = render_width_graph(resnet18, tmp_path / "r18", engine="dot", growing=["conv1"])
    texts = svg_texts(svg)
    assert "layer1.0.conv2" in texts and "Conv2d | 64" in texts and "Conv2d | 64 | frozen" in texts
    assert "generated by graphviz" in svg.read_text().lower()
    w, h = png_size(png)
    assert h > w and png.stat().st_size > 20_000
