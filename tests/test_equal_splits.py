"""Equal splits along a width (``chunk``, ``tensor_split``, ``split(x.size(d) // n)``, GLU).

The parts of an equal split form one group: a group unit is one channel of *every* part, so the
producer grows by ``n`` channels per unit, each part's new channels at the end of its own slice
(as ``cat`` does for its consumers).  Sizes written in the code, unequal parts and ``unbind``
freeze with a reason saying what would be accepted.  Splits along the batch or a spatial dim keep
working as before.  Each growable case also goes through :func:`check_growth` (function kept,
training steps after growth, re-trace agrees).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_topologies import IMG, check_growth, member, names, trace
from torch import nn

import archgrow
from archgrow import Slot


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread: None) -> None:
    """Tiny models: see the conftest's ``one_thread``."""


def grown_rows(before: torch.Tensor, after: torch.Tensor, part: int, k: int, n: int, dim: int = 0) -> None:
    """``after`` is ``before`` with ``k`` entries inserted at the end of each of its ``n`` parts of ``part``."""
    assert after.shape[dim] == before.shape[dim] + n * k
    for i in range(n):
        old = before.narrow(dim, i * part, part)
        assert torch.equal(after.narrow(dim, i * (part + k), part), old), f"part {i} moved"


def new_entries(t: torch.Tensor, part: int, k: int, n: int, dim: int = 0) -> torch.Tensor:
    """The entries growth inserted: ``k`` at the end of each of the ``n`` grown parts."""
    return torch.cat([t.narrow(dim, i * (part + k) + part, k) for i in range(n)], dim)


# --------------------------------------------------------------------------- GLU


class GLUBlock(nn.Module):
    def __init__(self, how: str = "chunk", d: int = 6, h: int = 5) -> None:
        super().__init__()
        self.how = how
        self.fc1 = nn.Linear(d, 2 * h)
        self.glu = nn.GLU(-1)
        self.fc2 = nn.Linear(h, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc1(x)
        if self.how == "chunk":
            a, b = y.chunk(2, dim=-1)
            y = a * torch.sigmoid(b)
        elif self.how == "F.glu":
            y = F.glu(y, dim=-1)
        else:
            y = self.glu(y)
        return x + self.fc2(y)


X = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("how", ["chunk", "F.glu", "nn.GLU"])
def test_glu_block(how: str) -> None:
    g = trace(lambda: GLUBlock(how), X[:1])
    fc1 = g.group("fc1")
    assert fc1.growable and fc1.preserves_function and fc1.width == 5
    assert member(fc1.producers, "fc1").slots == (Slot(0, 1), Slot(5, 1))  # the gate and the value
    assert member(fc1.consumers, "fc2").slots == (Slot(0, 1),)
    check_growth(lambda: GLUBlock(how), X, ["fc1"])


def test_glu_new_channels_sit_at_the_end_of_each_half() -> None:
    torch.manual_seed(0)
    model = GLUBlock().eval()
    g = archgrow.trace(model, X[:1])
    w1, b1, w2 = model.fc1.weight.detach().clone(), model.fc1.bias.detach().clone(), model.fc2.weight.detach().clone()
    before = model(X)
    archgrow.grow(g, "fc1", 2)
    assert model.fc1.out_features == 14 and model.fc2.in_features == 7  # 2 per unit in fc1, 1 in fc2
    grown_rows(w1, model.fc1.weight.detach(), 5, 2, 2)
    grown_rows(b1, model.fc1.bias.detach(), 5, 2, 2)
    assert new_entries(model.fc1.weight.detach(), 5, 2, 2).abs().sum() > 0  # fresh fan-in
    assert not new_entries(model.fc1.bias.detach(), 5, 2, 2).any()
    grown_rows(w2, model.fc2.weight.detach(), 5, 2, 1, dim=1)
    assert not new_entries(model.fc2.weight.detach(), 5, 2, 1, dim=1).any()  # zero fan-out
    torch.testing.assert_close(model(X), before, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- CSP block


class CSPBlock(nn.Module):
    """conv -> chunk(2): one half through conv + relu, concatenated with the other -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.inner = nn.Conv2d(4, 6, 3, padding=1)
        self.out = nn.Conv2d(10, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = F.relu(self.bn(self.stem(x))).chunk(2, dim=1)
        y = torch.cat([a, F.relu(self.inner(b))], dim=1)
        return self.out(y).mean((2, 3))


def test_csp_block() -> None:
    g = trace(CSPBlock, IMG)
    stem = g.group("stem")
    assert stem.growable and stem.width == 4
    assert member(stem.producers, "stem").slots == (Slot(0, 1), Slot(4, 1))
    assert member(stem.followers, "bn").slots == (Slot(0, 1), Slot(4, 1))
    assert names(stem.consumers) == {"inner", "out"}
    assert member(stem.consumers, "out").slots == (Slot(0, 1),)  # the half that skips the block
    assert member(g.group("inner").consumers, "out").slots == (Slot(4, 1),)
    check_growth(CSPBlock, IMG, ["stem", "inner"])

    torch.manual_seed(0)
    model = CSPBlock()
    g = archgrow.trace(model, IMG[:1])
    w, mean, w_out = (
        model.stem.weight.detach().clone(),
        model.bn.running_mean.clone(),
        model.out.weight.detach().clone(),
    )
    archgrow.grow(g, "stem", 3)
    assert model.stem.out_channels == 14 and model.inner.in_channels == 7 and model.out.in_channels == 13
    grown_rows(w, model.stem.weight.detach(), 4, 3, 2)
    grown_rows(mean, model.bn.running_mean, 4, 3, 2)
    # out reads [a | inner(b)]: a's new channels come right after a's old ones, inner's stay put
    assert torch.equal(model.out.weight[:, :4], w_out[:, :4]) and torch.equal(model.out.weight[:, 7:], w_out[:, 4:])
    assert not model.out.weight[:, 4:7].any()
    assert not model.inner.weight[:, 4:].any() and model.inner.weight.shape[1] == 7


# --------------------------------------------------------------------------- Res2Net


class Res2Block(nn.Module):
    """1x1 conv, split into 4 equal parts, a hierarchical chain of 3x3 convs, concat, 1x1 conv."""

    def __init__(self, how: str = "split", width: int = 3, scale: int = 4) -> None:
        super().__init__()
        self.how = how
        self.scale = scale
        self.reduce = nn.Conv2d(3, width * scale, 1)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(scale - 1))
        self.expand = nn.Conv2d(width * scale, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.reduce(x))
        if self.how == "split":
            parts = torch.split(y, y.size(1) // self.scale, 1)
        elif self.how == "tensor_split":
            parts = torch.tensor_split(y, self.scale, dim=1)
        else:
            parts = y.chunk(self.scale, 1)
        outs = []
        sp = parts[0]
        for i, conv in enumerate(self.convs):
            if i > 0:
                sp = sp + parts[i]
            sp = F.relu(conv(sp))
            outs.append(sp)
        outs.append(parts[-1])
        return self.expand(torch.cat(outs, 1)).mean((2, 3))


@pytest.mark.parametrize("how", ["split", "tensor_split", "chunk"])
def test_res2net_hierarchical_split(how: str) -> None:
    g = trace(lambda: Res2Block(how), IMG)
    reduce = g.group("reduce")
    assert reduce.growable and reduce.width == 3
    assert member(reduce.producers, "reduce").slots == tuple(Slot(3 * i, 1) for i in range(4))
    # each conv's output is added to the next part: the chain shares the parts' width
    assert names(reduce.producers) == {"reduce", "convs.0", "convs.1"}
    assert member(reduce.consumers, "expand").slots == (Slot(0, 1), Slot(3, 1), Slot(9, 1))
    check_growth(lambda: Res2Block(how), IMG, ["reduce", "convs.2"])

    torch.manual_seed(0)
    model = Res2Block(how)
    g = archgrow.trace(model, IMG[:1])
    w = model.reduce.weight.detach().clone()
    archgrow.grow(g, "reduce", 2)
    assert model.reduce.out_channels == 20 and model.expand.in_channels == 18
    grown_rows(w, model.reduce.weight.detach(), 3, 2, 4)


# --------------------------------------------------------------------------- sizes in the code


class Halves(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c1 = nn.Conv2d(3, 8, 1)
        first = 3 if how in ("split([3, 5])", "tensor_split([3])") else 4
        self.ca = nn.Conv2d(first, 5, 1)
        self.cb = nn.Conv2d(8 - first, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        how = self.how
        if how == "split(size(1) // 2)":
            a, b = torch.split(y, y.size(1) // 2, dim=1)
        elif how == "split([c // 2, c // 2])":
            c = y.shape[1]
            a, b = y.split([c // 2, c // 2], 1)
        elif how == "tensor_split(2)":
            a, b = torch.tensor_split(y, 2, dim=1)
        elif how == "split(4)":
            a, b = torch.split(y, 4, dim=1)
        elif how == "split([4, 4])":
            a, b = y.split([4, 4], dim=1)
        elif how == "split([3, 5])":
            a, b = torch.split(y, [3, 5], dim=1)
        else:
            a, b = torch.tensor_split(y, [3], dim=1)
        return (self.ca(a) * self.cb(b)).mean((2, 3))


@pytest.mark.parametrize("how", ["split(size(1) // 2)", "split([c // 2, c // 2])", "tensor_split(2)"])
def test_split_sizes_that_follow_growth(how: str) -> None:
    g = trace(lambda: Halves(how), IMG)
    c1 = g.group("c1")
    assert c1.growable and c1.width == 4
    assert member(c1.producers, "c1").slots == (Slot(0, 1), Slot(4, 1))
    assert names(c1.consumers) == {"ca", "cb"}
    check_growth(lambda: Halves(how), IMG, ["c1"])


@pytest.mark.parametrize(
    ("how", "given"),
    [
        ("split(4)", "split size 4"),
        ("split([4, 4])", "split sizes [4, 4]"),
        ("split([3, 5])", "split sizes [3, 5]"),
        ("tensor_split([3])", "split points [3]"),
    ],
)
def test_split_sizes_written_in_the_code_freeze(how: str, given: str) -> None:
    g = trace(lambda: Halves(how), IMG)
    c1 = g.group("c1")
    assert not c1.growable
    assert given in c1.reason and "would not follow growth" in c1.reason
    assert "x.chunk(n, dim)" in c1.reason and "x.split(x.size(dim) // n, dim)" in c1.reason  # what is accepted
    assert "node '" in c1.reason  # where
    check_growth(lambda: Halves(how), IMG, [])


class Thirds(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.c2 = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.c1(x).chunk(3, dim=1)  # 3 + 3 + 2
        return self.c2(torch.cat([c, b, a], 1))


def test_unequal_chunks_freeze() -> None:
    c1 = trace(Thirds, IMG).group("c1")
    assert not c1.growable and "parts of sizes [3, 3, 2], not 3 equal parts" in c1.reason


class Unbind(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.c1 = nn.Conv2d(3, 4, 1)
        self.c2 = nn.Conv2d(4, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        return self.c2(torch.stack(y.unbind(self.dim)[::-1], self.dim))


def test_unbind() -> None:
    c1 = trace(lambda: Unbind(1), IMG).group("c1")
    assert not c1.growable and "one tensor per channel" in c1.reason and "x.chunk(n, dim)" in c1.reason
    g = trace(lambda: Unbind(2), IMG)  # along a spatial dim: nothing to freeze
    assert g.group("c1").growable
    check_growth(lambda: Unbind(2), IMG, ["c1"])


# --------------------------------------------------------------------------- other dims


class OtherDim(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.c1 = nn.Conv2d(3, 8, 1)
        self.c2 = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.c1(x).chunk(2, self.dim)
        return self.c2(F.relu(torch.cat([b, a], self.dim)))


@pytest.mark.parametrize("dim", [0, 2, -1])
def test_chunk_along_batch_or_space_is_unaffected(dim: int) -> None:
    g = trace(lambda: OtherDim(dim), IMG)  # the batch of two: chunk(2, 0) needs it
    c1 = g.group("c1")
    assert c1.growable and c1.width == 8
    assert member(c1.producers, "c1").slots == (Slot(0, 1),)
    assert member(c1.consumers, "c2").slots == (Slot(0, 1),)
    if dim != 0:
        check_growth(lambda: OtherDim(dim), IMG, ["c1"])


# --------------------------------------------------------------------------- ties, nesting, groups


class ChunkedResidual(nn.Module):
    """Both orders of "a split width is tied to an unsplit one": before and after the split."""

    def __init__(self, order: str) -> None:
        super().__init__()
        self.order = order
        self.c1 = nn.Conv2d(3, 8, 1)
        self.skip = nn.Conv2d(3, 8, 1)
        self.ca = nn.Conv2d(4, 5, 1)
        self.cb = nn.Conv2d(4, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order == "add first":
            a, b = (self.c1(x) + self.skip(x)).chunk(2, 1)
            return (self.ca(a) + self.cb(b)).mean((2, 3))
        a, b = self.c1(x).chunk(2, 1)
        y = torch.cat([a, b], 1) + self.skip(x)
        return (self.ca(a) + self.cb(b) + y.mean(1, keepdim=True)).mean((2, 3))


@pytest.mark.parametrize("order", ["add first", "split first"])
def test_split_width_tied_to_another(order: str) -> None:
    g = trace(lambda: ChunkedResidual(order), IMG)
    c1 = g.group("c1")
    assert c1.growable and c1.width == 4
    assert member(c1.producers, "c1").slots == (Slot(0, 1), Slot(4, 1))
    assert member(c1.producers, "skip").slots == (Slot(0, 1), Slot(4, 1))
    check_growth(lambda: ChunkedResidual(order), IMG, ["c1"])


class NestedChunks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.heads = nn.ModuleList(nn.Conv2d(2, 5, 1) for _ in range(4))
        self.c2 = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        a, b = y.chunk(2, 1)
        a1, a2 = a.chunk(2, 1)
        b1, b2 = torch.chunk(b, 2, 1)
        quarters = [a1, a2, b1, b2]
        z = torch.cat(quarters[::-1], 1).chunk(2, 1)[1]  # halves of a concat of quarters: tied
        out = sum(h(q) for h, q in zip(self.heads, quarters, strict=True))
        return (out + self.c2(torch.cat([z, z], 1))).mean((2, 3))


def test_nested_chunks() -> None:
    g = trace(NestedChunks, IMG)
    c1 = g.group("c1")
    assert c1.growable and c1.width == 2
    assert member(c1.producers, "c1").slots == tuple(Slot(2 * i, 1) for i in range(4))
    check_growth(NestedChunks, IMG, ["c1"])


class NormBeforeChunk(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, channels, 1)
        self.gn = nn.GroupNorm(groups, channels)
        self.ca = nn.Conv2d(channels // 2, 5, 1)
        self.cb = nn.Conv2d(channels // 2, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.gn(self.c1(x)).chunk(2, 1)
        return (self.ca(a) * self.cb(b)).mean((2, 3))


@pytest.mark.parametrize(("channels", "groups", "step"), [(8, 4, 2), (8, 2, 4), (8, 8, 1)])
def test_groupnorm_before_a_chunk(channels: int, groups: int, step: int) -> None:
    """Checked after the split is known: each part grows by whole groups of channels."""
    c1 = trace(lambda: NormBeforeChunk(channels, groups), IMG).group("c1")
    assert c1.growable and c1.step == step
    check_growth(lambda: NormBeforeChunk(channels, groups), IMG, ["c1"])


def test_groupnorm_groups_straddling_parts_freeze() -> None:
    c1 = trace(lambda: NormBeforeChunk(12, 3), IMG).group("c1")  # groups of 4 over two parts of 6
    assert not c1.growable and "'gn.num_groups' counts groups of 4 channels, which straddle" in c1.reason


# --------------------------------------------------------------------------- growth during training


class GLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.block = GLUBlock("chunk", d=8, h=4)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(F.relu(self.inp(x))))


def test_wrap_grows_the_parts_and_refuses_row_candidates() -> None:
    spec = archgrow.spec.parse_spec(
        {
            "version": 1,
            "seed": 0,
            "rules": [
                {"match": "*", "trigger": {"kind": "static"}},
                {
                    "match": "block.fc1",
                    "trigger": {"kind": "linear_schedule", "final_width": 8, "total_steps": 4},
                    "initializer": {"kind": "random"},
                },
            ],
        }
    )
    torch.manual_seed(0)
    model = GLUNet()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    grown = archgrow.wrap(model, spec, x[:1])
    opt = torch.optim.SGD(grown.parameters(), lr=0.1)
    for _ in range(4):
        loss = F.cross_entropy(grown(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        grown.grow_step(opt)
    assert model.block.fc1.out_features == 16 and model.block.fc2.in_features == 8
    assert torch.isfinite(F.cross_entropy(grown(x), y))

    select = {"version": 1, "rules": [{"match": "block.fc1", "initializer": {"kind": "select"}}]}
    with pytest.raises(archgrow.SpecError, match="holds group 'block.fc1' in 2 equal parts"):
        archgrow.wrap(GLUNet(), archgrow.spec.parse_spec(select), x[:1])


class RadixGroups(nn.Module):
    """ResNeSt's split attention with a cardinality of 2 (``resnest50d_4s2x40d``): a conv with
    ``groups = cardinality * radix``, its output reshaped into ``(radix, C // radix)``, so that
    each radix part holds one run of channels per cardinal group."""

    def __init__(self, radix: int = 2, cardinality: int = 2, width: int = 4) -> None:
        super().__init__()
        self.radix = radix
        self.stem = nn.Conv2d(3, 8, 1)
        self.conv = nn.Conv2d(8, width * radix, 3, padding=1, groups=cardinality * radix)
        self.head = nn.Conv2d(width, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.stem(x))
        B, RC, H, W = x.shape
        return self.head(x.reshape(B, self.radix, RC // self.radix, H, W).sum(1))


def test_equal_parts_holding_several_groups_of_a_grouped_conv() -> None:
    """Each of the 2 radix parts holds 2 of the conv's 4 groups: one unit adds a channel to every
    group, and the head, summing the parts, gets one input per group of a part."""
    g = trace(RadixGroups, IMG[:1])
    conv = g.group("conv")
    assert conv.growable and conv.width == 2, conv.reason
    assert member(conv.members, "conv").slots == tuple(Slot(o, 1) for o in (0, 2, 4, 6))
    assert member(conv.members, "head").slots == (Slot(0, 1), Slot(2, 1))
    check_growth(RadixGroups, IMG, ["stem", "conv"])


class SplitBySizeAttribute(nn.Module):
    """GPT-2's packed projection: ``qkv.split(self.split_size, dim)``, the size a module attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(5, 12), nn.Linear(4, 3)
        self.split_size = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.fc(x).split(self.split_size, dim=-1)
        return self.out(a * torch.sigmoid(b) + c)


def test_split_by_a_size_attribute_follows_growth():
    x = torch.randn(6, 5)
    check_growth(SplitBySizeAttribute, x, ["fc"])
    assert trace(SplitBySizeAttribute, x).group("fc").width == 4  # one part of three
    torch.manual_seed(0)
    m = SplitBySizeAttribute().eval()
    g = archgrow.trace(m, x)
    before = m(x)
    archgrow.grow(g, "fc", 2)
    assert m.split_size == 6 and m.fc.out_features == 18
    torch.testing.assert_close(m(x), before)



def test_memoized_resolver_matches_resolve_on_nested_parts_and_on_a_width_tied_to_its_own_part() -> None:
    """``WidthVars.resolver`` (used by the pass that settles every recorded layout) must give
    what ``resolve`` gives, asked once or again: parts nested through blocks and splits, shared
    segments, fixed runs, and a width tied to one of its own parts."""
    from archgrow.ir.layout import Seg, WidthVars

    vars_ = WidthVars()
    a = vars_.new(48, "a")
    halves = vars_.refine(a, 2)  # a = 2 x 24
    blocks = vars_.coarsen(halves[0].var, 8)  # each half = 3 blocks of 8
    b = vars_.new(16, "b")
    layouts = [(Seg(a),), (Seg(a, inner=4), Seg(None, fixed=3), Seg(b)), (Seg(b), Seg(a)), (Seg(a),)]
    resolve = vars_.resolver()
    for lay in layouts * 2:
        assert resolve(lay) == vars_.resolve(lay)
    assert resolve((Seg(a),)) == (Seg(blocks[0].var, inner=8),) * 2
    assert resolve((Seg(a, inner=4),)) == (Seg(blocks[0].var, inner=32),) * 2

    tied = WidthVars()
    c = tied.new(8, "c")
    part = tied.refine(c, 2)[0].var
    tied.union(part, c, "a test tie")  # sizes differ: frozen, and c's parts now lead back to c
    assert tied.frozen
    resolve = tied.resolver()
    resolved = resolve((Seg(c),))
    assert resolved == tied.resolve((Seg(c),))
    assert len(resolved) == 2 and all(tied.find(s.var) == tied.find(c) for s in resolved)  # stops at one level
