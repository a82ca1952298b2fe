"""The paper's setup by default and the authors' behaviours as named options (issue 15): base
init, baselines on a full buffer, T_grad against the optimizer's step, NORTH-Weight without
projection, Table 2's buffer per model kind, and Fashion-MNIST."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archgrow
from archgrow import ArchgrowError, wrap
from archgrow.data import fashion_mnist
from archgrow.data.fashion_mnist import DEBIAN_ROOT, available
from archgrow.ir.roles import FAN_IN, FAN_OUT
from archgrow.models import initialize, mlp, vgg11, wrn28
from archgrow.runner import parse_experiment
from archgrow.runner.build import build_model, load_data, scale_groups
from archgrow.surgery.channels import unit_norms_by_roles

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- base init
def _dense_and_convs(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize(
    "build", [lambda **k: mlp(784, (64, 32), 10, **k), lambda **k: vgg11(width_mult=0.125, **k), lambda **k: wrn28(width_mult=0.25, **k)]
)
def test_paper_init_is_xavier_uniform_with_zero_bias(build) -> None:
    torch.manual_seed(0)
    model = build()  # init="paper" is the default
    for m in _dense_and_convs(model):
        w = m.weight.detach()
        fan_in = w[0].numel()
        fan_out = w.shape[0] * (w[0, 0].numel() if w.dim() > 2 else 1)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert w.abs().max() <= bound + 1e-7
        assert w.abs().max() > 0.9 * bound  # drawn over the whole range, not a smaller one
        # uniform on [-b, b] has variance b^2 / 3
        assert abs(w.var().item() - bound**2 / 3) < 0.25 * bound**2 / 3
        if m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0


def test_torch_init_keeps_pytorch_defaults_and_kaiming_is_he_normal() -> None:
    torch.manual_seed(0)
    model = mlp(784, (256,), 10, init="torch")
    w, b = model.hidden1.weight.detach(), model.hidden1.bias.detach()
    assert w.abs().max() <= 1 / math.sqrt(784) + 1e-7 and torch.count_nonzero(b) == b.numel()
    model = mlp(784, (256,), 10, init="kaiming")
    assert abs(model.hidden1.weight.std().item() - math.sqrt(2 / 784)) < 0.05 * math.sqrt(2 / 784)
    assert torch.count_nonzero(model.hidden1.bias) == 0
    with pytest.raises(ValueError, match="unknown init 'xavier'; accepted: 'paper', 'torch', 'kaiming'"):
        mlp(8, (4,), 2, init="xavier")


def test_initialize_with_seed_leaves_the_global_rng_alone() -> None:
    model = mlp(16, (8,), 2)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    initialize(model, "paper", seed=3)
    first = model.hidden1.weight.detach().clone()
    assert torch.equal(torch.get_rng_state(), state)
    initialize(model, "paper", seed=3)
    assert torch.equal(model.hidden1.weight, first)


def _experiment(**model):
    return parse_experiment(
        {"model": {"name": "mlp", "hidden": [4, 4], **model}, "data": {"kind": "digits"}, "baselines": {"big": 4}}
    )


@pytest.mark.parametrize("scheme", [None, "paper", "torch"])
def test_static_baselines_are_reinitialised_like_the_growing_start(scheme) -> None:
    exp = _experiment(**({"init": scheme} if scheme else {}))
    data = load_data(exp.data)
    model = build_model(exp.model, data, seed=0)
    graph = archgrow.trace(model, data.x_train[:1])
    from archgrow.runner.build import base_init

    scale_groups(graph, 4, ["hidden1", "hidden2"], seed=0, init=base_init(exp.model))
    assert model.hidden1.weight.shape == (16, 64) and model.hidden2.weight.shape == (16, 16)
    zero_bias = torch.count_nonzero(model.hidden2.bias) == 0
    assert zero_bias == (scheme in (None, "paper"))
    bound = math.sqrt(6 / 32) if scheme != "torch" else 1 / 4  # Xavier 16x16, or U(+-1/sqrt(16))
    assert model.hidden2.weight.abs().max() <= bound + 1e-7


def test_external_models_keep_their_own_init_unless_asked() -> None:
    pytest.importorskip("torchvision")
    data = load_data(parse_experiment({"model": {"name": "mlp"}, "data": {"kind": "digits", "images": True}, "baselines": {"s": 1}}).data)
    cfg = parse_experiment(
        {"model": {"name": "resnet18", "kwargs": {}}, "data": {"kind": "digits", "images": True}, "baselines": {"s": 1}}
    ).model
    own = build_model(cfg, data, seed=0)
    assert torch.count_nonzero(own.fc.bias) > 0  # torchvision's Linear keeps PyTorch's bias init
    asked = build_model(cfg.model_copy(update={"init": "paper"}), data, seed=0)
    assert torch.count_nonzero(asked.fc.bias) == 0


# --------------------------------------------------------------------------- baselines on a full buffer
def _select_spec(**trigger):
    return {
        "defaults": {"max_width": 32},
        "rules": [{"match": "*", "trigger": {"kind": "activation", **trigger}, "initializer": {"kind": "random"}}],
    }


def _count_base(grown, x):
    """gamma * phi(f_0) / M computed by hand on ``x`` at the current weights."""
    from archgrow.metrics import activation_count

    h = F.relu(grown.model.hidden1(x)).detach()
    return 0.97 * activation_count(h, 1, epsilon=0.01, scale="samples") / grown.model.hidden1.out_features


def test_prefill_takes_the_baseline_on_the_full_buffer() -> None:
    torch.manual_seed(0)
    x = torch.randn(300, 64) @ torch.randn(64, 64)
    grown = wrap(mlp(64, (16,), 2), _select_spec(), x[:1])
    assert grown.wants_prefill
    batches = [x[i : i + 10] for i in range(0, 300, 10)]
    read = []

    def loader():  # (x, y) batches, as a DataLoader yields
        for xb in batches:
            read.append(xb)
            yield xb, torch.zeros(len(xb))

    n = grown.prefill(loader())
    assert n == 64 and len(read) == 7  # 2 x max width, read only until full
    buffered = torch.cat([*reversed(batches[1:7]), batches[0][:4]])  # newest first, the oldest cut
    assert torch.equal(grown._buffer.tensors()[0], buffered)
    assert grown.growing["hidden1"].trigger.base == pytest.approx(_count_base(grown, buffered))
    # a baseline on the first 10 samples alone is smaller (the count cannot exceed the rows)
    assert _count_base(grown, batches[0]) < grown.growing["hidden1"].trigger.base
    assert not grown.wants_prefill  # done
    with pytest.raises(ArchgrowError, match="prefill: the baselines were already taken"):
        grown.prefill(x)


def test_without_prefill_the_first_batch_is_the_baseline_and_a_warning_says_so() -> None:
    torch.manual_seed(0)
    x = torch.randn(20, 64)
    grown = wrap(mlp(64, (16,), 2), _select_spec(), x[:1])
    with pytest.warns(UserWarning, match=r"hidden1: baseline phi\(f_0\) taken on the first batch \(20 samples\), not on a full buffer of 64"):
        grown(x)
    assert grown.growing["hidden1"].trigger.base == pytest.approx(_count_base(grown, x))
    quiet = wrap(mlp(64, (16,), 2), _select_spec(baseline="first_batch"), x[:1])
    assert not quiet.wants_prefill
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet(x)


def test_baseline_option_is_refused_with_source_step() -> None:
    with pytest.raises(archgrow.SpecError, match="baseline applies to the raw-input FIFO of source: buffer"):
        archgrow.spec.parse_spec(_select_spec(source="step", baseline="full_buffer"))


def test_prefill_errors_name_what_was_wrong() -> None:
    grown = wrap(mlp(64, (16,), 2), _select_spec(), torch.randn(1, 64))
    with pytest.raises(ArchgrowError, match="no samples were given"):
        grown.prefill([])
    with pytest.raises(ArchgrowError, match="must be a tensor or a tuple starting with the model's 1 input"):
        grown.prefill([("not a tensor",)])
    x, y = torch.randn(8, 64), torch.zeros(8)
    with pytest.raises(ArchgrowError, match=r"input 0 of batch 1 has shape \(8,\), but the model was traced with samples of shape \(64,\)"):
        grown.prefill((x, y))  # one (x, y) batch where an iterable of batches is expected
    assert grown.prefill([x.double()]) == 8  # cast to the model's dtype
    assert grown._buffer.tensors()[0].dtype == torch.float32
    weights = {"rules": [{"match": "*", "trigger": {"kind": "weight"}, "initializer": {"kind": "weight"}}]}
    grown = wrap(mlp(64, (16,), 2), weights, torch.randn(1, 64))
    assert not grown.wants_prefill
    assert grown.prefill(torch.randn(8, 64)) == 0  # nothing measures activations: nothing to fill


def test_runner_prefills_before_training(tmp_path, monkeypatch) -> None:
    from archgrow.runner import run_experiment

    exp = parse_experiment(
        {
            "model": {"name": "mlp", "hidden": [4]},
            "data": {"kind": "digits"},
            "train": {"epochs": 1, "batch_size": 8},  # a first batch smaller than the 32-sample buffer
            "strategies": {"sel": {"version": 1, "defaults": {"max_width": 16}, "rules": [{"match": "*", "trigger": {"kind": "activation"}, "initializer": {"kind": "random"}}]}},
            "seeds": [0],
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the first-batch warning would fail the run
        run_experiment(exp, output=tmp_path, progress=False, pictures=False)
    # and without the prefill the same run does warn: the check above can fail
    from archgrow.grower import GrowingModel

    monkeypatch.setattr(GrowingModel, "wants_prefill", property(lambda self: False))
    with pytest.warns(UserWarning, match=r"baseline phi\(f_0\) taken on the first batch \(8 samples\)"):
        run_experiment(exp, output=tmp_path / "again", progress=False, pictures=False)


@pytest.mark.filterwarnings("ignore:group .* measured on")
def test_conv_models_measure_the_mini_batch_by_default() -> None:
    """Table 2: CNN runs measure activations on the mini-batch, not a 2 x max width buffer."""
    x = torch.randn(8, 3, 32, 32)
    spec = {**_select_spec(), "defaults": {"max_width": "2x"}}
    grown = wrap(vgg11(width_mult=0.0625), spec, x[:1])
    grown.train()
    grown(x)
    grown(x[:5])
    assert grown._buffer.capacity is None and len(grown._buffer.tensors()[0]) == 5


# --------------------------------------------------------------------------- T_grad against the update
def _gradient_model(optimizer_cls, unit_norms, **opt_kwargs):
    torch.manual_seed(0)
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    model = mlp(20, (8, 8), 3)
    spec = {"defaults": {"max_width": 64}, "rules": [{"match": "*", "trigger": {"kind": "gradient", "unit_norms": unit_norms}, "initializer": {"kind": "gradmax"}}]}
    grown = wrap(model, spec, x[:1])
    opt = optimizer_cls(grown.parameters(), **opt_kwargs)
    return grown, opt, x, y


@pytest.mark.parametrize(
    ("optimizer_cls", "kwargs"), [(torch.optim.Adam, {"lr": 1e-2}), (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9})]
)
def test_update_norms_are_the_per_unit_norms_of_the_optimizer_step(optimizer_cls, kwargs) -> None:
    from archgrow.triggers.gradient import ROLES, unit_update_norms

    grown, opt, x, y = _gradient_model(optimizer_cls, "update", **kwargs)
    for _ in range(3):  # momentum/Adam moments make later steps differ from -lr * grad
        grown.train()
        loss = F.cross_entropy(grown(x), y)
        opt.zero_grad()
        loss.backward()
        before = {n: p.detach().clone() for n, p in grown.model.named_parameters()}
        b = grown.growing["hidden1"]
        snapshot = dict(b.trigger._before)  # taken by the forward, before the step
        opt.step()
        got = unit_update_norms(b, snapshot)
        w1 = grown.model.hidden1.weight.detach() - before["hidden1.weight"]
        w2 = grown.model.hidden2.weight.detach() - before["hidden2.weight"]
        expected = w1.double().norm(dim=1) + w2.double().norm(dim=0)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)
        graph = grown.graph
        grads = unit_norms_by_roles(graph, b.group, ROLES, grad=True)
        assert not torch.allclose(got, grads[FAN_IN] + grads[FAN_OUT])  # not the gradient norms
        grown.grow_step(opt)


def test_update_norms_make_t_grad_fire_where_gradient_norms_do_not() -> None:
    """With SGD at a small learning rate the step is lr x the gradient: the update threshold is
    lr x the gradient one, so the same auxiliary gradient clears it."""
    fired = {}
    for unit_norms in ("gradient", "update"):
        grown, opt, x, y = _gradient_model(torch.optim.SGD, unit_norms, lr=0.01)
        for _ in range(5):
            grown.train()
            loss = F.cross_entropy(grown(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            grown.grow_step(opt)
        fired[unit_norms] = [e for e in grown.history]
        ratio = [e.score / e.threshold for e in grown.evaluations]
        assert ratio
    assert fired["gradient"] == []
    assert fired["update"] and all(e.trigger == "gradient" for e in fired["update"])


def test_update_norms_that_saw_no_change_add_nothing() -> None:
    grown, opt, x, y = _gradient_model(torch.optim.SGD, "update", lr=0.0)
    grown.train()
    loss = F.cross_entropy(grown(x), y)
    loss.backward()
    opt.step()
    with pytest.warns(UserWarning, match="unit_norms: update saw no change of the weights"):
        assert grown.grow_step(opt) == []
    assert all(e.add == 0 and e.threshold == 0 for e in grown.evaluations)


def test_update_norms_without_a_training_forward_say_what_to_do() -> None:
    grown, opt, x, y = _gradient_model(torch.optim.SGD, "update", lr=0.01)
    grown.eval()
    loss = F.cross_entropy(grown(x), y)  # eval-mode forward: no snapshot
    loss.backward()
    opt.step()
    with pytest.raises(ArchgrowError, match="unit_norms: update, but no forward of the wrapped model in training mode"):
        grown.grow_step(opt)


# --------------------------------------------------------------------------- NORTH-Weight projection
@pytest.mark.parametrize("projection", [True, False])
def test_weight_init_projection_option(projection) -> None:
    from archgrow.growth.binding import InitContext
    from archgrow.initializers.base import draw

    torch.manual_seed(0)
    model = mlp(32, (8,), 2)
    spec = {"rules": [{"match": "hidden1", "trigger": {"kind": "weight"}, "initializer": {"kind": "weight", "projection": projection}}]}
    grown = wrap(model, spec, torch.randn(1, 32))
    b = grown.growing["hidden1"]
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    drawn = draw(b, 3, gen_a)
    got = b.initializer.fan_in(b, 3, InitContext(model, gen_b, None))
    rows = model.hidden1.weight.detach()
    if projection:
        assert (got @ rows.T).abs().max() < 1e-5  # in the kernel of the existing rows
        torch.testing.assert_close(got.norm(dim=1), drawn.norm(dim=1))
    else:
        assert torch.equal(got, drawn)  # left as drawn
        assert (got @ rows.T).abs().max() > 1e-2


# --------------------------------------------------------------------------- Fashion-MNIST
needs_fashion = pytest.mark.skipif(
    not available(), reason=f"Fashion-MNIST IDX files not in {DEBIAN_ROOT} (apt-get install dataset-fashion-mnist)"
)


@needs_fashion
def test_fashion_mnist_official_split() -> None:
    d = fashion_mnist()
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert d.x_train.dtype == torch.float32 and 0 <= d.x_train.min() and d.x_train.max() <= 1
    assert torch.bincount(d.y_train).tolist() == [6000] * 10 and torch.bincount(d.y_test).tolist() == [1000] * 10
    small = fashion_mnist(limit=100, test_limit=50)
    assert torch.equal(small.x_train, d.x_train[:100]) and torch.equal(small.y_test, d.y_test[:50])


@needs_fashion
def test_fashion_mnist_experiment_section_pads_images() -> None:
    exp = parse_experiment(
        {"model": {"name": "vgg11"}, "data": {"kind": "fashion_mnist", "images": True, "pad_to": 32, "limit": 10, "test_limit": 5}, "baselines": {"s": 1}}
    )
    d = load_data(exp.data)
    assert d.x_train.shape == (10, 1, 32, 32) and d.x_test.shape == (5, 1, 32, 32)
    assert d.x_train[:, :, :2].abs().max() == 0  # the zero border


def test_fashion_mnist_missing_folder_says_how_to_get_it(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist(tmp_path / "nowhere")
    exp = parse_experiment({"model": {"name": "mlp"}, "data": {"kind": "fashion_mnist", "root": str(tmp_path / "x")}, "baselines": {"s": 1}})
    with pytest.raises(ArchgrowError, match="data.root: Fashion-MNIST directory"):
        load_data(exp.data)


def test_fashion_mnist_reads_idx_files_from_any_folder(tmp_path) -> None:
    import gzip

    def idx(magic, dims, payload):
        head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
        return head + bytes(payload)

    for prefix, n in (("train", 3), ("t10k", 2)):
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(0x803, [n, 28, 28], [255] * (n * 784))))
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(idx(0x801, [n], list(range(n))))
    assert available(tmp_path)
    d = fashion_mnist(tmp_path)
    assert d.x_train.shape == (3, 784) and d.y_test.tolist() == [0, 1] and d.x_train.max() == 1.0
