"""archgrow.grow: tensors, attributes, optimizer state, errors, devices and dtypes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import archgrow
from archgrow import models
from archgrow.surgery.channels import trial

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class ConvNet(nn.Module):
    """conv -> BN -> ReLU -> conv -> flatten -> Linear: producer, follower, flatten consumer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 5, 3, stride=2, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 7)
        self.head = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.head(torch.relu(self.fc(torch.flatten(x, 1))))


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


def test_grow_updates_tensors_and_attributes() -> None:
    torch.manual_seed(0)
    model = ConvNet()
    with torch.no_grad():  # non-trivial BN statistics, to see that new entries are reset
        model.bn1.running_mean.uniform_(-1, 1)
        model.bn1.running_var.uniform_(0.5, 2)
    old = copy.deepcopy(model)
    g = archgrow.trace(model, torch.randn(1, 3, 8, 8))
    archgrow.grow(g, "conv1", 2)
    assert model.conv1.weight.shape == (8, 3, 3, 3) and model.conv1.out_channels == 8
    assert model.conv2.weight.shape == (5, 8, 3, 3) and model.conv2.in_channels == 8
    assert model.bn1.num_features == 8
    # existing entries untouched, new entries as specified
    assert torch.equal(model.conv1.weight[:6], old.conv1.weight)
    assert torch.equal(model.conv1.bias[6:], torch.zeros(2))
    assert torch.equal(model.conv2.weight[:, :6], old.conv2.weight)
    assert torch.equal(model.conv2.weight[:, 6:], torch.zeros(5, 2, 3, 3))
    assert torch.equal(model.bn1.running_mean[6:], torch.zeros(2))
    assert torch.equal(model.bn1.running_var[6:], torch.ones(2))
    assert torch.equal(model.bn1.weight[6:], torch.ones(2))
    assert torch.equal(model.bn1.bias[6:], torch.zeros(2))
    assert torch.equal(model.bn1.running_mean[:6], old.bn1.running_mean)
    assert model.bn1.num_batches_tracked == old.bn1.num_batches_tracked
    # new fan-in has the mean norm of the existing filters
    norms = model.conv1.weight.flatten(1).norm(dim=1)
    assert torch.allclose(norms[6:], norms[:6].mean().expand(2), rtol=1e-5)
    assert g.group("conv1").width == 8


def test_flatten_consumer_gets_hw_block_per_channel() -> None:
    torch.manual_seed(0)
    model = ConvNet()
    old = copy.deepcopy(model)
    g = archgrow.trace(model, torch.randn(1, 3, 8, 8))
    (fc,) = [m for m in g.group("conv2").consumers if m.name == "fc"]
    assert fc.slots == (archgrow.Slot(0, 16),)
    archgrow.grow(g, "conv2", 1)
    assert model.fc.in_features == 6 * 16
    assert torch.equal(model.fc.weight[:, :80], old.fc.weight)
    assert torch.equal(model.fc.weight[:, 80:], torch.zeros(7, 16))


def test_growth_preserves_function_and_keeps_training() -> None:
    torch.manual_seed(0)
    model = ConvNet().eval()
    x = torch.randn(4, 3, 8, 8)
    ref = model(x).detach()
    g = archgrow.trace(model, x[:1])
    for name in ("conv1", "conv2", "fc"):
        archgrow.grow(g, name, 3)
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-6)
    assert g.retrace().widths() == g.widths()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.Adam(p, lr=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True),
        lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
        lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5),
        lambda p: torch.optim.Adagrad(p, lr=1e-2),
    ],
    ids=["adam", "adamw-amsgrad", "sgd-momentum", "rmsprop", "adagrad"],
)
def test_optimizer_state_is_padded(make_opt) -> None:
    torch.manual_seed(0)
    model = ConvNet()
    x = torch.randn(4, 3, 8, 8)
    opt = make_opt(model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _train_step(model, opt, x)
    sched.step()
    before = {k: v.clone() for k, v in opt.state[model.conv1.weight].items() if torch.is_tensor(v)}
    params_before = [id(p) for group in opt.param_groups for p in group["params"]]
    g = archgrow.trace(model, x[:1])
    archgrow.grow(g, "conv1", 2, optimizer=opt)
    assert [id(p) for group in opt.param_groups for p in group["params"]] == params_before
    for p in model.parameters():
        for key, value in opt.state[p].items():
            if torch.is_tensor(value) and value.ndim > 0:
                assert value.shape == p.shape, (key, value.shape, p.shape)
    state = opt.state[model.conv1.weight]
    for key, value in before.items():
        if value.ndim == 0:  # step
            assert torch.equal(state[key], value)
        else:
            assert torch.equal(state[key][:6], value), key
            assert torch.count_nonzero(state[key][6:]) == 0, key
    # A new channel's fan-out starts at zero, so it is the fan-out (not the fan-in, whose gradient
    # flows through that zero) that the first step after growth must move.
    new_fan_out = model.conv2.weight[:, 6:].detach().clone()
    _train_step(model, opt, x)
    sched.step()
    assert not torch.equal(model.conv2.weight[:, 6:], new_fan_out), "the optimizer must update new entries"
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)


def test_gradient_is_padded_too() -> None:
    torch.manual_seed(0)
    model = ConvNet()
    x = torch.randn(2, 3, 8, 8)
    model(x).sum().backward()
    g = archgrow.trace(model, x[:1])
    grad = model.conv2.weight.grad.clone()
    archgrow.grow(g, "conv1", 1)
    assert model.conv2.weight.grad.shape == model.conv2.weight.shape
    assert torch.equal(model.conv2.weight.grad[:, :6], grad)


def test_explicit_fan_in_and_fan_out() -> None:
    torch.manual_seed(0)
    model = models.mlp(8, (4,), 3)
    g = archgrow.trace(model, torch.randn(1, 8))
    fan_in = torch.randn(2, 8)
    fan_out = torch.randn(3, 2)
    archgrow.grow(g, "hidden1", 2, fan_in=fan_in, fan_out={"out": fan_out})
    assert torch.equal(model.hidden1.weight[4:], fan_in)
    assert torch.equal(model.out.weight[:, 4:], fan_out)


def test_explicit_tensors_are_validated() -> None:
    model = models.mlp(8, (4,), 3)
    g = archgrow.trace(model, torch.randn(1, 8))
    with pytest.raises(archgrow.GrowthError, match=r"expected \(2, 8\)"):
        archgrow.grow(g, "hidden1", 2, fan_in=torch.randn(2, 9))
    with pytest.raises(archgrow.GrowthError, match="not among group 'hidden1' consumers: out"):
        archgrow.grow(g, "hidden1", 2, fan_out={"nope": torch.randn(3, 2)})
    assert model.hidden1.out_features == 4, "a rejected request must not change the model"


@pytest.mark.parametrize(
    ("group", "k", "message"),
    [
        ("out", 1, "frozen: reaches the model output"),
        ("hidden1", 0, "k must be a positive int"),
        ("hidden1", 1.5, "k must be a positive int"),
        ("nope", 1, "no width group named 'nope'; the groups are: hidden1, hidden2, out"),
    ],
)
def test_bad_requests_are_rejected(group: str, k, message: str) -> None:
    g = archgrow.trace(models.mlp(8, (4, 4), 3), torch.randn(1, 8))
    with pytest.raises(archgrow.ArchgrowError, match=message):
        archgrow.grow(g, group, k)


def test_step_multiple_is_enforced() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(4, 8), nn.Conv2d(8, 2, 1))
    g = archgrow.trace(model, torch.randn(1, 3, 4, 4))
    assert g.group("0").step == 2
    with pytest.raises(archgrow.GrowthError, match="multiples of 2"):
        archgrow.grow(g, "0", 3)
    archgrow.grow(g, "0", 4)
    assert model[1].num_groups == 6 and model[1].num_channels == 12


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_device_dtype_and_requires_grad_are_kept(device: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = ConvNet().to(device=device, dtype=dtype).eval()
    model.conv1.bias.requires_grad_(False)
    x = torch.randn(2, 3, 8, 8, device=device, dtype=dtype)
    ref = model(x).detach()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = archgrow.trace(model, x[:1])
    archgrow.grow(g, "conv1", 3, optimizer=opt)
    for t in list(model.parameters()) + list(model.buffers()):
        assert t.device.type == device and (t.dtype == dtype or not t.is_floating_point())
    assert not model.conv1.bias.requires_grad and model.conv1.weight.requires_grad
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-6)
    model.train()
    _train_step(model, opt, x)


def test_generator_makes_growth_reproducible() -> None:
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = models.mlp(8, (4,), 3)
        g = archgrow.trace(model, torch.randn(1, 8))
        archgrow.grow(g, "hidden1", 3, generator=torch.Generator().manual_seed(7))
        weights.append(model.hidden1.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_graph_node_shapes_follow_growth() -> None:
    model = ConvNet()
    g = archgrow.trace(model, torch.randn(1, 3, 8, 8))
    conv_node = next(n for n, d in g.nx.nodes(data=True) if d["module"] == "conv1")
    assert g.nx.nodes[conv_node]["shape"] == (1, 6, 8, 8)
    archgrow.grow(g, "conv1", 2)
    assert g.nx.nodes[conv_node]["shape"] == (1, 8, 8, 8)


def test_node_shapes_deferred_inside_the_growth_check_are_right_after_it() -> None:
    """The growth check defers node shapes while it grows and undoes groups: a group undone is
    left as it was, one still grown at the end is refreshed then (once)."""
    model = ConvNet()
    g = archgrow.trace(model, torch.randn(1, 3, 8, 8))
    conv_node = next(n for n, d in g.nx.nodes(data=True) if d["module"] == "conv1")
    with g.shapes_deferred():
        with trial(g, g.group("conv1"), model, growth_only=True):
            archgrow.grow(g, "conv1", 2)
            assert g.nx.nodes[conv_node]["shape"] == (1, 6, 8, 8)  # deferred
    assert g.nx.nodes[conv_node]["shape"] == (1, 6, 8, 8)
    with g.shapes_deferred():
        archgrow.grow(g, "conv1", 2)
        archgrow.grow(g, "conv1", 1)
    assert g.nx.nodes[conv_node]["shape"] == (1, 9, 8, 8)
    archgrow.grow(g, "conv1", 1)  # outside, at once again
    assert g.nx.nodes[conv_node]["shape"] == (1, 10, 8, 8)
    with g.shapes_deferred():  # nested: the outermost block refreshes
        archgrow.grow(g, "conv1", 1)
        with g.shapes_deferred():
            archgrow.grow(g, "conv1", 1)
        assert g.nx.nodes[conv_node]["shape"] == (1, 10, 8, 8)
    assert g.nx.nodes[conv_node]["shape"] == (1, 12, 8, 8)


def test_stale_graph_is_detected() -> None:
    model = models.mlp(8, (4,), 3)
    g = archgrow.trace(model, torch.randn(1, 8))
    g2 = archgrow.trace(model, torch.randn(1, 8))
    archgrow.grow(g, "hidden1", 1)
    with pytest.raises(archgrow.GrowthError, match="trace it again"):
        archgrow.grow(g2, "hidden1", 1)


def test_backward_after_growth_while_last_graph_is_alive():
    """autograd caches a leaf's gradient accumulator (with its shape) while an old graph lives;
    growth must invalidate it, or the next backward fails with a shape mismatch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    graph = archgrow.trace(model, torch.randn(1, 6))
    opt = torch.optim.Adam(model.parameters())
    loss = model(torch.randn(5, 6)).sum()  # kept alive across the growth, like a training loop's `loss`
    loss.backward()
    opt.step()
    archgrow.grow(graph, graph.groups[0], 3, optimizer=opt)
    loss = model(torch.randn(5, 6)).sum()
    loss.backward()
    assert model[0].weight.grad.shape == (7, 6) and model[2].weight.grad.shape == (2, 7)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([[0.0] * 8] * 2, "must be a tensor or a mapping from module name to tensor, got list"),
        (torch.full((2, 8), float("nan")), "has NaN or infinite entries"),
        (torch.full((2, 8), float("inf")), "has NaN or infinite entries"),
        (torch.ones(2, 8, dtype=torch.long), "must be a floating-point tensor, got a torch.int64 tensor"),
        ({"hidden1": "weights"}, "must be a floating-point tensor, got str"),
    ],
)
def test_explicit_fan_in_must_be_finite_floating_tensors(bad, message) -> None:
    model = models.mlp(8, (4,), 2)
    graph = archgrow.trace(model, torch.randn(1, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(archgrow.GrowthError, match=message):
        archgrow.grow(graph, "hidden1", 2, fan_in=bad)
    assert graph.widths()["hidden1"] == 4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing changed
