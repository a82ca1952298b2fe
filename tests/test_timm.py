"""timm CNNs: their norm layers (BatchNormAct2d, LayerNorm2d...) call layer functions on their own
tensors, and they trace on a batch of one.

A quick check on a few small models (random weights, smallest inputs): every group but the
classifier's grows; growing each by its step keeps the eval-mode output where the group says it
preserves the function; a training step runs afterwards and a fresh trace agrees.  A broader
sample runs as a slow sweep.
"""

from __future__ import annotations

import gc

import pytest
import torch

import archgrow

timm = pytest.importorskip("timm")

# Every group growable but the classifier's (its width is the number of classes).
QUICK = [
    "regnety_002", "efficientnet_b0", "resnet10t", "mobilenetv3_small_050", "convnext_atto", "lcnet_050",
    # cut at attribute positions (DPN's slices), Conv2dSame, ScaledStdConv2d, grouped radix convs
    "dpn48b", "tf_mixnet_s", "nf_resnet26", "resnest14d",
]  # fmt: skip
# A broader sample of timm's families; groups frozen for reasons other than layer functions
# (slices, splits, attention reshapes) are allowed here, broken growth is not.
SWEEP = [
    "regnetx_002", "efficientnet_lite0", "tinynet_e", "resnet18d", "nf_regnet_b0", "repvgg_a0", "dla34", "mixnet_s",
    "cspresnet50", "gernet_s", "rexnet_100", "semnasnet_050", "fbnetc_100", "edgenext_xx_small", "mobileone_s0",
    "fastvit_t8", "poolformerv2_s12", "resnest14d", "dpn48b", "selecsls42b", "cs3darknet_s", "vovnet39a",
    "ese_vovnet19b_slim_dw", "res2net50_14w_8s", "resnetv2_50", "seresnext26d_32x4d", "ecaresnet26t", "ghostnet_050",
    "mobilenetv4_conv_small_050", "hrnet_w18_small", "mnasnet_small", "hardcorenas_a", "densenet121", "levit_128s",
    "inception_v3", "legacy_xception", "xception41p", "deit_tiny_patch16_224",
    # selective kernels, shifted windows, pooling-based ViT, and two captured by torch.export
    "skresnet18", "ghostnetv2_100", "swin_tiny_patch4_window7_224", "pit_ti_224", "crossvit_tiny_240",
    "mobilevitv2_050",
    # heads merged into the batch (BoTNet), channels-last heads merged back from the input's shape (MaxViT)
    "botnet26t_256", "maxvit_rmlp_pico_rw_256",
]  # fmt: skip
# Smallest input each accepts (64 px otherwise): LeViT's attention biases, ViT's position
# embedding, Swin's windows, PiT's and CrossViT's position embeddings fix theirs; Inception v3's
# stem needs 75 px; MobileViT's patches, BoTNet's and MaxViT's position tables need 256.
SWEEP_SIZE = {
    "levit_128s": 224, "deit_tiny_patch16_224": 224, "inception_v3": 75, "swin_tiny_patch4_window7_224": 224,
    "pit_ti_224": 224, "crossvit_tiny_240": 240, "mobilevitv2_050": 256, "botnet26t_256": 256,
    "maxvit_rmlp_pico_rw_256": 256,
}  # fmt: skip


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    with torch.no_grad():  # zero-initialised layers would make output checks vacuous
        for p in model.parameters():
            if p.ndim >= 2 and not p.any():
                p.normal_(0, 0.02)
    return model


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _grow_everything(name: str, size: int) -> archgrow.WidthGraph:
    model = _build(name)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
    g = archgrow.trace(model, x[:1])
    for grp in g.groups:
        assert grp.growable or grp.reason, f"group {grp.name} is frozen without a reason"
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for grp in g.groups:
        if grp.growable and grp.preserves_function:
            archgrow.grow(g, grp.name, grp.step, optimizer=opt)
    with torch.no_grad():
        diff = _rel_diff(model(x), ref)
    assert diff <= 1e-5, f"output changed by {diff:.2e} after growing the function-preserving groups"
    for grp in g.groups:
        if grp.growable and not grp.preserves_function:
            archgrow.grow(g, grp.name, grp.step, optimizer=opt)
    model.train()
    model(x).square().mean().backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert g.retrace().widths() == g.widths()
    return g


@pytest.mark.parametrize("name", QUICK)
def test_timm_cnn_grows_every_group(name: str) -> None:
    g = _grow_everything(name, 32)
    frozen = [grp for grp in g.groups if not grp.growable]
    assert len(frozen) == 1 and "reaches the model output" in frozen[0].reason, [grp.reason for grp in frozen]
    gc.collect()


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_small_050"])
def test_timm_traces_on_one_sample_in_training_mode(name: str) -> None:
    """Their BatchNormAct2d on 1x1 maps would need two samples for training-mode statistics."""
    model = _build(name).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = archgrow.trace(model, torch.randn(1, 3, 32, 32))
    assert sum(grp.growable for grp in g.groups) == len(g.groups) - 1
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state), "tracing changed a buffer"


@pytest.mark.slow
@pytest.mark.xdist_group("timm")
@pytest.mark.parametrize("name", SWEEP)
def test_timm_sample_grows_without_breaking(name: str) -> None:
    g = _grow_everything(name, SWEEP_SIZE.get(name, 64))
    assert any(grp.growable for grp in g.groups)
    gc.collect()


class SamePaddingAndStandardised(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = timm.layers.Conv2dSame(3, 8, 3, stride=2)
        self.std = timm.layers.ScaledStdConv2d(8, 6, 3)
        self.head = torch.nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.std(torch.relu(self.stem(x))))).mean((2, 3))


def test_timm_same_padding_and_standardised_convs() -> None:
    """fx cannot trace Conv2dSame's padding: it is a leaf with the conv rule.  A weight-
    standardised conv grows as a conv, its gain with its outputs; new inputs change every filter."""
    torch.manual_seed(0)
    model = SamePaddingAndStandardised().eval()
    x = torch.randn(2, 3, 15, 15)
    g = archgrow.trace(model, x[:1], frontend="fx")
    stem, std = g.group("stem"), g.group("std")
    assert stem.growable and not stem.preserves_function and "standardises each filter" in stem.not_preserving_reasons[0]
    assert std.growable and std.preserves_function
    before = model(x)
    archgrow.grow(g, "std", 2)
    assert model.std.gain.shape == (8, 1, 1, 1) and torch.equal(model.std.gain[6:].flatten(), torch.ones(2))
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
    archgrow.grow(g, "stem", 3)
    assert model.stem.out_channels == 11 and model.std.in_channels == 11 and model(x).shape == before.shape
    assert g.retrace().widths() == g.widths()


# --------------------------------------------------------------------------- norm + act modules


class NoRuleAct(torch.nn.Module):
    """An activation archgrow has no layer rule for: its norm-act module is traced into."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class NormActs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        norm_act = timm.layers.norm_act
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.n1 = norm_act.BatchNormAct2d(8)  # ReLU
        self.c2 = torch.nn.Conv2d(8, 6, 3, padding=1)
        self.n2 = norm_act.BatchNormAct2d(6, act_layer=torch.nn.GELU)
        self.n2.act = torch.nn.PReLU(6)  # a per-channel act: its slopes grow with the norm
        self.c3 = torch.nn.Conv2d(6, 8, 1)
        self.n3 = norm_act.GroupNormAct(8, num_groups=4, act_layer=torch.nn.GELU)
        self.c4 = torch.nn.Conv2d(8, 4, 1)
        self.n4 = norm_act.BatchNormAct2d(4)
        self.n4.act = NoRuleAct()
        self.fc = torch.nn.Linear(4, 5)
        self.n5 = norm_act.LayerNormAct(5, act_layer=torch.nn.SiLU)
        self.out = torch.nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.n4(self.c4(self.n3(self.c3(self.n2(self.c2(self.n1(self.c1(x))))))))
        return self.out(self.n5(self.fc(x.mean((2, 3)))))


def _warm_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial running statistics and affine parameters, so that output checks can fail."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 9, 9))
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_norm_act_modules_are_leaves_described_by_norm_then_act() -> None:
    """timm's BatchNormAct2d, GroupNormAct and LayerNormAct are described whole: one fx node each,
    the norm's bindings, then the act's (a PReLU's slopes grow with the channels).  One whose act
    has no rule is traced into, as before, and grows the same way."""
    from archgrow.growth.dead_at_zero import dead_at_zero

    torch.manual_seed(0)
    model = _warm_statistics(NormActs())
    x = torch.randn(2, 3, 9, 9)
    g = archgrow.trace(model, x[:1], frontend="fx")
    modules = {str(n.target) for n in g.fx.graph.nodes if n.op == "call_module"}
    assert {"n1", "n2", "n3", "n5"} <= modules and "n4" not in modules and "n4.act" not in modules
    assert "n2.act" not in modules  # inside the leaf n2
    for name in ("c1", "c2", "c3", "c4", "fc"):
        assert g.group(name).growable, (name, g.group(name).reason)
    assert g.group("c3").step == 2  # GroupNormAct: two channels per group
    assert "n2.act.weight" in {f"{b.module_name}.{b.tensor}" for b in g.group("c2").bindings()}
    # ReLU inside n1 has gradient 0 at 0; GELU inside n3 does not; n4 was traced into.
    assert dead_at_zero(g, g.group("c1")) == ["n1"]
    assert dead_at_zero(g, g.group("c3")) == []
    assert len(dead_at_zero(g, g.group("c4"))) == 0
    before = model(x)
    for name, k in (("c1", 3), ("c2", 2), ("c3", 4), ("c4", 2), ("fc", 3)):
        grp = g.group(name)
        archgrow.grow(g, name, k)
        if grp.preserves_function:
            torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5, msg=name)
    assert model.n2.act.weight.shape == (8,) and model.n2.act.num_parameters == 8 and (model.n3.num_channels, model.n3.num_groups) == (12, 6) and model.n5.normalized_shape == (8,)
    assert model.n1.running_var.shape == (11,) and model(x).shape == before.shape
    assert g.retrace().widths() == g.widths()


def test_norm_act_probe_replays_the_leaf_in_eval_mode() -> None:
    """A norm-act module depends on the mode: the probe replays it in eval mode (running
    statistics), and its value is the act's output."""
    torch.manual_seed(0)
    model = _warm_statistics(NormActs()).train()
    x = torch.randn(2, 3, 9, 9)
    g = archgrow.trace(model, x[:1], frontend="fx")
    from archgrow.growth.measure import measure, measuring
    from archgrow.growth.probes import build_probe

    probe = build_probe(g, g.group("c1"))
    assert not probe.stateless and [n.name for n in probe.chain] == ["n1"]
    stats = model.n1.running_mean.clone()
    with measuring(model):
        h = measure(model, [probe], (x,))["c1"].h
        expected = model.n1.eval()(model.c1(x))
    model.n1.train()
    torch.testing.assert_close(h, expected)
    assert (expected == 0).any() and torch.equal(model.n1.running_mean, stats)


def test_norm_act_leaves_collapse_alike_under_torch_export() -> None:
    """The export front-end collapses the same norm-act modules into one call each: same groups."""

    def groups(graph: archgrow.WidthGraph) -> list[tuple]:
        return [
            (g.name, g.width, g.step, g.growable, g.preserves_function, [(m.name, m.slots) for m in g.members])
            for g in graph.groups
        ]

    torch.manual_seed(0)
    model = _warm_statistics(NormActs())
    x = torch.randn(1, 3, 9, 9)
    traced = archgrow.trace(model, x, frontend="fx")
    exported = archgrow.trace(model, x, frontend="export")
    assert exported.frontend == "export"
    assert {"n1", "n2", "n3", "n5"} <= {str(n.target) for n in exported.fx.graph.nodes if n.op == "call_module"}
    assert groups(exported) == groups(traced)


@pytest.mark.parametrize(
    "make, preserves",
    [
        (lambda: timm.layers.norm_act.BatchNormAct2d(8), True),
        (lambda: timm.layers.norm_act.SyncBatchNormAct(8), True),  # as built: no act
        (lambda: timm.layers.norm_act.convert_sync_batchnorm(timm.layers.norm_act.BatchNormAct2d(8)), True),
        (lambda: timm.layers.norm_act.GroupNormAct(8, num_groups=4), True),
        (lambda: timm.layers.norm_act.GroupNorm1Act(8), False),  # one group: new channels move the statistics
        (lambda: timm.layers.norm_act.BatchNormAct2d(8, act_layer="gelu_tanh"), True),  # timm's own act
        (lambda: timm.layers.norm_act.BatchNormAct2d(8, act_layer="prelu", drop_layer=torch.nn.Dropout), True),
    ],
    ids=["bn", "syncbn-bare", "syncbn-converted", "gn", "gn1", "timm-act", "timm-prelu-dropout"],
)
def test_each_norm_act_type_is_a_leaf_and_grows(make, preserves: bool) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), make(), torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 6, 6)
    graph = archgrow.trace(model, x[:1], frontend="fx")
    assert [str(n.target) for n in graph.fx.graph.nodes if n.op == "call_module"] == ["0", "1", "2"]
    group = graph.group("0")
    assert group.growable and group.preserves_function is preserves, (group.reason, group.not_preserving_reasons)
    before = model(x)
    archgrow.grow(graph, "0", 2)
    if preserves:
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
    assert model(x).shape == before.shape and graph.retrace().widths() == graph.widths()


def test_a_norm_act_forced_to_be_a_leaf_with_an_act_without_rule_says_what_to_do() -> None:
    """Traced into, the act's ops are described one by one; forced whole by leaf_modules, the act
    has no rule, and the reason names it and both ways out."""
    torch.manual_seed(0)
    norm = timm.layers.norm_act.BatchNormAct2d(8)
    norm.act = NoRuleAct()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), norm, torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 6, 6)
    assert archgrow.trace(model, x, frontend="fx").group("0").growable
    forced = archgrow.trace(model, x, frontend="fx", leaf_modules=[timm.layers.norm_act.BatchNormAct2d])
    reason = forced.group("0").reason or ""
    assert "NoRuleAct '1.act' inside BatchNormAct2d '1'" in reason and "register_layer" in reason
    assert "leave BatchNormAct2d out of leaf_modules" in reason


class UnknownOpAct(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i0e(x)  # an op archgrow has no rule for


def test_the_leaf_hint_does_not_send_users_to_a_norm_act_that_cannot_describe_its_act() -> None:
    norm = timm.layers.norm_act.BatchNormAct2d(8)
    norm.act = UnknownOpAct()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), norm, torch.nn.Conv2d(8, 4, 1)).eval()
    reason = archgrow.trace(model, torch.randn(1, 3, 6, 6), frontend="fx").group("0").reason or ""
    assert "special_i0e" in reason and "leaf_modules=[BatchNormAct2d]" not in reason, reason


class _LayoutDroppingNorm(archgrow.ops.TensorLayer):
    """A user's BatchNorm2d rule whose output carries no widths (so the act's rule cannot read it)."""

    def layout(self, ctx, name, module, src, shape):
        return archgrow.ir.layout.TensorMeta(shape, (None,) * len(shape))


def test_a_norm_act_whose_norm_rule_changes_the_layout_freezes_instead_of_skipping_its_act() -> None:
    norm = timm.layers.norm_act.BatchNormAct2d(8)
    norm.act = torch.nn.PReLU(8)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), norm, torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 6, 6)
    rules = [archgrow.ops.layer(torch.nn.BatchNorm2d, _LayoutDroppingNorm())]
    group = archgrow.trace(model, x, frontend="fx", rules=rules).group("0")
    assert not group.growable and "its norm changes the layout its drop and act read" in (group.reason or "")
