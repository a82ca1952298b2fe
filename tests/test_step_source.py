"""``source: step``: activation triggers measured on the training forward's own values.

The captured values must be exactly what a measurement forward on the same batch at the same
weights gives (the only intended differences are the batch and the pre-update weights), the
baseline must come from the first step, and misuse must fail with a message that says what to do.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archgrow
from archgrow import ArchgrowError, wrap
from archgrow.growth.measure import measure, measuring
from archgrow.models import mlp, vgg11


def spec(source: str, initializer: str = "random", **trigger) -> dict:
    trig = {"kind": "activation", "source": source, "running_max": False, **trigger}
    return {"seed": 0, "defaults": {"max_width": "2x"}, "rules": [{"match": "*", "trigger": trig, "initializer": {"kind": initializer}}]}


def train_step(grown: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """One training forward (the one ``source: step`` captures), backward and update."""
    grown.train()
    loss = F.cross_entropy(grown(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def small_step_mlp() -> tuple[nn.Module, torch.Tensor]:
    """A 20-8-3 MLP wrapped with the random preset on ``source: step``, and a batch of 16."""
    torch.manual_seed(0)
    model = mlp(20, (8,), 3)
    x = torch.randn(16, 20)
    return wrap(model, spec("step"), x[:1]), x


class TwoConv(nn.Module):
    """conv1 -> ``middle`` -> conv2 -> head: ``middle`` is what conv1's probe walks through."""

    def __init__(self, *middle: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.middle = nn.Sequential(*middle)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.middle(self.conv1(x))
        return self.head(F.adaptive_avg_pool2d(F.relu(self.conv2(h)), 1).flatten(1))


def conv_inplace() -> TwoConv:
    """torchvision style: an in-place ReLU edits the conv's output right after it is produced."""
    return TwoConv(nn.ReLU(inplace=True), nn.MaxPool2d(2))


def conv_bn() -> TwoConv:
    """A norm layer in the probe chain: its value is replayed in eval mode, not hooked."""
    return TwoConv(nn.BatchNorm2d(6), nn.ReLU())


CASES = {
    "mlp": (lambda: mlp(20, (8, 8), 3), (20,), 3),
    "vgg11": (lambda: vgg11(width_mult=0.125), (3, 32, 32), 10),
    "inplace_relu": (conv_inplace, (3, 8, 8), 4),
    "batchnorm": (conv_bn, (3, 8, 8), 4),
}


@pytest.mark.parametrize("name", list(CASES))
def test_captured_values_equal_a_measurement_forward(name):
    make, shape, _ = CASES[name]
    torch.manual_seed(0)
    model = make()
    x = torch.randn(16, *shape)
    grown = wrap(model, spec("step"), x[:1])
    grown.train()
    if name == "batchnorm":
        # batch statistics would change conv2's input; with running statistics on both sides the
        # replayed conv1 value (eval mode, by design) is the only thing left to compare
        model.middle[0].eval()
    grown(x)  # the training forward: hooks keep the probed values
    bindings = list(grown.growing.values())
    hooked = [b.name for b in bindings if b.probe.end_module]
    if name in ("vgg11", "inplace_relu"):
        assert hooked, "a pool module ends these probes: it should be hooked, not replayed"
    if name == "batchnorm":
        assert grown.growing["conv1"].probe.end_module is None  # the norm layer forces a replay
    captured = grown._captured(bindings)
    with measuring(model):  # the same weights and batch through the measurement path
        reference = measure(model, [b.probe for b in bindings], (x,))
    for b in bindings:
        for field in ("x", "z", "h"):
            got, want = getattr(captured[b.name], field), getattr(reference[b.name], field)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=f"{b.name}.{field}")


@pytest.mark.parametrize("middle", ["rrelu", "functional_rrelu"])
def test_random_chain_steps_are_replayed_in_eval_mode_not_redrawn(middle):
    """Element-wise chains are replayed without a mode switch; a random step (RReLU draws slopes in
    training mode) must still get the eval-mode replay and leave the RNG where it was."""

    class FunctionalRReLU(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.rrelu(x, training=self.training)

    torch.manual_seed(0)
    model = TwoConv(nn.RReLU() if middle == "rrelu" else FunctionalRReLU(), nn.MaxPool2d(2))
    x = torch.randn(4, 3, 8, 8)
    grown = wrap(model, spec("step"), x[:1])
    probe = grown.growing["conv1"].probe
    assert not probe.stateless and probe.end_module is None
    assert wrap(mlp(20, (8, 8), 3), spec("step"), torch.randn(1, 20)).growing["hidden1"].probe.stateless
    grown.train()
    grown(x)
    state = torch.get_rng_state()
    m = grown._captured([grown.growing["conv1"]])["conv1"]
    assert torch.equal(torch.get_rng_state(), state)
    if middle == "rrelu":  # (fx bakes the functional form's training=True into the graph)
        slope = (1 / 8 + 1 / 3) / 2  # RReLU in eval mode: the mean of its slope range
        torch.testing.assert_close(m.h, F.max_pool2d(F.leaky_relu(m.z, slope), 2))
    assert all(mod.training for mod in model.modules())


def test_inplace_activation_does_not_corrupt_the_producer_output():
    torch.manual_seed(0)
    model = conv_inplace()
    x = torch.randn(4, 3, 8, 8)
    grown = wrap(model, spec("step"), x[:1])
    grown.train()
    grown(x)
    m = grown._captured([grown.growing["conv1"]])["conv1"]
    assert (m.z < 0).any()  # the conv output before the in-place ReLU
    torch.testing.assert_close(m.z, model.conv1(x).detach())


@pytest.mark.parametrize("name", ["mlp", "vgg11"])
def test_baseline_is_the_first_steps_forward_and_equals_the_buffer_one(name):
    """Both sources see the first batch at the initial weights before anything is updated."""
    make, shape, classes = CASES[name]
    x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, classes, (32,), generator=torch.Generator().manual_seed(2))
    bases, widths = {}, {}
    for source in ("buffer", "step"):
        torch.manual_seed(0)
        extra = {"buffer_size": 32} if source == "buffer" else {}
        grown = wrap(make(), spec(source, **extra), x[:1])
        opt = torch.optim.SGD(grown.parameters(), lr=0.0)  # no update: both sources see the same weights
        for _ in range(3):
            train_step(grown, opt, x, y)
            grown.grow_step(opt)
        bases[source] = {b.name: b.trigger.base for b in grown.growing.values()}
        widths[source] = grown.widths()
    assert bases["buffer"] == bases["step"]
    assert widths["buffer"] == widths["step"]  # lr 0 and a function-preserving init: the same decisions


def test_select_grows_from_step_activations_and_preserves_function():
    torch.manual_seed(0)
    model = vgg11(width_mult=0.125)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    grown = wrap(model, spec("step", "select", gamma=0.8), x[:1])
    opt = torch.optim.Adam(grown.parameters(), lr=1e-3)
    events = []
    for _ in range(3):
        train_step(grown, opt, x, y)
        grown.eval()
        before = grown(x)
        events += grown.grow_step(opt)
        torch.testing.assert_close(grown(x), before, rtol=1e-5, atol=1e-5)
    assert events, "gamma 0.8: the first steps grow"
    per_step = [sum(e.step == s for e in events) for s in range(1, 4)]
    assert max(per_step) > 1  # a later group re-measured (on the latest batch) after an earlier one grew


def test_grow_step_without_a_training_forward_says_what_to_do():
    grown, x = small_step_mlp()
    grown.eval()
    grown(x)  # evaluation forwards are not captured
    with pytest.raises(ArchgrowError, match=r"group 'hidden1' .*source: step.*training mode"):
        grown.grow_step()


def test_trial_forwards_do_not_replace_the_captured_step():
    grown, x = small_step_mlp()
    grown.train()
    grown(x)
    kept = grown._capture.measurement(grown.growing["hidden1"].probe).h.clone()
    grown._trial_loss(lambda: grown(torch.randn(5, 20)).sum(), grad=False)
    assert torch.equal(grown._capture.measurement(grown.growing["hidden1"].probe).h, kept)


def test_buffer_size_with_step_source_is_rejected():
    with pytest.raises(archgrow.SpecError, match=r"rules\[0\]\.trigger: buffer_size .* source: step"):
        archgrow.spec.parse_spec(spec("step", buffer_size=64), source="s.yaml")


def test_checkpoint_keeps_the_pending_baseline():
    grown, x = small_step_mlp()
    state = grown.grower_state()
    assert state["unstarted"] == ["hidden1"]
    grown.train()
    grown(x)
    grown.grow_step()
    assert grown.grower_state()["unstarted"] == []
    fresh = wrap(mlp(20, (8,), 3), spec("step"), x[:1])
    fresh.load_grower_state(grown.grower_state())
    assert fresh._unstarted == set()
    assert fresh.growing["hidden1"].trigger.state_dict() == grown.growing["hidden1"].trigger.state_dict()
