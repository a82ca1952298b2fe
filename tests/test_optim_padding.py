"""Optimizer state after growth: new entries start where each optimizer starts a new parameter's state."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import pytest
import torch
from torch import nn

import archgrow
from archgrow.errors import GrowthError, RegistrationError
from archgrow.surgery import optim as optim_padding

Factory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]

OPTIMIZERS = sorted(
    (
        c
        for c in vars(torch.optim).values()
        if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer
    ),
    key=lambda c: c.__name__,
)
# the options that make each optimizer keep all of its state kinds (amsgrad, centered, momentum...)
OPTIONS: dict[str, dict] = {
    "Adagrad": {"initial_accumulator_value": 0.1},
    "Adam": {"amsgrad": True},
    "AdamW": {"amsgrad": True},
    "RMSprop": {"momentum": 0.5, "centered": True},
    "SGD": {"momentum": 0.9},
}


def factory(cls: type[torch.optim.Optimizer]) -> Factory:
    options = {"lr": 1e-2, **OPTIONS.get(cls.__name__, {})}
    if cls.__name__ == "Muon":  # 2-D parameters only
        return lambda params: cls([p for p in params if p.ndim == 2], **options)
    return lambda params: cls(params, **options)


class MLP(nn.Module):
    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, width)
        self.fc2 = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def grow_at(step: int, final: int) -> dict:
    """A spec that grows fc1 once, to ``final`` units, at grow_step call ``step``."""
    trigger = {"kind": "batched_schedule", "final_width": final, "total_steps": step, "grow_fraction": 1.0, "stages": 1}
    return {"seed": 0, "rules": [{"match": "fc1", "trigger": trigger, "initializer": {"kind": "random"}}]}


def snapshot(opt: torch.optim.Optimizer) -> dict[int, dict[str, torch.Tensor]]:
    return {id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in opt.state.items()}


def train_until_growth(make: Factory, steps: int = 3, k: int = 3):
    """Wrap the MLP, train with the optimizer until the spec grows fc1 by ``k``; state before and after."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randn(16, 3)
    grown = archgrow.wrap(MLP(), grow_at(steps, 6 + k), x[:1])
    opt = make(grown.parameters())
    for _ in range(steps):
        opt.zero_grad()
        (grown(x) - y).square().mean().backward()
        opt.step()
        before = snapshot(opt)
        events = grown.grow_step(opt)
    assert [(e.group, e.old_width, e.new_width) for e in events] == [("fc1", 6, 6 + k)]
    return grown, opt, before


def fresh_state(make: Factory, param: torch.Tensor, sparse: bool = False) -> dict[str, torch.Tensor]:
    """What a fresh optimizer of the same kind holds for a parameter shaped like ``param`` when its
    first step starts updating: its ``_init_group`` result, else (SGD's momentum, SparseAdam) the
    state after a first step with a zero gradient."""
    p = nn.Parameter(param.detach().clone())
    p.grad = torch.zeros_like(p).to_sparse() if sparse else torch.zeros_like(p)
    opt = make([p])
    at_init: dict[str, torch.Tensor] = {}
    init_group = getattr(opt, "_init_group", None)
    if init_group is not None:

        def spy(*args, **kwargs):
            out = init_group(*args, **kwargs)
            at_init.update({k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)})
            return out

        opt._init_group = spy  # type: ignore[method-assign]
    opt.step()
    return {**{k: v for k, v in opt.state[p].items() if torch.is_tensor(v)}, **at_init}


def check_new_entries(
    opt: torch.optim.Optimizer, make: Factory, before: dict[int, dict[str, torch.Tensor]], sparse: bool = False
) -> int:
    """Every grown state tensor: old block unchanged, new entries equal to a fresh optimizer's."""
    checked = 0
    for p, state in opt.state.items():
        fresh = fresh_state(make, p, sparse)
        for key, value in state.items():
            if not torch.is_tensor(value) or value.numel() == 1:
                continue
            old = before[id(p)][key]
            assert value.shape == fresh[key].shape, (key, value.shape, fresh[key].shape)
            block = tuple(slice(0, n) for n in old.shape)
            assert torch.equal(value[block], old), f"{key}: old entries changed"
            new = torch.ones_like(value, dtype=torch.bool)
            new[block] = False
            if new.any():
                torch.testing.assert_close(
                    value[new], fresh[key][new], rtol=0, atol=0, msg=f"{type(opt).__name__} {key}"
                )
                checked += 1
    return checked


@pytest.mark.parametrize(
    "cls", [c for c in OPTIMIZERS if c not in (torch.optim.LBFGS, torch.optim.SparseAdam)], ids=lambda c: c.__name__
)
def test_new_state_is_what_the_optimizer_starts_at(cls) -> None:
    make = factory(cls)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a built-in optimizer must not fall back to zeros
        _, opt, before = train_until_growth(make)
    assert check_new_entries(opt, make, before) > 0
    # and it keeps training
    opt.step()


def test_sparse_adam_on_a_sparse_embedding() -> None:
    class Emb(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4, sparse=True)
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.emb(x)))

    torch.manual_seed(0)
    model = Emb()
    x = torch.randint(0, 10, (8, 2))
    g = archgrow.trace(model, x[:1])

    def make(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SparseAdam(params, lr=1e-2)

    opt = make([model.emb.weight])
    for _ in range(2):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    before = snapshot(opt)
    opt.zero_grad()
    archgrow.grow(g, "emb", 2, optimizer=opt)
    assert model.emb.weight.shape == (10, 6)
    assert check_new_entries(opt, make, before, sparse=True) == 2


def test_rprop_new_units_learn() -> None:
    """Rprop's step_size starts at lr for new entries; at 0 the new fan-out would stay near 0."""
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = torch.sin(x @ torch.randn(8, 4))
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    g = archgrow.trace(model, x[:1])
    opt = torch.optim.Rprop(model.parameters(), lr=1e-2)

    def train(steps: int) -> None:
        for _ in range(steps):
            opt.zero_grad()
            (model(x) - y).square().mean().backward()
            opt.step()

    train(20)
    archgrow.grow(g, "0", 4, optimizer=opt)
    assert torch.equal(opt.state[model[2].weight]["step_size"][:, 16:], torch.full((4, 4), 1e-2))
    fan_out = model[2].weight.detach().clone()
    train(10)
    moved = (model[2].weight.detach() - fan_out).abs()
    new, old = moved[:, 16:].mean().item(), moved[:, :16].mean().item()
    print(f"Rprop, mean |change| of fan-out over 10 steps after growth: new {new:.4g}, existing {old:.4g}")
    assert new > 1e-3
    assert new > 0.1 * old


def test_adagrad_initial_accumulator_value() -> None:
    torch.manual_seed(0)
    model = MLP()
    g = archgrow.trace(model, torch.randn(1, 4))
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2, initial_accumulator_value=0.1)
    opt.zero_grad()
    model(torch.randn(8, 4)).square().mean().backward()
    opt.step()
    archgrow.grow(g, "fc1", 2, optimizer=opt)
    assert torch.equal(opt.state[model.fc1.weight]["sum"][6:], torch.full((2, 4), 0.1))
    assert torch.equal(opt.state[model.fc1.bias]["sum"][6:], torch.full((2,), 0.1))
    assert torch.equal(opt.state[model.fc2.weight]["sum"][:, 6:], torch.full((3, 2), 0.1))
    assert (opt.state[model.fc1.weight]["sum"][:6] > 0.1).any()


class Velocity(torch.optim.Optimizer):
    """A user's optimizer: per-element ``velocity`` and ``scale``, a scalar ``count``."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-2) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["count"] = torch.tensor(0.0)
                    state["velocity"] = torch.zeros_like(p)
                    state["scale"] = torch.full_like(p, group["lr"])
                state["count"] += 1
                state["velocity"].mul_(0.9).add_(p.grad)
                p.sub_(state["scale"] * state["velocity"])


def _velocity_run(cls: type[torch.optim.Optimizer]) -> tuple[MLP, torch.optim.Optimizer, list[warnings.WarningMessage]]:
    torch.manual_seed(0)
    model = MLP()
    g = archgrow.trace(model, torch.randn(1, 4))
    opt = cls(model.parameters(), lr=0.05)
    opt.zero_grad()
    model(torch.randn(8, 4)).square().mean().backward()
    opt.step()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        archgrow.grow(g, "fc1", 2, optimizer=opt)
    return model, opt, caught


def test_unknown_optimizer_gets_zeros_and_one_warning() -> None:
    model, opt, caught = _velocity_run(Velocity)
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "Velocity" in message and "'scale'" in message and "'velocity'" in message and "'count'" not in message
    assert "archgrow.register_optimizer_state" in message
    assert caught[0].filename == __file__  # attributed to the caller of grow
    for key in ("velocity", "scale"):
        assert torch.count_nonzero(opt.state[model.fc1.weight][key][6:]) == 0
        assert torch.count_nonzero(opt.state[model.fc2.weight][key][:, 6:]) == 0
    assert opt.state[model.fc1.weight]["count"] == 1


def test_registered_optimizer_gets_its_fill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optim_padding, "_RULES", dict(optim_padding._RULES))  # leave the real registry alone

    class Child(Velocity):
        pass

    archgrow.register_optimizer_state(Velocity, {"velocity": 0.0, "scale": lambda group: group["lr"]})
    model, opt, caught = _velocity_run(Child)  # a subclass inherits the fills
    assert caught == []
    assert torch.equal(opt.state[model.fc1.weight]["scale"][6:], torch.full((2, 4), 0.05))
    assert torch.equal(opt.state[model.fc2.bias]["scale"], torch.full((3,), 0.05))
    assert torch.count_nonzero(opt.state[model.fc1.weight]["velocity"][6:]) == 0
    archgrow.register_optimizer_state(Child, {"scale": 2.0})  # its own fill wins over its base's
    model, opt, caught = _velocity_run(Child)
    assert torch.equal(opt.state[model.fc2.weight]["scale"][:, 6:], torch.full((3, 2), 2.0))


@pytest.mark.parametrize(
    "args",
    [
        (nn.Linear, {"x": 0.0}),
        (Velocity, {"x": True}),
        (Velocity, {"x": "zero"}),
        (Velocity, {1: 0.0}),
        (Velocity, [("x", 0.0)]),
    ],
    ids=["not-an-optimizer", "bool", "str", "key", "not-a-mapping"],
)
def test_bad_registrations_are_refused(args) -> None:
    with pytest.raises(RegistrationError, match="register_optimizer_state"):
        archgrow.register_optimizer_state(*args)


def test_state_of_another_shape_is_refused_before_anything_changes() -> None:
    class Flat(Velocity):
        @torch.no_grad()
        def step(self, closure: Callable[[], float] | None = None) -> None:
            for group in self.param_groups:
                for p in group["params"]:
                    self.state[p]["rows"] = torch.zeros(p.shape[0])

    torch.manual_seed(0)
    model = MLP()
    g = archgrow.trace(model, torch.randn(1, 4))
    opt = Flat(model.parameters())
    opt.step()
    with pytest.raises(
        GrowthError, match=r"Flat.state\[.rows.\] has shape \(\d+,\) for a parameter of shape \(\d+, \d+\)"
    ):
        archgrow.grow(g, "fc1", 2, optimizer=opt)
    assert model.fc1.weight.shape == (6, 4) and g.group("fc1").width == 6


def test_lbfgs_is_refused_before_anything_changes() -> None:
    model = MLP()
    g = archgrow.trace(model, torch.randn(1, 4))
    with pytest.raises(GrowthError, match="LBFGS"):
        archgrow.grow(g, "fc1", 2, optimizer=torch.optim.LBFGS(model.parameters()))
    assert model.fc1.weight.shape == (6, 4)


def test_a_sparse_gradient_is_padded_and_stays_sparse() -> None:
    emb = nn.Embedding(10, 4, sparse=True)
    model = nn.Sequential(emb, nn.Linear(4, 3))
    x = torch.randint(0, 10, (5, 2))
    graph = archgrow.trace(model, x[:1])
    model(x).sum().backward()  # grow before zero_grad: the gradient is kept, padded
    dense = emb.weight.grad.to_dense()
    archgrow.grow(graph, "0", 2)
    assert emb.weight.grad.is_sparse and emb.weight.grad.shape == (10, 6)
    padded = emb.weight.grad.to_dense()
    assert torch.equal(padded[:, :4], dense) and not padded[:, 4:].any()
