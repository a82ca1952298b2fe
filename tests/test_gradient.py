"""Gradient-based neurogenesis: the auxiliary gradient against explicit autograd references (float64),
T_grad, GradMax's defining property, zero fan-in on stock ReLU models, Firefly's exact undo, NeST."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archgrow
from archgrow import ArchgrowError, SpecError, wrap
from archgrow.models import ModifiedReLU, mlp


def gradient_spec(match="*", init=None, **trigger):
    rule = {"match": match, "frozen": False, "trigger": {"kind": "gradient", **trigger}}
    if init:
        rule["initializer"] = init
    return {"seed": 0, "defaults": {"max_width": "4x", "frozen": match != "*"}, "rules": [rule]}


def conv_net(consumer_padding=1, pool=None, flatten=False):
    layers = OrderedDict(
        conv1=nn.Conv2d(3, 4, 3, padding=1),
        act1=ModifiedReLU(),
        conv2=nn.Conv2d(4, 5, 3, padding=consumer_padding, stride=1),
        act2=ModifiedReLU(),
    )
    if pool:
        layers = OrderedDict(
            conv1=layers["conv1"], act1=layers["act1"], pool1=pool, conv2=layers["conv2"], act2=layers["act2"]
        )
    if flatten:
        layers = OrderedDict(
            conv1=layers["conv1"], act1=layers["act1"], pool1=pool or nn.Identity(), flat=nn.Flatten(), fc=nn.Linear(4 * 16, 3)
        )
    else:
        layers.update(gap=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(5, 3))
    return nn.Sequential(layers).double()


def step_gradient(grown, x, y, group):
    """One training forward/backward of the wrapped model; the group's captured G."""
    grown.train()
    loss = F.cross_entropy(grown(x), y)
    loss.backward()
    return grown.growing[group].bridge.gradient()


# --------------------------------------------------------------------------- G against references
def test_dense_gradient_equals_materialized_zero_bridge():
    torch.manual_seed(0)
    model = mlp(6, (5, 4), 3).double()
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    grown = wrap(model, gradient_spec("hidden1"), x[:1])
    aux = torch.zeros(4, 6, dtype=torch.float64, requires_grad=True)  # h_{l-1} (6) -> z_{l+1} (4)
    seen = {}
    model.hidden1.register_forward_hook(lambda m, a, o: seen.__setitem__("h", a[0]))
    model.hidden2.register_forward_hook(lambda m, a, o: o + seen["h"] @ aux.T)
    g = step_gradient(grown, x, y, "hidden1")
    torch.testing.assert_close(g, aux.grad, rtol=1e-12, atol=1e-14)
    assert g.abs().max() > 1e-6


@pytest.mark.parametrize("consumer_padding", [0, 1])
def test_conv_gradient_equals_materialized_patch_bridge(consumer_padding):
    """The bridge from the producer's input patches through a conv with the consumer's geometry."""
    torch.manual_seed(0)
    model = conv_net(consumer_padding)
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4,))
    grown = wrap(model, gradient_spec("conv1"), x[:1])
    aux = torch.zeros(5, 3 * 9, 3, 3, dtype=torch.float64, requires_grad=True)
    seen = {}
    model.conv1.register_forward_hook(lambda m, a, o: seen.__setitem__("h", a[0]))

    def bridge(m, a, o):
        patches = F.unfold(seen["h"], 3, padding=1).reshape(a[0].shape[0], 27, 8, 8)
        return o + F.conv2d(patches, aux, padding=consumer_padding)

    model.conv2.register_forward_hook(bridge)
    g = step_gradient(grown, x, y, "conv1")
    expected = aux.grad.permute(0, 2, 3, 1).reshape(5 * 9, 27)
    torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-13)


def test_conv_gradient_matches_the_k1_plus_k2_minus_1_bridge():
    """GradMax's bridging conv (kernel k1+k2-1, padding p1+p2): G[(o,p2),(i,p1)] = dL/dAux[o,i,p1+p2]
    (exact when the consumer does not pad, so no bridge term crosses layer l's border)."""
    torch.manual_seed(1)
    model = conv_net(consumer_padding=0)
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4,))
    grown = wrap(model, gradient_spec("conv1"), x[:1])
    aux = torch.zeros(5, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    seen = {}
    model.conv1.register_forward_hook(lambda m, a, o: seen.__setitem__("h", a[0]))
    model.conv2.register_forward_hook(lambda m, a, o: o + F.conv2d(seen["h"], aux, padding=1))
    g = step_gradient(grown, x, y, "conv1").reshape(5, 3, 3, 3, 3, 3)  # o, p2h, p2w, i, p1h, p1w
    for p2h in range(3):
        for p2w in range(3):
            for p1h in range(3):
                for p1w in range(3):
                    torch.testing.assert_close(g[:, p2h, p2w, :, p1h, p1w], aux.grad[:, :, p1h + p2h, p1w + p2w])


@pytest.mark.parametrize(
    "case",
    ["dense", "conv", "conv_avgpool", "conv_flatten_linear", "conv_pool_flatten_linear"],
)
def test_G_transpose_fan_out_is_a_zero_fan_in_units_gradient(case):
    """The defining property: a new unit with zero fan-in and fan-out w gets fan-in gradient G^T w
    (float64, checked against autograd on the actually grown model)."""
    torch.manual_seed(2)
    if case == "dense":
        model, group, x = mlp(6, (5, 4), 3).double(), "hidden1", torch.randn(16, 6, dtype=torch.float64)
    else:
        pool = nn.AvgPool2d(2) if "pool" in case else None
        model = conv_net(1, pool=pool, flatten="flatten" in case)
        if case == "conv_flatten_linear":
            model.fc = nn.Linear(4 * 64, 3).double()
        group, x = "conv1", torch.randn(4, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (x.shape[0],))
    grown = wrap(model, gradient_spec(group), x[:1])
    g = step_gradient(grown, x, y, group)
    b = grown.growing[group]
    w = torch.randn(1, g.shape[0], dtype=torch.float64)
    fan_out = b.bridge.split_fan_out(w)
    fan_in = {name: t.zero_() for name, t in b.bridge.split_fan_in(torch.zeros(1, g.shape[1], dtype=torch.float64)).items()}
    plain = copy.deepcopy(model)
    graph = archgrow.trace(plain, x[:1])
    archgrow.grow(graph, group, 1, fan_in=fan_in, fan_out=fan_out)
    plain.zero_grad()
    F.cross_entropy(plain(x), y).backward()
    producer = plain.get_submodule(b.producer_name)
    actual = producer.weight.grad[-1].reshape(-1)
    torch.testing.assert_close(actual, (g.T @ w[0]), rtol=1e-10, atol=1e-13)
    assert actual.abs().max() > 1e-8


def test_gradient_accumulates_over_backwards_like_grad():
    torch.manual_seed(0)
    model = mlp(6, (5,), 3).double()
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    grown = wrap(model, gradient_spec(), x[:1])
    grown.train()
    (F.cross_entropy(grown(x[:8]), y[:8]) * 0.5).backward()
    (F.cross_entropy(grown(x[8:]), y[8:]) * 0.5).backward()
    two = grown.growing["hidden1"].bridge.gradient()
    grown.growing["hidden1"].bridge.reset()
    grown.growing["hidden1"].bridge.armed = True
    F.cross_entropy(grown(x), y).backward()
    torch.testing.assert_close(grown.growing["hidden1"].bridge.gradient(), two)


# --------------------------------------------------------------------------- T_grad
@pytest.mark.parametrize("threshold", ["code", "paper"])
def test_gradient_trigger_counts_singular_values_against_unit_gradient_norms(threshold):
    torch.manual_seed(0)
    model = mlp(6, (5,), 3).double()
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 3, (32,))
    grown = wrap(model, gradient_spec(threshold=threshold), x[:1])
    opt = torch.optim.SGD(grown.parameters(), lr=0.0)
    grown.train()
    F.cross_entropy(grown(x), y).backward()
    g = grown.growing["hidden1"].bridge.gradient().clone()
    s = torch.linalg.svdvals(g)
    norms = model.hidden1.weight.grad.norm(dim=1) + model.out.weight.grad.norm(dim=0)
    opt.step()
    events = grown.grow_step(opt)
    total = float(norms.sum())
    expected_thr = total / 2 if threshold == "code" else total
    count = int((s >= expected_thr).sum()) if threshold == "code" else int((s > expected_thr).sum())
    if count:
        (e,) = events
        assert e.new_width - e.old_width == min(count, 3)
        assert e.threshold == pytest.approx(expected_thr)
        assert e.score == pytest.approx(float(s[0]))
    else:
        assert events == []
    # the threshold's per-unit norms are the fan-in plus fan-out weight-gradient norms
    from archgrow.triggers.gradient import unit_gradient_norms

    torch.testing.assert_close(unit_gradient_norms(grown.growing["hidden1"])[:5], norms, check_dtype=False)


def test_sigma_max_bound_is_an_upper_bound_and_tight_at_rank_one():
    """The skip test T_grad runs before any spectrum: it must never be below sigma_1 (or a firing
    step would be missed), whatever the dtype, and equals sigma_1 for a rank-one G."""
    from archgrow.triggers.gradient import sigma_max_bound

    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for shape in [(64, 784), (10, 64), (576, 288)]:
            g = torch.randn(shape, generator=gen).to(dtype)
            rank_one = (torch.randn(shape[0], 1, generator=gen) @ torch.randn(1, shape[1], generator=gen)).to(dtype)
            for m in (g, rank_one, 1e-30 * g.double()):
                s1 = float(torch.linalg.svdvals(m.double())[0])
                assert sigma_max_bound(m) >= s1
            assert sigma_max_bound(rank_one) == pytest.approx(float(torch.linalg.svdvals(rank_one.double())[0]), rel=2e-3)


def test_unit_norms_of_several_roles_in_one_pass_equal_one_role_at_a_time():
    from archgrow.ir.roles import FAN_IN, FAN_OUT
    from archgrow.surgery.channels import unit_norms_by_role, unit_norms_by_roles

    model = conv_net(1, pool=nn.AvgPool2d(2), flatten=True)
    graph = archgrow.trace(model, torch.randn(1, 3, 8, 8, dtype=torch.float64))
    F.cross_entropy(model(torch.randn(4, 3, 8, 8, dtype=torch.float64)), torch.tensor([0, 1, 2, 0])).backward()
    group = graph.group("conv1")
    both = unit_norms_by_roles(graph, group, (FAN_IN, FAN_OUT), grad=True)
    for role, expected in [(FAN_IN, model.conv1.weight.grad.flatten(1).norm(dim=1)),
                           (FAN_OUT, model.fc.weight.grad.reshape(3, 4, 16).transpose(0, 1).flatten(1).norm(dim=1))]:
        torch.testing.assert_close(both[role], unit_norms_by_role(graph, group, role, grad=True))
        torch.testing.assert_close(both[role], expected)
    # the group's members are looked up once per graph: after growth the norms read the new tensors
    archgrow.grow(graph, group, 2)
    model.zero_grad()
    F.cross_entropy(model(torch.randn(4, 3, 8, 8, dtype=torch.float64)), torch.tensor([0, 1, 2, 0])).backward()
    both = unit_norms_by_roles(graph, group, (FAN_IN, FAN_OUT), grad=True)
    torch.testing.assert_close(both[FAN_IN], model.conv1.weight.grad.flatten(1).norm(dim=1))
    torch.testing.assert_close(both[FAN_OUT], model.fc.weight.grad.reshape(3, 6, 16).transpose(0, 1).flatten(1).norm(dim=1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_norms_along_any_dim_equal_norms_of_the_moved_slices(dtype):
    """Per-slice norms are reduced where the slices lie (two code paths: leading dim, later dims)."""
    from archgrow.surgery.channels import _norms_along

    t = torch.randn(6, 5, 3, 3, generator=torch.Generator().manual_seed(0)).to(dtype)
    for dim in (0, 1, 2, -1):
        expected = t.double().movedim(dim, 0).flatten(1).norm(dim=1)
        got = _norms_along(t, dim)
        assert got.dtype == torch.float64 and got.shape == (t.shape[dim],)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(_norms_along(torch.tensor([-2.0, 0.5]), 0), torch.tensor([2.0, 0.5], dtype=torch.float64))


def test_gradient_trigger_needs_a_backward():
    model = mlp(6, (5,), 3)
    x = torch.randn(8, 6)
    grown = wrap(model, gradient_spec(), x[:1])
    with pytest.raises(ArchgrowError, match=r"'hidden1.weight' has no .grad: call grow_step after loss.backward\(\)"):
        grown.grow_step()
    grown.eval()  # gradients exist, but the forward was not a training one: nothing captured
    grown(x).sum().backward()
    with pytest.raises(ArchgrowError, match="group 'hidden1': no backward pass reached out since the last grow_step"):
        grown.grow_step()


# --------------------------------------------------------------------------- GradMax
def test_gradmax_fan_out_beats_random_unit_fan_outs_and_preserves_function():
    torch.manual_seed(3)
    model = mlp(8, (6, 5), 4).double()
    x, y = torch.randn(64, 8, dtype=torch.float64), torch.randint(0, 4, (64,))
    spec = {"seed": 0, "rules": [{"match": "*", "trigger": {"kind": "linear_schedule", "final_width": 7, "total_steps": 1}, "initializer": {"kind": "gradmax"}}], "defaults": {"frozen": True}}
    spec["rules"][0].update(match="hidden1", frozen=False)
    grown = wrap(model, spec, x[:1])
    reference = copy.deepcopy(model)
    grown.train()
    F.cross_entropy(grown(x), y).backward()
    grown.eval()
    with torch.no_grad():
        before = grown(x)
    (event,) = grown.grow_step()  # lr 0: weights as at the backward
    assert event.new_width == 7 and event.initializer == "gradmax"
    with torch.no_grad():
        torch.testing.assert_close(grown(x), before, rtol=0, atol=1e-12)  # zero fan-in: exact up to summation order
    assert model.hidden1.weight[6].abs().max() == 0

    def fan_in_grad_norm(net):
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        return float(net.hidden1.weight.grad[6].norm())

    chosen = fan_in_grad_norm(model)
    target = float(model.hidden2.weight.detach()[:, 6].norm())
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        other = copy.deepcopy(reference)
        w = torch.randn(5, 1, generator=gen, dtype=torch.float64)
        archgrow.grow(archgrow.trace(other, x[:1]), "hidden1", 1, fan_in=torch.zeros(1, 8, dtype=torch.float64), fan_out={"hidden2": w * target / w.norm()})
        assert fan_in_grad_norm(other) < chosen


def test_gradmax_on_stock_relu_resnet_gets_fan_in_gradient():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    def grown_resnet(init):
        model = torchvision.models.resnet18(num_classes=10)
        spec = {
            "defaults": {"frozen": True},
            "rules": [{"match": "layer1.0.conv1", "frozen": False, "trigger": {"kind": "linear_schedule", "final_width": 65, "total_steps": 1}, "initializer": init}],
        }
        grown = wrap(model, spec, x[:1])
        opt = torch.optim.SGD(grown.parameters(), lr=0.01)
        grown.train()
        F.cross_entropy(grown(x), y).backward()
        opt.step()
        (event,) = grown.grow_step(opt)
        assert event.new_width == 65
        opt.zero_grad()
        F.cross_entropy(grown(x), y).backward()
        return model

    model = grown_resnet({"kind": "gradmax"})  # auto: a ReLU follows, so a tiny fan-in along -v
    assert model.layer1[0].conv1.weight.grad[64].norm() > 1e-6
    assert float(model.layer1[0].bn1.weight.detach()[64]) == pytest.approx(1e-3, rel=0.5)
    dead = grown_resnet({"kind": "gradmax", "fan_in_scale": 0.0})  # exact zero fan-in: never learns
    assert dead.layer1[0].conv1.weight.grad[64].norm() == 0


def test_gradmax_auto_fan_in_scale_follows_the_activation():
    x = torch.randn(4, 6)
    for activation, expected in [("modified_relu", 0.0), ("relu", 1e-3)]:
        grown = wrap(mlp(6, (5,), 3, activation=activation), gradient_spec(init={"kind": "gradmax"}), x[:1])
        assert grown.growing["hidden1"].initializer.fan_in_scale == expected


# --------------------------------------------------------------------------- Firefly
def test_firefly_changes_only_the_kept_candidates():
    torch.manual_seed(0)
    model = mlp(8, (6,), 3).double()
    x, y = torch.randn(32, 8, dtype=torch.float64), torch.randint(0, 3, (32,))
    spec = {
        "seed": 1,
        "rules": [{"match": "*", "trigger": {"kind": "batched_schedule", "final_width": 22, "total_steps": 1}, "initializer": {"kind": "firefly", "candidates": 40, "epsilon": 1e-3}}],
    }
    grown = wrap(model, spec, x[:1])
    opt = torch.optim.Adam(grown.parameters(), lr=1e-3)
    grown.train()
    F.cross_entropy(grown(x), y).backward()
    opt.step()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    states = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in model.named_parameters()}
    with pytest.raises(ArchgrowError, match="loss_fn"):
        wrap(copy.deepcopy(model), spec, x[:1]).grow_step()
    (event,) = grown.grow_step(opt, loss_fn=lambda: F.cross_entropy(grown(x), y))
    assert (event.old_width, event.new_width) == (6, 8)
    w_in, w_out, bias = model.hidden1.weight.detach(), model.out.weight.detach(), model.hidden1.bias.detach()
    old_in, old_out = before["hidden1.weight"], before["out.weight"]
    changed = [c for c in range(6) if not torch.equal(w_in[c], old_in[c])]
    for c in range(6):
        if c in changed:  # a kept split: the original is w - delta with half its fan-out
            torch.testing.assert_close(w_out[:, c], old_out[:, c] / 2)
        else:  # rejected or never a candidate: restored bit for bit
            assert torch.equal(w_out[:, c], old_out[:, c])
    assert torch.equal(bias[:6], before["hidden1.bias"]) and torch.equal(model.out.bias, before["out.bias"])
    for new in range(6, 8):
        twin = [c for c in changed if torch.allclose(w_in[new] + w_in[c], 2 * old_in[c], atol=1e-12)]
        if twin:  # split copy: w + delta, same bias, half the fan-out
            (c,) = twin
            assert bias[new] == bias[c] and torch.allclose(w_out[:, new], old_out[:, c] / 2)
            assert 0 < (w_in[new] - old_in[c]).norm() <= 1e-3 * old_in[c].norm() * 8**0.5
        else:  # new candidate: tiny fan-out
            assert w_out[:, new].norm() < 1e-2 * old_out.norm(dim=0).mean()
    assert len(changed) <= 2
    # untouched state: gradients and optimizer moments of old entries, a consistent graph
    assert torch.equal(model.hidden1.weight.grad[:6], grads["hidden1.weight"])
    for n, p in model.named_parameters():
        for k, v in states[n].items():
            if v.ndim:
                assert torch.equal(opt.state[p][k][tuple(slice(0, s) for s in v.shape)], v)
    assert grown.graph.retrace().widths() == grown.widths()
    # the function moved by O(epsilon) only
    grown.eval()
    with torch.no_grad():
        after = grown(x)
        reference = nn.Sequential(OrderedDict(hidden1=nn.Linear(8, 6), act1=ModifiedReLU(), out=nn.Linear(6, 3))).double()
        reference.hidden1.weight.copy_(old_in)
        reference.hidden1.bias.copy_(before["hidden1.bias"])
        reference.out.weight.copy_(old_out)
        reference.out.bias.copy_(before["out.bias"])
        moved = (after - reference(x)).abs().max()
    assert 0 < moved < 1e-2


def test_firefly_trial_restores_everything_exactly():
    """A trial (grow all candidates, differentiate, undo) leaves parameters, buffers and sizes as they were."""
    from archgrow.initializers.base import Units, apply_units
    from archgrow.surgery.channels import trial

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(4, 3, 8, 8)
    model(x)
    grown = wrap(model, {"rules": [{"match": "0", "frozen": False, "initializer": {"kind": "firefly"}, "trigger": {"kind": "gradient"}}], "defaults": {"frozen": True}}, x[:1])
    b = grown.growing["0"]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with trial(b.group.graph, b.group, model):
        apply_units(b, 3, Units())
        model.train()
        model(x).sum().backward()
        assert model[0].out_channels == 7
    assert model[0].out_channels == 4 and model[1].num_features == 4 and b.width == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert grown.graph.retrace().widths() == grown.widths()


# --------------------------------------------------------------------------- NeST
@pytest.mark.parametrize("sign_aware", [False, True])
def test_nest_dense_units_follow_large_gradient_entries(sign_aware):
    torch.manual_seed(0)
    model = mlp(8, (6,), 3).double()
    x, y = torch.randn(32, 8, dtype=torch.float64), torch.randint(0, 3, (32,))
    spec = {"seed": 0, "rules": [{"match": "*", "trigger": {"kind": "batched_schedule", "final_width": 22, "total_steps": 1}, "initializer": {"kind": "nest", "sign_aware": sign_aware}}]}
    grown = wrap(model, spec, x[:1])
    grown.train()
    F.cross_entropy(grown(x), y).backward()
    g = grown.growing["hidden1"].bridge.gradient().clone()
    mean_in = float(model.hidden1.weight.detach().norm(dim=1).mean())
    mean_out = float(model.out.weight.detach().norm(dim=0).mean())
    (event,) = grown.grow_step()
    assert event.new_width == 8
    w_in, w_out = model.hidden1.weight.detach()[6:], model.out.weight.detach()[:, 6:]
    torch.testing.assert_close(w_in.norm(dim=1), torch.full((2,), mean_in, dtype=torch.float64))
    torch.testing.assert_close(w_out.norm(dim=0), torch.full((2,), mean_out, dtype=torch.float64))
    assert not torch.allclose(w_in[0], w_in[1])  # different random signs per unit
    if not sign_aware:
        assert (w_out >= 0).all()  # the authors' code: fan-out sums |d|
    # inputs whose every gradient entry is below the quantile get no fan-in
    kept = g.abs() > torch.quantile(g.abs().flatten(), 0.4)
    silent = ~kept.any(dim=0)
    assert (w_in[:, silent] == 0).all()


def test_nest_conv_keeps_the_lowest_loss_candidate():
    torch.manual_seed(0)
    model = conv_net(1).float()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    spec = {"seed": 0, "defaults": {"frozen": True}, "rules": [{"match": "conv1", "frozen": False, "trigger": {"kind": "linear_schedule", "final_width": 5, "total_steps": 1}, "initializer": {"kind": "nest", "candidates": 6}}]}
    grown = wrap(model, spec, x[:1])
    loss_fn = lambda: F.cross_entropy(grown(x), y)  # noqa: E731
    grown.train()
    loss_fn().backward()
    with pytest.raises(ArchgrowError, match="loss_fn"):
        grown.grow_step()
    grown.steps -= 1
    tried = []
    real_trial = grown._trial_loss

    def recording(fn, grad):
        loss = real_trial(fn, grad)
        tried.append(float(loss))
        return loss

    grown._trial_loss = recording
    (event,) = grown.grow_step(loss_fn=loss_fn)
    assert event.new_width == 5 and len(tried) == 7  # 6 candidates + k
    with torch.no_grad():
        chosen = float(loss_fn())
    assert chosen == pytest.approx(min(tried), rel=1e-6)
    assert len(set(tried)) > 1
    assert model.conv1.weight[4].norm() > 0 and model.conv2.weight[:, 4].norm() > 0


# --------------------------------------------------------------------------- wrap-time errors
def test_gradient_methods_reject_unsupported_groups_at_wrap():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(2, 3, 6, 6)
    model(x)
    with pytest.raises(SpecError) as info:
        wrap(model, {"rules": [{"match": "*", "trigger": {"kind": "gradient"}, "initializer": {"kind": "gradmax"}}]}, x[:1])
    text = str(info.value)
    assert "'gradient' cannot be used on group '0'" in text and "'2' (Conv2d, groups=8)" in text
    # an unsupported producer is named with what is accepted
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.ReLU(), nn.Conv1d(8, 4, 1), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(2, 4, 6)
    model(x)
    with pytest.raises(SpecError, match=r"producer '0' is Conv1d; supported: nn.Linear, or nn.Conv2d with groups=1"):
        wrap(model, {"rules": [{"match": "0", "initializer": {"kind": "gradmax"}, "trigger": {"kind": "static"}}]}, x[:1])


def test_loss_fn_must_return_the_loss_tensor():
    torch.manual_seed(0)
    model = mlp(8, (6,), 3)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    spec = {"rules": [{"match": "*", "trigger": {"kind": "linear_schedule", "final_width": 9, "total_steps": 1}, "initializer": {"kind": "firefly", "candidates": 4}}]}
    grown = wrap(model, spec, x[:1])
    grown.train()
    F.cross_entropy(grown(x), y).backward()
    with pytest.raises(ArchgrowError, match="loss_fn must return the loss as a one-element tensor, got float"):
        grown.grow_step(loss_fn=lambda: 3.0)
    assert model.hidden1.out_features == 6  # the failed trial left the model as it was


@pytest.mark.parametrize(
    "kernel,padding,dilation,size,target",
    [(3, 1, 1, 16, (8, 8)), (5, 2, 1, 12, (4, 4)), (3, 0, 1, 10, (4, 4)), (3, 2, 2, 12, (6, 6)), ((3, 1), (1, 0), 1, 8, (4, 8))],
)
def test_pooled_patches_from_a_box_filtered_input_equal_pooling_the_patches(kernel, padding, dilation, size, target):
    """The shortcut for stride-1 producers pooled by whole factors gives the patches, then pooled."""
    from archgrow.growth.auxgrad import _pooled_patches

    conv = nn.Conv2d(4, 5, kernel, padding=padding, dilation=dilation).double()
    x = torch.randn(2, 4, size, 8 if isinstance(kernel, tuple) else size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = tuple(conv(x).shape[2:])
    patches = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding).reshape(2, -1, *out)
    torch.testing.assert_close(_pooled_patches(x, conv, out, target), F.adaptive_avg_pool2d(patches, target), rtol=0, atol=1e-12)


def test_thin_svd_falls_back_to_svd_when_eigh_does_not_converge(monkeypatch):
    """LAPACK's eigh failed to converge on a real auxiliary gradient (GradMax, authors' threshold,
    Fashion-MNIST MLP); the SVD of G itself must then give the same factors."""
    from archgrow.growth.svd import singular_values, thin_svd

    g = torch.randn(6, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u_ref, s_ref, v_ref = thin_svd(g)

    def fail(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", fail)
    monkeypatch.setattr(torch.linalg, "eigvalsh", fail)
    u, s, v = thin_svd(g)
    torch.testing.assert_close(s, s_ref)
    torch.testing.assert_close(u * s @ v.T, g)
    torch.testing.assert_close((u.T @ u_ref).abs().diagonal(), torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(singular_values(g), s_ref)
    tall_u, tall_s, tall_v = thin_svd(g.T)
    torch.testing.assert_close(tall_u * tall_s @ tall_v.T, g.T)


def test_non_finite_auxiliary_gradient_never_decides():
    torch.manual_seed(0)
    model = mlp(20, (8, 8), 3)
    spec = {"rules": [{"match": "hidden1", "trigger": {"kind": "gradient"}, "initializer": {"kind": "gradmax"}}]}
    grown = archgrow.wrap(model, spec, torch.randn(1, 20))
    opt = torch.optim.SGD(grown.parameters(), lr=0.1)
    x = torch.randn(16, 20)
    x[0, 0] = float("nan")
    loss = torch.nn.functional.cross_entropy(grown(x), torch.randint(0, 3, (16,)))
    loss.backward()
    opt.step()
    with pytest.warns(UserWarning, match="group 'hidden1', step 1: its auxiliary gradient G holds NaN or infinite"):
        assert grown.grow_step(opt) == []
    assert grown.widths()["hidden1"] == 8 and not grown.evaluations  # skipped: no decision, no growth


def _scaled_step(scaler_scale: float | None, pass_scaler: bool) -> list:
    torch.manual_seed(0)
    model = mlp(6, (5,), 3)
    x, y = torch.randn(16, 6, generator=torch.Generator().manual_seed(1)), torch.randint(0, 3, (16,))
    grown = wrap(model, gradient_spec(), x[:1])
    opt = torch.optim.SGD(grown.parameters(), lr=0.1)
    loss = F.cross_entropy(grown(x), y)
    if scaler_scale is None:
        loss.backward()
        opt.step()
        grown.grow_step(opt)
    else:
        scaler = torch.amp.GradScaler("cpu", init_scale=scaler_scale)
        scaler.scale(loss).backward()
        scaler.step(opt)  # unscales .grad: the unit norms are the true ones
        grown.grow_step(opt, scaler=scaler if pass_scaler else None)
        scaler.update()
    return [(e.score, e.threshold) for e in grown.evaluations]


def test_gradient_trigger_divides_g_by_the_grad_scalers_scale():
    """Mixed precision: G is captured from the scaled loss, .grad is unscaled by scaler.step; with
    the scaler passed, T_grad scores what it would without scaling."""
    plain = _scaled_step(None, False)
    scaled = _scaled_step(1024.0, True)
    assert plain and len(plain) == len(scaled)
    for (s0, t0), (s1, t1) in zip(plain, scaled, strict=True):
        assert s1 == pytest.approx(s0, rel=1e-4) and t1 == pytest.approx(t0, rel=1e-4)
    unscaled = _scaled_step(1024.0, False)  # the scaler not passed: G is 1024 times too large
    assert unscaled[0][0] > 500 * plain[0][0]


def test_grow_step_refuses_a_scaler_that_is_not_a_grad_scaler():
    grown = wrap(mlp(6, (5,), 3), gradient_spec(), torch.randn(1, 6))
    with pytest.raises(ArchgrowError, match="scaler must be the torch.amp.GradScaler .* got float"):
        grown.grow_step(scaler=1024.0)
