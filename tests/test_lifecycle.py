"""The wrapped model owns its hooks: unwrap() / close() / leaving a with-block take every one off
the user's modules, and paused() keeps forwards from counting as growth steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import archgrow
from archgrow import models

# T_grad and GradMax hook producers and consumers (the auxiliary gradient); source: step hooks the
# measured producers. Together they put hooks on every layer of the MLP.
SPEC = {
    "seed": 0,
    "rules": [
        {"match": "hidden1", "trigger": {"kind": "gradient"}, "initializer": {"kind": "gradmax"}, "max_width": 12},
        {"match": "hidden2", "trigger": {"kind": "activation", "source": "step"}, "initializer": {"kind": "random"}},
    ],
}


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.mlp(in_features=8, hidden=(4, 4), num_classes=3)


def _step(grown: archgrow.GrowingModel, opt: torch.optim.Optimizer) -> None:
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    opt.zero_grad()
    F.cross_entropy(grown(x), y).backward()
    opt.step()
    grown.grow_step(opt)


def test_unwrap_removes_every_hook_and_returns_the_grown_model() -> None:
    model = _model()
    assert _hook_count(model) == 0
    grown = archgrow.wrap(model, SPEC, torch.randn(1, 8))
    assert _hook_count(model) > 0
    opt = torch.optim.SGD(grown.parameters(), lr=0.1)
    for _ in range(3):
        _step(grown, opt)
    widths = grown.widths()
    plain = grown.unwrap()
    assert plain is model and _hook_count(model) == 0
    assert plain.hidden1.out_features == widths["hidden1"]
    assert plain(torch.randn(2, 8)).shape == (2, 3)
    assert grown.closed
    with pytest.raises(archgrow.ArchgrowError, match="grow_step: this GrowingModel was closed .*archgrow.wrap"):
        grown.grow_step(opt)
    with pytest.raises(archgrow.ArchgrowError, match="prefill: this GrowingModel was closed"):
        grown.prefill(torch.randn(4, 8))
    grown.close()  # twice is fine
    assert _hook_count(model) == 0


def test_leaving_a_with_block_closes() -> None:
    model = _model()
    with archgrow.wrap(model, SPEC, torch.randn(1, 8)) as grown:
        assert _hook_count(model) > 0
        _step(grown, torch.optim.SGD(grown.parameters(), lr=0.1))
    assert grown.closed and _hook_count(model) == 0


def test_a_model_wrapped_twice_keeps_only_the_live_wrappers_hooks() -> None:
    model = _model()
    first = archgrow.wrap(model, SPEC, torch.randn(1, 8))
    once = _hook_count(model)
    first.close()
    second = archgrow.wrap(model, SPEC, torch.randn(1, 8))
    assert _hook_count(model) == once
    second.close()
    assert _hook_count(model) == 0


def test_paused_forwards_are_not_growth_steps() -> None:
    model = _model()
    trigger = {"kind": "activation", "buffer_size": 64}
    spec = {"seed": 0, "rules": [{"match": "hidden2", "trigger": trigger, "initializer": {"kind": "random"}}]}
    grown = archgrow.wrap(model, spec, torch.randn(1, 8))
    grown.prefill(torch.randn(16, 8))
    grown.train()
    assert grown.buffered_samples == 16
    with grown.paused():
        with grown.paused():  # nests
            grown(torch.randn(5, 8))
        grown(torch.randn(5, 8))
    assert grown.buffered_samples == 16
    grown(torch.randn(5, 8))
    assert grown.buffered_samples == 21


def test_paused_disarms_the_auxiliary_gradient_and_restores_it() -> None:
    model = _model()
    grown = archgrow.wrap(model, SPEC, torch.randn(1, 8))
    bridge = grown.growing["hidden1"].bridge
    assert bridge.armed  # due on the next step
    with grown.paused():
        assert not bridge.armed
        out = grown(torch.randn(4, 8))
        out.sum().backward()
    assert bridge.armed


def test_bindings_are_frozen_once_bound() -> None:
    import dataclasses

    grown = archgrow.wrap(_model(), SPEC, torch.randn(1, 8))
    binding = grown.growing["hidden1"]
    assert binding.bridge is not None and binding.trigger is not None and binding.initializer is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        binding.bridge = None
