"""Attention widths: whole heads and head dims through ``reshape`` into ``(..., heads, head_dim)``.

A width reshaped into ``(heads, head_dim)`` grows by whole heads when the head count follows
growth (``-1`` or ``self.num_heads``): q, k and v rows per head and the output projection's
columns, new heads with zero output columns changing nothing.  When only the head dim follows
growth (``view(B, N, heads, -1)``), every head grows by the same amount (an equal split); q and k
are summed over it, so that growth does not preserve the function.  Each growable case goes
through :func:`check_growth` (function kept where claimed, training steps, re-trace agrees).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_topologies import check_growth, member, names, trace
from torch import nn

import archgrow

TOKENS = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread: None) -> None:
    """Tiny models: see the conftest's ``one_thread``."""


class PackedAttention(nn.Module):
    """timm's Attention: one ``qkv`` Linear reshaped into ``(3, heads, head_dim)``."""

    def __init__(self, dim: int = 12, num_heads: int = 3, fused: bool = True, head_dim: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.fused = num_heads, head_dim, fused
        self.attn_dim = num_heads * head_dim
        self.scale = head_dim**-0.5
        self.inp = nn.Linear(dim, dim)
        self.qkv = nn.Linear(dim, 3 * self.attn_dim)
        self.proj = nn.Linear(self.attn_dim, dim)
        self.out = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            y = attn.softmax(dim=-1) @ v
        y = y.transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.out(x + self.proj(y))


@pytest.mark.parametrize("fused", [True, False])
def test_packed_qkv_grows_whole_heads(fused: bool) -> None:
    g = trace(lambda: PackedAttention(fused=fused), TOKENS)
    heads = g.group("qkv")
    assert heads.width == 3 and heads.step == 1 and heads.growable and heads.preserves_function
    assert names(heads.producers) == {"qkv"} and names(heads.consumers) == {"proj"}
    assert g.group("inp").growable
    check_growth(lambda: PackedAttention(fused=fused), TOKENS, ["inp", "qkv"])


def test_packed_qkv_heads_update_attributes() -> None:
    torch.manual_seed(0)
    model = PackedAttention()
    g = archgrow.trace(model, TOKENS[:1])
    archgrow.grow(g, "qkv", 2)
    assert (model.num_heads, model.head_dim, model.attn_dim) == (5, 4, 20)
    assert model.qkv.weight.shape == (60, 12) and model.proj.weight.shape == (12, 20)
    assert model(TOKENS).shape == (2, 5, 2)


class SeparateQKV(nn.Module):
    """A hand-written MHA: separate q, k, v Linears, heads from ``-1`` (HF style) or a head dim from ``-1``."""

    def __init__(self, dim: int = 12, heads: int = 3, grow: str = "heads") -> None:
        super().__init__()
        self.nh, self.grow = heads, grow  # not a size attribute: the 3 in view(B, N, 3, -1) stays fixed
        self.head_dim = dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 2)

    def split(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        if self.grow == "heads":
            return t.view(B, N, -1, self.head_dim).transpose(1, 2)
        return t.view(B, N, 3, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        y = F.scaled_dot_product_attention(q, k, v)
        y = y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.out(self.o(y) + x)


def test_separate_qkv_heads() -> None:
    g = trace(SeparateQKV, TOKENS)
    heads = g.group("q")
    assert names(heads.producers) == {"q", "k", "v"} and names(heads.consumers) == {"o"}
    assert heads.width == 3 and heads.growable and heads.preserves_function
    check_growth(SeparateQKV, TOKENS, ["q"])


def test_separate_qkv_head_dim() -> None:
    g = trace(lambda: SeparateQKV(grow="head_dim"), TOKENS)
    qk = g.group("q")
    assert names(qk.producers) == {"q", "k"} and qk.width == 4 and qk.growable
    assert not qk.preserves_function and "sums" in " ".join(qk.not_preserving_reasons)
    v = g.group("v")  # v's head dim only reaches the output projection: new zero columns keep the function
    assert v.width == 4 and v.growable and v.preserves_function
    check_growth(lambda: SeparateQKV(grow="head_dim"), TOKENS, ["q", "v"])


def test_a_head_dim_of_c_over_one_head_is_the_width_itself() -> None:
    class OneHead(SeparateQKV):
        """PVT/Twins' first stage: ``C // self.num_heads`` with one head, C read from the input."""

        def __init__(self) -> None:
            super().__init__(heads=1)
            self.num_heads = 1

        def split(self, t: torch.Tensor) -> torch.Tensor:
            B, N, C = t.shape
            return t.view(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

    g = trace(OneHead, TOKENS)
    qk, v = g.group("q"), g.group("v")  # C // 1 is each projection's own width
    assert qk.growable and names(qk.producers) == {"q", "k"} and not qk.preserves_function
    assert v.growable and v.preserves_function
    check_growth(OneHead, TOKENS, ["q", "v"])


def test_hard_coded_head_split_freezes_with_reason() -> None:
    class Fixed(SeparateQKV):
        def split(self, t: torch.Tensor) -> torch.Tensor:
            return t.view(t.shape[0], t.shape[1], 6, 2).transpose(1, 2)  # no attribute is 6 or 2

    g = trace(Fixed, TOKENS)
    q = g.group("q")
    assert not q.growable and "(..., heads, head_dim)" in q.reason and "-1" in q.reason


class MultiQuery(nn.Module):
    """Multi-query attention as MobileNetV4 writes it: ``num_heads`` query heads over one shared
    key/value head (broadcast by SDPA), the heads merged back with the value dim read from the
    tensor: ``reshape(B, N, o.shape[-1] * self.num_heads)``."""

    def __init__(self, dim: int = 12, num_heads: int = 3, key_dim: int = 4, value_dim: int = 5) -> None:
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.inp = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, num_heads * key_dim)
        self.key = nn.Linear(dim, key_dim)
        self.value = nn.Linear(dim, value_dim)
        self.output = nn.Linear(num_heads * value_dim, dim)
        self.out = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        B, N, _ = x.shape
        q = self.query(x).reshape(B, N, self.num_heads, self.key_dim).transpose(1, 2)
        k, v = self.key(x).unsqueeze(1), self.value(x).unsqueeze(1)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        o = o.reshape(B, N, o.shape[-1] * self.num_heads)
        return self.out(x + self.output(o))


def test_multi_query_attention_grows_query_heads() -> None:
    g = trace(MultiQuery, TOKENS)
    heads = g.group("query")
    assert heads.width == 3 and heads.growable and heads.preserves_function
    assert names(heads.consumers) == {"output"}
    # the shared key is tied to the fixed head dim of the queries; the value dim is merged into
    # the heads and can only be copied whole per head
    assert not g.group("key").growable and "fixed-size" in g.group("key").reason
    value = g.group("value")
    assert not value.growable and "merges this width into 'query" in value.reason
    check_growth(MultiQuery, TOKENS, ["inp", "query"])
    torch.manual_seed(0)
    model = MultiQuery()
    archgrow.grow(archgrow.trace(model, TOKENS[:1]), "query", 2)
    assert model.num_heads == 5 and model.output.weight.shape == (12, 25)


class GroupedQuery(nn.Module):
    """Grouped-query attention (Llama, Mistral, Qwen2): 4 query heads share 2 key/value heads,
    each k and v head repeated for its 2 query heads by ``mode``: ``expand`` then ``reshape`` with
    sizes read from k (HuggingFace's ``repeat_kv``), ``repeat_interleave``, or
    ``F.scaled_dot_product_attention(..., enable_gqa=True)``."""

    def __init__(self, mode: str, dim: int = 12, num_kv_heads: int = 2, queries_per_kv: int = 2, head_dim: int = 3):
        super().__init__()
        self.mode, self.head_dim, self.queries_per_kv = mode, head_dim, queries_per_kv
        self.inp = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, num_kv_heads * queries_per_kv * head_dim)
        self.key = nn.Linear(dim, num_kv_heads * head_dim)
        self.value = nn.Linear(dim, num_kv_heads * head_dim)
        self.output = nn.Linear(num_kv_heads * queries_per_kv * head_dim, dim)
        self.out = nn.Linear(dim, 2)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.view(B, N, -1, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        n = self.queries_per_kv
        if self.mode == "expand":
            B, H, N, D = k.shape
            k = k[:, :, None].expand(B, H, n, N, D).reshape(B, H * n, N, D)
            v = v[:, :, None].expand(B, H, n, N, D).reshape(B, H * n, N, D)
        elif self.mode == "repeat_interleave":
            k, v = k.repeat_interleave(n, dim=1), v.repeat_interleave(n, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, enable_gqa=self.mode == "enable_gqa")
        return self.out(x + self.output(o.transpose(1, 2).flatten(2)))


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("mode", ["expand", "repeat_interleave", "enable_gqa"])
def test_grouped_query_attention_grows_key_value_heads_with_their_query_heads(mode: str, frontend: str) -> None:
    """One more k/v head brings its 2 query heads: the group counts k/v heads, its query rows and
    output columns come in blocks of 2 heads.  (With ``enable_gqa`` the query heads used to form a
    group of their own, whose growth broke the forward: k and v must divide them.)"""

    def make() -> GroupedQuery:
        return GroupedQuery(mode)

    g = trace(make, TOKENS[:1], frontend=frontend)
    heads = g.group("query")
    assert heads.width == 2 and heads.growable and heads.preserves_function, heads.reason
    assert names(heads.members) == {"query", "key", "value", "output"}
    assert member(heads.members, "query").slots == (archgrow.Slot(0, 6),)  # 2 query heads of 3 per k/v head
    assert member(heads.members, "key").slots == (archgrow.Slot(0, 3),)
    check_growth(make, TOKENS, ["inp", "query"], frontend=frontend)
    torch.manual_seed(0)
    model = make()
    archgrow.grow(archgrow.trace(model, TOKENS[:1], frontend=frontend), "query", 1)
    assert model.query.weight.shape == (18, 12) and model.key.weight.shape == (9, 12)
    assert model.output.weight.shape == (12, 18)


def test_repeats_given_as_a_tensor_have_no_width_rule() -> None:
    class Repeats(GroupedQuery):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.inp(x)
            q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
            repeats = torch.full((k.shape[1],), self.queries_per_kv)
            k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
            o = F.scaled_dot_product_attention(q, k, v)
            return self.out(x + self.output(o.transpose(1, 2).flatten(2)))

    g = trace(lambda: Repeats("tensor"), TOKENS[:1])
    key = g.group("key")
    assert not key.growable and any("repeats given as a tensor" in r for r in key.reasons), key.reasons
    assert not g.group("query").growable


def test_merging_a_width_into_a_product_with_a_hard_coded_number_freezes() -> None:
    class Hard(MultiQuery):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.inp(x)
            B, N, _ = x.shape
            q = self.query(x).reshape(B, N, self.num_heads, self.key_dim).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, self.key(x).unsqueeze(1), self.value(x).unsqueeze(1))
            return self.out(x + self.output(o.transpose(1, 2).reshape(B, N, 15)))

    g = trace(Hard, TOKENS)
    assert not g.group("query").growable and "hard-codes size 15" in g.group("query").reason


class HeadsInBatch(nn.Module):
    """BoTNet's attention: q, k, v cut from one conv at ``self.dim_out_qk``, each reshaped with
    its heads merged into the batch, ``reshape(B * self.num_heads, self.dim_head_qk, -1)``."""

    def __init__(self, dim: int = 6, num_heads: int = 2, dim_head: int = 3) -> None:
        super().__init__()
        self.num_heads, self.dim_head_qk, self.dim_head_v = num_heads, dim_head, dim_head
        self.dim_out_qk = self.dim_out_v = num_heads * dim_head
        self.inp = nn.Conv2d(3, dim, 1)
        self.qkv = nn.Conv2d(dim, 3 * self.dim_out_qk, 1)
        self.out = nn.Conv2d(self.dim_out_v, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        B, _, H, W = x.shape
        q, k, v = torch.split(self.qkv(x), [self.dim_out_qk, self.dim_out_qk, self.dim_out_v], dim=1)
        q = q.reshape(B * self.num_heads, self.dim_head_qk, -1).transpose(-1, -2)
        k = k.reshape(B * self.num_heads, self.dim_head_qk, -1)
        v = v.reshape(B * self.num_heads, self.dim_head_v, -1).transpose(-1, -2)
        attn = (q @ k).softmax(dim=-1)
        return self.out((attn @ v).transpose(-1, -2).reshape(B, self.dim_out_v, H, W))


def test_heads_merged_into_the_batch_grow_their_head_dims() -> None:
    image = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    g = trace(HeadsInBatch, image[:1])  # seen as such with a batch of one only: B * heads is then heads
    qk, v = g.group("qkv[0]"), g.group("qkv[1]")
    assert {qk.width, v.width} == {3} and qk.growable and v.growable
    assert not qk.preserves_function and v.preserves_function  # q . k sums over the head dim
    check_growth(HeadsInBatch, image, ["inp", "qkv[0]", "qkv[1]"])
    torch.manual_seed(0)
    model = HeadsInBatch()
    graph = archgrow.trace(model, image[:1])
    archgrow.grow(graph, "qkv[1]", 1)  # every head's value dim: 2 heads x 4
    assert (model.dim_head_v, model.dim_out_v, model.dim_out_qk) == (4, 8, 6)
    assert model(image).shape == (2, 4, 4, 4)


class ChannelsLastHeads(nn.Module):
    """timm's MaxViT attention (channels last): heads split with ``view(B, -1, heads, 3 * dim_head)``
    and merged back with a shape built from the input's, ``reshape(x.shape[:-1] + (-1,))``."""

    def __init__(self, dim: int = 6, num_heads: int = 2, dim_head: int = 3, last: str = "-1") -> None:
        super().__init__()
        self.num_heads, self.dim_head, self.last = num_heads, dim_head, last
        self.merged = num_heads * dim_head  # no size-attribute name: read only as written
        self.inp = nn.Linear(3, dim)
        self.qkv = nn.Linear(dim, 3 * num_heads * dim_head)
        self.proj = nn.Linear(num_heads * dim_head, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)  # B, H, W, C
        B = x.shape[0]
        restore = x.shape[:-1]
        q, k, v = self.qkv(x).view(B, -1, self.num_heads, self.dim_head * 3).transpose(1, 2).chunk(3, dim=3)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        tail = {"-1": -1, "attribute": self.merged, "number": 6}[self.last]
        return self.proj(y.reshape(restore + (tail,)))


def test_a_shape_built_from_the_input_shape_follows_growth() -> None:
    grid = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(3))
    g = trace(ChannelsLastHeads, grid)
    heads = g.group("qkv")
    assert heads.width == 2 and heads.growable and heads.preserves_function
    check_growth(ChannelsLastHeads, grid, ["inp", "qkv"])
    check_growth(lambda: ChannelsLastHeads(last="attribute"), grid, ["inp", "qkv"])  # merged rewritten

    g = trace(lambda: ChannelsLastHeads(last="number"), grid)  # the merged size written as a number
    assert not g.group("qkv").growable and "hard-codes size 6" in g.group("qkv").reason


class MHABlock(nn.Module):
    """``nn.MultiheadAttention`` between two Linears: its embedding grows by whole heads."""

    def __init__(self, batch_first: bool = True, weights: bool = False) -> None:
        super().__init__()
        self.weights = weights
        self.inp = nn.Linear(12, 8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        y, w = self.mha(h, h, h, need_weights=self.weights)
        if self.weights:
            y = y + w.sum(-1, keepdim=True)
        return self.out(y + h)


def test_multihead_attention_grows_whole_heads() -> None:
    g = trace(MHABlock, TOKENS)
    embed = g.group("inp")
    assert embed.width == 2 and embed.step == 1 and embed.growable and embed.preserves_function
    assert names(embed.producers) >= {"inp", "mha"} and names(embed.consumers) >= {"mha", "out"}
    check_growth(MHABlock, TOKENS, ["inp"])
    torch.manual_seed(0)
    model = MHABlock()
    g = archgrow.trace(model, TOKENS[:1])
    archgrow.grow(g, "inp", 1)
    mha = model.mha
    assert (mha.num_heads, mha.head_dim, mha.embed_dim) == (3, 4, 12)
    assert mha.in_proj_weight.shape == (36, 12) and mha.out_proj.weight.shape == (12, 12)


def test_multihead_attention_averaged_weights_change() -> None:
    g = trace(lambda: MHABlock(weights=True), TOKENS)
    embed = g.group("inp")
    assert embed.growable and not embed.preserves_function and "averaged" in " ".join(embed.not_preserving_reasons)
    check_growth(lambda: MHABlock(weights=True), TOKENS, ["inp"])


class WindowBlock(nn.Module):
    """Swin's windowed attention: windows cut from (B, H, W, C), a relative position bias table
    gathered by an index buffer and added per head, the channels padded by zeros only."""

    def __init__(self, dim: int = 8, num_heads: int = 2, window: int = 2) -> None:
        super().__init__()
        self.num_heads, self.window = num_heads, window
        self.stem = nn.Conv2d(3, dim, 1)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, num_heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * window - 1) + rel[..., 1])
        self.head = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).permute(0, 2, 3, 1)
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, 0, 0, 0))
        w = self.window
        win = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)
        B_, N, _ = win.shape
        qkv = self.qkv(win).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        attn = (q @ k.transpose(-2, -1)) + bias.permute(2, 0, 1).unsqueeze(0)
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B_, N, -1)
        y = self.proj(y).view(B, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
        return self.head((x + y).mean((1, 2)))


def test_windowed_attention_heads_and_position_bias() -> None:
    img = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    g = trace(WindowBlock, img)
    heads = g.group("qkv")
    assert heads.width == 2 and heads.growable and heads.preserves_function
    assert "relative_position_bias_table" in names(heads.followers)
    assert g.group("stem").growable  # the zero padding of the channels does not freeze them
    check_growth(WindowBlock, img, ["stem", "qkv"])


def test_timm_vit_heads_and_stream_grow() -> None:
    timm = pytest.importorskip("timm")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=4)
    g = archgrow.trace(model, x[:1])
    growable = sorted(grp.name for grp in g.groups if grp.growable)
    assert growable == ["blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.1.attn.qkv", "blocks.1.mlp.fc1", "patch_embed.proj"]
    assert not g.group("patch_embed.proj").preserves_function  # the residual stream, through LayerNorms
    model.eval()
    with torch.no_grad():
        before = model(x)
    archgrow.grow(g, "blocks.0.attn.qkv", 1)
    attn = model.blocks[0].attn
    assert (attn.num_heads, attn.head_dim, attn.attn_dim) == (4, 64, 256)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)
    archgrow.grow(g, "patch_embed.proj", 1)
    model.train()
    model(x).sum().backward()
    assert g.retrace().widths() == g.widths()


def test_size_attribute_kinds_are_checked_at_registration():
    from archgrow.errors import RegistrationError
    from archgrow.ops.context import register_size_attribute

    with pytest.raises(RegistrationError, match=r"register_size_attribute\('n_groups'\): kind must be one of"):
        register_size_attribute("n_groups", "groups")


def test_a_pattern_selecting_heads_a_strategy_cannot_measure_says_how_to_leave_them_out() -> None:
    """NORTH-Select measures a group's channels in its producer's output; heads are blocks of it.
    The binder names the groups a pattern selected that the kinds rule out, and the rule to add."""
    torch.manual_seed(0)
    with pytest.raises(archgrow.SpecError) as caught:
        archgrow.wrap(PackedAttention(), {"rules": [{"match": "*", "initializer": {"kind": "select"}}]}, TOKENS[:1])
    message = str(caught.value)
    assert "group 'qkv' cannot be measured" in message
    assert "patterns select 1 group(s) the problems above rule out (qkv)" in message
    assert "{match: 'qkv', frozen: true}" in message
    with pytest.raises(archgrow.SpecError) as caught:  # a cap below the width is no question of kinds
        archgrow.wrap(PackedAttention(), {"rules": [{"match": "*", "initializer": {"kind": "random"}, "max_width": 2}]}, TOKENS[:1])
    assert "below group" in str(caught.value) and "patterns select" not in str(caught.value)
    spec = {"rules": [{"match": "*", "initializer": {"kind": "select"}}, {"match": "qkv", "frozen": True}]}
    grown = archgrow.wrap(PackedAttention(), spec, TOKENS[:1])  # the way out the message gives
    assert "qkv" not in grown.growing and "inp" in grown.growing


def test_repeat_interleave_with_a_written_output_size_freezes() -> None:
    class Sized(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(12, 4), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x).repeat_interleave(2, dim=-1, output_size=8))

    a = trace(Sized, TOKENS[:1]).group("a")
    assert not a.growable and "output_size=8" in a.reason


def test_one_key_value_head_under_enable_gqa_is_broadcast_and_the_query_heads_grow() -> None:
    def make() -> GroupedQuery:
        return GroupedQuery("enable_gqa", num_kv_heads=1, queries_per_kv=4)

    g = trace(make, TOKENS[:1])
    assert g.group("query").growable and g.group("query").preserves_function, g.group("query").reason
    assert not g.group("key").growable  # one head: a size-1 dim, which cannot be told from no dim
    check_growth(make, TOKENS, ["inp", "query"])


def test_key_value_head_count_attributes_follow_growth() -> None:
    """Meta's Llama writes ``view(B, N, self.n_kv_heads, self.head_dim)``."""

    class Named(GroupedQuery):
        def __init__(self) -> None:
            super().__init__("enable_gqa")
            self.n_kv_heads = 2

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.inp(x)
            B, N, _ = x.shape
            q = self._heads(self.query(x))
            k = self.key(x).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)
            v = self.value(x).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            return self.out(x + self.output(o.transpose(1, 2).flatten(2)))

    g = trace(Named, TOKENS[:1], frontend="fx")
    assert g.group("query").growable and g.group("query").width == 2, g.group("query").reason
    torch.manual_seed(0)
    model = Named()
    archgrow.grow(archgrow.trace(model, TOKENS[:1]), "query", 1)
    assert model.n_kv_heads == 3 and model.key.weight.shape == (9, 12)
