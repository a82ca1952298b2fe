"""wrap / grow_step end to end: presets on the paper's three models, function preservation of every
NORTH* initializer, seeds, memory, events, and the generated-data trend of the paper's Figure 1."""

from __future__ import annotations

import gc
import glob
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import archgrow
from archgrow import ArchgrowError, wrap
from archgrow.data import generated
from archgrow.models import mlp, vgg11, wrn28

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(glob.glob(str(ROOT / "specs" / "*.yaml")))
MNIST = ROOT.parent / "shared" / "data" / "mnist"


def small_models():
    return {
        "mlp": (lambda: mlp(64, (8, 8), 2), (64,), 2),
        # PyTorch's init: the presets must grow within 4 random-data steps, which T_grad does not
        # do from the paper's Xavier init on VGG-11 (its gradients are smaller there)
        "vgg11": (lambda: vgg11(width_mult=0.125, init="torch"), (3, 32, 32), 10),
        "wrn28": (lambda: wrn28(width_mult=0.25), (3, 32, 32), 10),
    }


def train(grown, optimizer, x, y, steps, batch=16):
    events = []
    for step in range(steps):
        i = (step * batch) % len(x)
        xb, yb = x[i : i + batch], y[i : i + batch]
        grown.train()
        loss = F.cross_entropy(grown(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        events += grown.grow_step(optimizer, loss_fn=lambda xb=xb, yb=yb: F.cross_entropy(grown(xb), yb))
    return events


def data_for(shape, classes, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g), torch.randint(0, classes, (n,), generator=g)


def shortened(spec, total_steps, buffer_size=None):
    """A preset with its schedule's total_steps shortened so a few steps cover several stages, and
    (for CNNs on CPU) a small activation buffer, as the paper's CNN runs used the mini-batch."""
    data = spec.model_dump(mode="json")
    for rule in data["rules"]:
        trig = rule.get("trigger") or {}
        if trig.get("kind") in ("linear_schedule", "batched_schedule"):
            trig["total_steps"] = total_steps
        if trig.get("kind") == "activation" and buffer_size:
            trig["buffer_size"] = buffer_size
    return archgrow.spec.parse_spec(data, source=spec.source)


# --------------------------------------------------------------------------- presets
@pytest.mark.parametrize("model_name", ["mlp", "vgg11", "wrn28"])
@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: Path(p).stem)
def test_preset_runs_and_grows(preset, model_name):
    name = Path(preset).stem
    build, shape, classes = small_models()[model_name]
    torch.manual_seed(0)
    model = build()
    x, y = data_for(shape, classes)
    spec = archgrow.load_spec(preset)
    spec = shortened(spec, total_steps=8, buffer_size=None if model_name == "mlp" else 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few buffered samples for wide groups: expected here
        grown = wrap(model, spec, x[:1])
        start = dict(grown.widths())
        # The authors' T_grad threshold is the norm of Adam's step, ~lr * sqrt(fan) per unit: on the
        # random-data VGG-11 it exceeds the auxiliary gradient at lr 1e-3 in the first steps, so
        # those presets are checked at a step size where it is due to fire.
        authors_gradient = name.endswith("-authors") and spec.rules[0].trigger.kind == "gradient"
        lr = 1e-5 if authors_gradient and model_name == "vgg11" else 1e-3
        optimizer = torch.optim.Adam(grown.parameters(), lr=lr)
        events = train(grown, optimizer, x, y, steps=4)
    widths = grown.widths()
    if name == "static":
        assert events == [] and widths == start
        return
    assert events, f"{name} never grew {model_name}"
    for e in events:
        assert e.new_width > e.old_width
        assert e.new_width <= grown.growing[e.group].max_width
        assert widths[e.group] >= e.new_width
    # the grown model still trains and its widths agree with a fresh trace
    train(grown, optimizer, x, y, steps=1)
    assert grown.graph.retrace().widths() == grown.widths()


# --------------------------------------------------------------------------- function preservation
@pytest.mark.parametrize("init", ["random", "select", "preactivation", "weight", "gradmax"])
@pytest.mark.parametrize("model_name", ["mlp", "vgg11", "wrn28"])
def test_initializers_preserve_function(init, model_name):
    """Every group grows in the same step (for GradMax: neighbours' new units meet stale auxiliary
    gradients, padded with zeros); the function must not move."""
    build, shape, classes = small_models()[model_name]
    torch.manual_seed(1)
    model = build()
    x, _ = data_for(shape, classes, n=32)
    rules = [
        {"match": "*", "trigger": {"kind": "linear_schedule", "final_width": "3x", "total_steps": 1}},
        {"match": "*", "initializer": {"kind": "select" if init == "preactivation" else init}},
    ]
    if init == "preactivation":
        rules.append({"match": "*", "layers": "dense", "initializer": {"kind": "preactivation"}})
    spec = {"seed": 3, "defaults": {"max_width": "3x"}, "rules": rules}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grown = wrap(model, spec, x[:1])
        grown.train()
        out = grown(x)  # fills the buffer
        if init == "gradmax":
            F.cross_entropy(out, torch.zeros(len(x), dtype=torch.long)).backward()
        grown.eval()
        with torch.no_grad():
            before = grown(x)
        events = grown.grow_step()
    assert {e.group for e in events} == set(grown.growing), "every group should grow once"
    if init == "preactivation" and model_name == "mlp":
        assert {e.initializer for e in events} == {"preactivation"}
    with torch.no_grad():
        after = grown(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    if init == "gradmax":  # zero fan-in, fan-out at the mean norm
        for b in grown.growing.values():
            assert b.producer.weight.detach()[b.initial_width :].abs().max() == 0
        return
    # the new units are not degenerate: each producer got non-zero fan-in rows at the mean norm
    for b in grown.growing.values():
        w = b.producer.weight.detach().reshape(b.width, -1)
        new = w[b.initial_width : b.initial_width + 1].norm(dim=1)
        old_mean = w[: b.initial_width].norm(dim=1).mean()
        torch.testing.assert_close(new, old_mean.expand_as(new), rtol=1e-3, atol=1e-6)


def test_select_beats_random_candidates_on_its_score():
    """Select keeps the highest-scoring candidates: its neurons score at least as well as random ones."""
    from archgrow.initializers.base import draw, score

    torch.manual_seed(0)
    d = generated(8)
    model = mlp(64, (6,), 2)
    grown = wrap(model, {"seed": 0, "rules": [{"match": "hidden1", "initializer": {"kind": "select"}}]}, d.x_train[:1])
    grown.train()
    grown(d.x_train[:512])
    b = grown.growing["hidden1"]
    chosen = b.initializer.fan_in(b, 2, grown_ctx(grown))
    m = grown._measure([b])["hidden1"]
    ctx = grown_ctx(grown)
    chosen_scores = score(b, m, chosen, ctx)
    random_scores = score(b, m, draw(b, 200, torch.Generator().manual_seed(5)), ctx)
    assert chosen_scores.min() >= torch.quantile(random_scores, 0.9)


def grown_ctx(grown):
    from archgrow.growth.binding import InitContext

    return InitContext(grown.model, torch.Generator().manual_seed(0), lambda b: grown._measure([b])[b.name])


# --------------------------------------------------------------------------- events, seeds, state
def run_select(seed, steps=30):
    torch.manual_seed(0)
    d = generated(16)
    model = mlp(64, (4,), 2)
    spec = {"seed": seed, "defaults": {"max_width": 64}, "rules": [{"match": "*"}]}
    grown = wrap(model, spec, d.x_train[:1])
    optimizer = torch.optim.Adam(grown.parameters(), lr=3e-3)
    train(grown, optimizer, d.x_train, d.y_train, steps, batch=128)
    return grown, optimizer


def test_events_record_the_decision():
    grown, optimizer = run_select(seed=0)
    assert grown.history, "NORTH-Select should grow a width-4 layer on 16 independent features"
    for e in grown.history:
        assert e.group == "hidden1" and e.trigger == "activation" and e.initializer == "select"
        assert e.score > e.threshold  # the code form: grow when the count exceeds floor(base*M)
        assert e.new_width - e.old_width == min(e.score - e.threshold, 64 - e.old_width)
        assert e.trigger_seconds >= 0 and e.initializer_seconds > 0
        assert set(e.to_dict()) >= {"step", "group", "old_width", "new_width", "score", "threshold"}
    assert [e.step for e in grown.history] == sorted(e.step for e in grown.history)
    assert grown.widths()["hidden1"] == grown.history[-1].new_width
    # optimizer state follows the grown parameters
    for p in grown.parameters():
        for v in optimizer.state[p].values():
            if torch.is_tensor(v) and v.ndim:
                assert v.shape == p.shape


def test_same_seed_same_growth_and_different_seed_differs():
    a, _ = run_select(seed=7)
    b, _ = run_select(seed=7)
    c, _ = run_select(seed=8)
    assert [e.to_dict() | {"trigger_seconds": 0, "initializer_seconds": 0} for e in a.history] == [
        e.to_dict() | {"trigger_seconds": 0, "initializer_seconds": 0} for e in b.history
    ]
    torch.testing.assert_close(a.model.hidden1.weight, b.model.hidden1.weight, rtol=0, atol=0)
    wa, wc = a.model.hidden1.weight, c.model.hidden1.weight
    assert wa.shape != wc.shape or not torch.equal(wa, wc)


def test_every_n_steps_and_frozen_rules():
    torch.manual_seed(0)
    d = generated(16)
    model = mlp(64, (4, 4), 2)
    spec = {
        "defaults": {"max_width": 64},
        "rules": [
            {"match": "*", "trigger": {"kind": "linear_schedule", "final_width": 64, "total_steps": 10}},
            {"match": "hidden1", "every_n_steps": 3},
            {"match": "hidden2", "frozen": True},
        ],
    }
    grown = wrap(model, spec, d.x_train[:1])
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.01)
    train(grown, optimizer, d.x_train, d.y_train, steps=7, batch=64)
    assert {e.step for e in grown.history} == {3, 6}
    assert grown.widths()["hidden2"] == 4 and "hidden2" not in grown.growing


def test_max_width_is_respected():
    torch.manual_seed(0)
    d = generated(32)
    model = mlp(64, (4,), 2)
    grown = wrap(model, {"defaults": {"max_width": 6}, "rules": [{"match": "*"}]}, d.x_train[:1])
    optimizer = torch.optim.Adam(grown.parameters(), lr=3e-3)
    train(grown, optimizer, d.x_train, d.y_train, steps=40, batch=128)
    assert grown.widths()["hidden1"] == 6
    assert grown.history and all(e.new_width <= 6 for e in grown.history)


def test_memory_stays_flat_over_a_long_run():
    torch.manual_seed(0)
    d = generated(4)
    model = mlp(64, (4,), 2)
    spec = {"defaults": {"max_width": 16}, "rules": [{"match": "*", "trigger": {"kind": "activation", "buffer_size": 300}}]}
    grown = wrap(model, spec, d.x_train[:1])
    optimizer = torch.optim.Adam(grown.parameters(), lr=3e-3)

    def live_tensor_bytes():
        gc.collect()
        return sum(o.numel() * o.element_size() for o in gc.get_objects() if torch.is_tensor(o))

    train(grown, optimizer, d.x_train, d.y_train, steps=60, batch=128)
    widths = grown.widths()
    mid = live_tensor_bytes()
    train(grown, optimizer, d.x_train, d.y_train, steps=120, batch=128)
    end = live_tensor_bytes()
    assert grown._buffer.size == 300 and grown._buffer.capacity == 300
    if grown.widths() == widths:  # no growth in between: memory must not move at all (beyond noise)
        assert end <= mid + 4096, (mid, end)
    else:
        assert end <= mid * 1.2, (mid, end)
    assert all(not p.grad_fn for p in grown.parameters())


def test_lazy_trace_on_first_forward_and_errors_without_inputs():
    torch.manual_seed(0)
    model = mlp(64, (4,), 2)
    grown = wrap(model, {"rules": [{"match": "*"}]})
    with pytest.raises(ArchgrowError, match="not been traced yet"):
        grown.grow_step()
    grown.eval()
    grown(torch.randn(8, 64))  # traces; eval mode does not fill the buffer
    assert grown.widths()["hidden1"] == 4
    with pytest.raises(ArchgrowError, match="no input has been observed"):
        grown.grow_step()
    grown.observe(torch.randn(32, 64))
    grown.grow_step()  # now fine


# --------------------------------------------------------------------------- torchvision
def test_torchvision_resnet_grows_with_north_select():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x, y = data_for((3, 32, 32), 10, n=32)
    spec = {"defaults": {"max_width": "1.5x"}, "rules": [{"match": "layer1.*", "trigger": {"kind": "activation", "buffer_size": 16}}]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grown = wrap(model, spec, x[:1])
        optimizer = torch.optim.SGD(grown.parameters(), lr=0.01, momentum=0.9)
        events = train(grown, optimizer, x, y, steps=2)
    assert events and all(e.group.startswith("layer1.") for e in events)
    assert model.layer1[0].conv1.out_channels == grown.widths()["layer1.0.conv1"] > 64


# --------------------------------------------------------------------------- generated data (Figure 1)
def final_width(strategy, n_independent, seed, epochs=4):
    torch.manual_seed(seed)
    d = generated(n_independent)
    model = mlp(64, (4,), 2)
    trigger, init = {
        "select": ({"kind": "activation"}, {"kind": "select", "candidates": 100}),
        "weight": ({"kind": "weight"}, {"kind": "weight"}),
    }[strategy]
    spec = {"seed": seed, "defaults": {"max_width": 512}, "rules": [{"match": "*", "trigger": trigger, "initializer": init}]}
    grown = wrap(model, spec, d.x_train[:1])
    optimizer = torch.optim.Adam(grown.parameters(), lr=3e-3)
    train(grown, optimizer, d.x_train, d.y_train, steps=epochs * len(d.x_train) // 128, batch=128)
    return grown.widths()["hidden1"]


@pytest.mark.parametrize("strategy", ["select", "weight"])
def test_generated_data_width_follows_input_dimension(strategy):
    """Figure 1's trend on the paper's generated task: the layer grows from 4 and its final width
    rises with the number of independent features.  With the paper's Xavier init and a baseline
    on the full buffer, NORTH-Select stops below the cap for 1 and 2 independent features and
    reaches the 512 cap from 4 on (the paper's Figure 1 has the same step shape: 6, 17, then its
    128 cap)."""
    features = [1, 2, 4]
    seeds = [0, 1]
    widths = {f: [final_width(strategy, f, s) for s in seeds] for f in features}
    means = [sum(widths[f]) / len(seeds) for f in features]
    for f in features:
        low = f < 4 or strategy == "weight"
        assert all(4 < w < 512 if low else w == 512 for w in widths[f]), widths
    if strategy == "select":
        assert all(a < b for a, b in zip(means, means[1:], strict=False)), widths
    else:
        # T_weight counts fan-in directions, at most 64 here: the layer stops right above the input
        # dimension whatever n_f is (paper section 4.1), so the trend is flat
        assert all(w == 65 for ws in widths.values() for w in ws), widths


@pytest.mark.skipif(not MNIST.is_dir(), reason="../shared/data/mnist not present (only beside the checkout and in CI)")
def test_mnist_real_data_north_select():
    from archgrow.data import mnist

    x, y = mnist(MNIST, split="test", limit=3000)
    x_train, y_train, x_test, y_test = x[:2500], y[:2500], x[2500:], y[2500:]
    torch.manual_seed(0)
    model = mlp(784, (16, 16), 10)
    spec = {
        "defaults": {"max_width": 64},
        "rules": [
            {
                "match": "*",
                "trigger": {"kind": "activation", "buffer_size": 512},
                "initializer": {"kind": "select", "candidates": 100},
            }
        ],
    }
    grown = wrap(model, spec, x_train[:1])
    optimizer = torch.optim.Adam(grown.parameters(), lr=3e-3)
    train(grown, optimizer, x_train, y_train, steps=3 * 2500 // 128, batch=128)
    grown.eval()
    with torch.no_grad():
        accuracy = (grown(x_test).argmax(1) == y_test).float().mean().item()
    widths = grown.widths()
    assert widths["hidden1"] > 16 and widths["hidden2"] > 16
    assert accuracy > 0.8, accuracy


