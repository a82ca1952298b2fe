"""The torch.export front-end: models fx cannot trace (HuggingFace transformers) trace, grow and train;
plain models give the same groups through either front-end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archgrow
from archgrow.errors import TraceError


def _key(graph: archgrow.WidthGraph) -> list[tuple]:
    return [
        (
            g.name, g.width, g.step, g.growable, g.preserves_function, [m.name for m in g.producers],
            [m.name for m in g.consumers], sorted(m.name for m in g.followers),
        )
        for g in graph.groups
    ]  # fmt: skip


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3, self.fc = nn.Conv2d(8, 16, 3, stride=2), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.b1(self.c1(x)))
        x = x + F.relu(self.b2(self.c2(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.c3(x), 1), 1))


class FunctionalBN(nn.BatchNorm2d):
    """timm's BatchNormAct2d in miniature: the layer function on the module's own tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1, self.eps)
        return F.relu(y)


class FunctionalLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(F.linear(x, self.weight, self.bias))


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.bn, self.c2 = nn.Conv2d(3, 8, 3), FunctionalBN(8), nn.Conv2d(8, 6, 1)
        self.lin, self.out = FunctionalLinear(6, 12), nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.lin(self.c2(self.bn(self.c(x))).mean((2, 3))))


PLAIN = {
    "mlp": (lambda: nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Dropout(0.1), nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 5)), (2, 10)),
    "cnn": (SmallCNN, (1, 3, 16, 16)),
    "functional": (Functional, (1, 3, 16, 16)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_export_gives_the_groups_fx_gives(name: str) -> None:
    make, shape = PLAIN[name]
    torch.manual_seed(0)
    model, x = make(), torch.randn(*shape)
    by_fx = archgrow.trace(model, x, frontend="fx")
    by_export = archgrow.trace(model, x, frontend="export")
    assert by_fx.frontend == "fx" and by_export.frontend == "export"
    assert _key(by_export) == _key(by_fx)
    assert any(g.growable for g in by_export.groups)
    assert archgrow.trace(model, x).frontend == "fx"  # auto: fx where fx traces


def test_export_groups_grow_and_keep_the_function() -> None:
    torch.manual_seed(0)
    model, x = SmallCNN().eval(), torch.randn(1, 3, 16, 16)
    graph = archgrow.trace(model, x, frontend="export")
    before = model(x).detach()
    for g in [g for g in graph.groups if g.growable]:
        archgrow.grow(graph, g, 2)
    torch.testing.assert_close(model(x), before)
    assert graph.retrace().widths() == graph.widths()


class Untraceable(nn.Module):
    """Python control flow on a size: fx fails, export specialises it to the example input's."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if x.shape[0] > 0:
            h = torch.relu(h)
        return self.b(h)


def test_auto_falls_back_to_export_where_fx_fails() -> None:
    model, x = Untraceable(), torch.randn(2, 4)
    with pytest.raises(TraceError, match="torch.fx could not trace"):
        archgrow.trace(model, x, frontend="fx")
    graph = archgrow.trace(model, x)
    assert graph.frontend == "export"
    assert graph.group("a").growable and graph.group("a").width == 6


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 0):
            return self.a(x)
        return self.a(x.view(3, -1))  # wrong for the example input: no front-end can run it


def test_frontend_errors() -> None:
    model = nn.Linear(4, 3)
    with pytest.raises(TraceError, match=r"frontend='torchscript'.*'auto', 'fx', 'export'"):
        archgrow.trace(model, torch.randn(1, 4), frontend="torchscript")
    with pytest.raises(TraceError, match=r"neither front-end.*\(1\) torch\.fx.*\(2\) torch\.export.*To fix"):
        archgrow.trace(Broken(), -torch.ones(2, 4))
    with pytest.raises(TraceError, match="torch.export could not capture"):
        archgrow.trace(Broken(), -torch.ones(2, 4), frontend="export")


# --------------------------------------------------------------------------- HuggingFace transformers
def _hf(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[str]]:
    """(model, inputs, the MLP groups that must grow) for one family, from a small config."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ids = (torch.randint(0, 100, (1, 8)),)
    if name == "bert":
        config = transformers.BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=100
        )
        return transformers.BertModel(config), ids, [f"encoder.layer.{i}.intermediate.dense" for i in (0, 1)]
    if name == "gpt2":
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, bos_token_id=0, eos_token_id=0)
        return transformers.GPT2Model(config), ids, [f"h.{i}.mlp.c_fc" for i in (0, 1)]
    if name == "vit":
        config = transformers.ViTConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
        )
        model = transformers.ViTModel(config)
        return model, (torch.randn(1, 3, 32, 32),), [m for m, _ in model.named_modules() if m.endswith(("fc1", "intermediate.dense"))]
    # "llama_gqa": grouped-query attention, 4 query heads over 2 key/value heads (Llama 2 70B and
    # 3, Mistral, Qwen2); its repeat_kv expands k and v with sizes export records as numbers
    # Mistral and Qwen2 (q, k and v with biases) write the same decoder with it
    config_class, model_class = {
        "mistral": (transformers.MistralConfig, transformers.MistralModel),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2Model),
    }.get(name, (transformers.LlamaConfig, transformers.LlamaModel))
    heads, kv_heads = (2, 2) if name == "llama" else (4, 2)
    config = config_class(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=heads,
        num_key_value_heads=kv_heads, vocab_size=100,
    )  # fmt: skip
    return model_class(config), ids, [f"layers.{i}.mlp.gate_proj" for i in (0, 1)]


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit", "llama", "llama_gqa", "mistral", "qwen2"])
def test_transformers_trace_grow_and_train(name: str) -> None:
    model, inputs, mlp = _hf(name)
    graph = archgrow.trace(model, inputs)
    assert graph.frontend == "export"  # fx cannot trace them
    assert len(mlp) == 2
    for group in mlp:
        g = graph.group(group)
        assert g.growable and g.preserves_function, g.reason
    if name in ("llama", "llama_gqa", "mistral", "qwen2"):  # SiLU gating: gate and up grow together, down consumes both
        members = {m.name for m in graph.group(mlp[0]).members}
        assert {"layers.0.mlp.gate_proj", "layers.0.mlp.up_proj", "layers.0.mlp.down_proj"} <= members
    if name == "gpt2":  # transformers' Conv1D, weight stored (in, out)
        assert {m.module_type for m in graph.group(mlp[0]).members} == {"Conv1D"}
    # the other growable groups are the attention heads, one group per layer, counted in heads
    heads = [g.name for g in graph.groups if g.growable and g.name not in mlp]
    assert len(heads) == 2 and all(graph.group(h).width == 2 and graph.group(h).preserves_function for h in heads), heads

    model.eval()
    with torch.no_grad():
        before = model(*inputs).last_hidden_state.clone()
    widths = {group: graph.group(group).width for group in mlp}
    for group in mlp:
        archgrow.grow(graph, group, 3)
    for group in heads:
        archgrow.grow(graph, group, 1)  # one more head: new q/k/v rows, zero output-projection columns
    with torch.no_grad():
        after = model(*inputs).last_hidden_state
    torch.testing.assert_close(after, before)
    assert all(graph.group(group).width == w + 3 for group, w in widths.items())
    assert all(graph.group(group).width == 3 for group in heads)
    if name in ("llama_gqa", "mistral", "qwen2"):  # one more key/value head, and its 2 query heads (of 8 channels each)
        attention = model.layers[0].self_attn
        assert attention.q_proj.weight.shape == (48, 32) and attention.k_proj.weight.shape == (24, 32)
        assert attention.v_proj.weight.shape == (24, 32) and attention.o_proj.weight.shape == (32, 48)
    if name == "gpt2":  # its split(self.split_size) follows the heads
        assert model.h[0].attn.split_size == 48 and model.h[0].attn.c_attn.weight.shape == (32, 144)

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = model(*inputs).last_hidden_state.pow(2).mean()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert graph.retrace().widths() == graph.widths()


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_transformers_grow_while_training_under_wrap(name: str) -> None:
    """archgrow.wrap on a transformer: a schedule grows the MLPs and the attention heads between
    Adam steps, with new units from the random initializer (NORTH-Select cannot measure heads:
    the binder says which groups and how to leave them out)."""
    model, inputs, mlp = _hf(name)
    ids = torch.randint(0, 100, (4, 8), generator=torch.Generator().manual_seed(3))
    with pytest.raises(archgrow.SpecError, match=r"frozen: true"):
        archgrow.wrap(model, {"defaults": {"max_width": "2x"}, "rules": [{"match": "*"}]}, inputs)
    spec = {
        "seed": 0,
        "defaults": {"max_width": "2x"},
        "rules": [{"match": "*", "trigger": {"kind": "linear_schedule", "final_width": "2x", "total_steps": 2}, "initializer": {"kind": "random"}}],
    }  # fmt: skip
    grown = archgrow.wrap(model, spec, inputs)
    widths = dict(grown.graph.widths())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    events = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = grown(ids).last_hidden_state.pow(2).mean()
        loss.backward()
        optimizer.step()
        events += grown.grow_step(optimizer)
        assert torch.isfinite(loss)
    heads = [g.name for g in grown.graph.groups if g.growable and g.name not in mlp and g.preserves_function]
    grew = {e.group for e in events}
    assert set(mlp) <= grew and set(heads) <= grew and heads, (grew, heads)
    now = {g: grown.graph.group(g).width for g in [*mlp, *heads]}
    assert all(now[g] > widths[g] for g in mlp), now  # one unit per step, after the schedule's start
    assert all(now[g] == 2 * widths[g] for g in heads), now  # 2 heads to 4 (2 k/v heads to 4 for GQA)


class ReadsTheStreamWidth(nn.Module):
    """CrossViT's cross-attention in miniature: the attention output is reshaped to the stream's
    width ``C``, read from the input's shape, which export records as a number."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.wv = nn.Linear(8, 8)
        self.hidden = nn.Linear(8, 6)
        self.out = nn.Linear(6 + 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        b, n, c = x.shape
        v = self.wv(x).reshape(b, n, 2, 4).transpose(1, 2)
        attended = v.transpose(1, 2).reshape(b, n, c)
        return self.out(torch.cat([F.relu(self.hidden(x)), attended], -1))


def test_export_capture_freezes_groups_whose_growth_breaks_the_forward() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5)
    fx_graph = archgrow.trace(ReadsTheStreamWidth(), x[:1], frontend="fx")
    assert "is used by node" in fx_graph.group("embed").reason  # fx sees the read of c
    model = ReadsTheStreamWidth()
    g = archgrow.trace(model, x[:1], frontend="export")
    embed = g.group("embed")
    assert not embed.growable and "breaks the model's own forward" in embed.reason and "frontend='fx'" in embed.reason
    assert g.group("hidden").growable  # the others still grow
    before = model(x)
    archgrow.grow(g, "hidden", 2)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
    assert g.widths()["embed"] == 8  # the check left nothing changed
    assert model.embed.out_features == 8 and model.wv.in_features == 8


class SizesInTheGraph(nn.Module):
    """Two dims sized alike in an export graph: ``from_shape`` reads the width from the tensor,
    ``written`` writes the number in the code; torch.export records both as the number 6."""

    def __init__(self, written: bool) -> None:
        super().__init__()
        self.written = written
        self.fc, self.out = nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)[:, None]
        if self.written:
            return self.out(y.expand(y.shape[0], 2, 6).reshape(y.shape[0] * 2, 6))
        return self.out(y.expand(y.shape[0], 2, y.shape[-1]).reshape(y.shape[0] * 2, y.shape[-1]))


@pytest.mark.parametrize("written", [False, True])
def test_export_takes_a_number_equal_to_a_width_as_read_from_it_and_the_check_decides(written: bool) -> None:
    """A number in an export graph equal to a growing dim's size may have been read from it:
    analysis lets the width grow through it, and the growth check freezes it where the code
    wrote the number (fx tells the two apart by itself)."""
    x = torch.randn(2, 5)
    torch.manual_seed(0)
    fx_fc = archgrow.trace(SizesInTheGraph(written), x[:1], frontend="fx").group("fc")
    assert fx_fc.growable != written
    if written:
        assert "hard-codes size 6" in fx_fc.reason
    model = SizesInTheGraph(written)
    fc = archgrow.trace(model, x[:1], frontend="export").group("fc")
    assert fc.growable != written
    if written:
        assert "breaks the model's own forward" in fc.reason and "frontend='fx'" in fc.reason
    else:
        before = model(x)
        archgrow.grow(fc.graph, "fc", 2)
        torch.testing.assert_close(model(x), before)
        assert model.out.in_features == 8


class RowsOfSix(nn.Module):
    """``reshape(-1, 6)`` with 6 written in the code: after growth the ``-1`` would absorb the new
    channels as more rows and the output keep its shape, which the growth check cannot see."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).reshape(-1, 6).softmax(-1).amax(-1).sum()[None]


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_number_beside_a_minus_one_is_never_taken_as_read(frontend: str) -> None:
    torch.manual_seed(0)
    fc = archgrow.trace(RowsOfSix(), torch.randn(1, 6, 5), frontend=frontend).group("fc")
    assert not fc.growable and "hard-codes size 6" in fc.reason


class AutocastRegion(nn.Module):
    """EfficientViT's LiteMLA: part of the forward runs inside ``torch.autocast(enabled=False)``,
    which export records as a higher-order op around a region."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(5, 8), nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.fc1(x))
        with torch.autocast(device_type="cpu", enabled=False):
            y = F.relu(self.fc2(y.float()))
        return self.out(y)


def test_export_inlines_mode_regions() -> None:
    torch.manual_seed(0)
    model = AutocastRegion()
    x = torch.randn(2, 5)
    g = archgrow.trace(model, x[:1], frontend="export")
    assert g.group("fc1").growable and g.group("fc2").growable
    before = model(x)
    archgrow.grow(g, "fc2", 2)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda t: self.fc(t), lambda t: self.fc(-t), (x,))


def test_export_refuses_control_flow_ops_by_name() -> None:
    with pytest.raises(TraceError, match="higher-order op 'cond'.*leaf"):
        archgrow.trace(Branches(), torch.randn(1, 5), frontend="export")
