"""A user's own trigger and initializer: one config model, one rule class, one decorator each.

This is the README's extension example, run end to end: the new kinds validate from a spec file
(with archgrow's error lines), appear in the JSON Schema, and grow a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import torch
from pydantic import PositiveFloat, PositiveInt

import archgrow
from archgrow import models
from archgrow.initializers import INITIALIZERS, InitRule
from archgrow.spec import InitializerConfig, TriggerConfig, json_schema, parse_spec
from archgrow.spec.kinds import RegistrationError
from archgrow.triggers import TRIGGERS, Decision, TriggerRule


# ---------------------------------------------------------------- the user's code (README example)
class EveryConfig(TriggerConfig):
    kind: Literal["every"] = "every"
    period: PositiveInt = 2  # grow on every period-th step
    units: PositiveInt = 1


class EveryRule(TriggerRule):
    """Adds ``units`` on every ``period``-th evaluation, whatever the network does."""

    def evaluate(self, binding, step, measurement):
        due = step % self.config.period == 0
        return Decision(add=self.config.units if due else 0, score=step, threshold=self.config.period)


class ConstantConfig(InitializerConfig):
    kind: Literal["constant"] = "constant"
    value: PositiveFloat = 0.5


class ConstantRule(InitRule):
    """Every new unit's fan-in is ``value`` everywhere (fan-out stays zero: growth preserves the function)."""

    def fan_in(self, binding, k, ctx):
        rows = binding.producer.weight.shape[1:]
        return torch.full((k, *rows), self.config.value, dtype=binding.producer.weight.dtype)


@pytest.fixture
def registered() -> Iterator[None]:
    archgrow.register_trigger("every", config=EveryConfig)(EveryRule)
    archgrow.register_initializer("constant", config=ConstantConfig)(ConstantRule)
    try:
        yield
    finally:  # other tests count the built-in kinds
        TRIGGERS.unregister("every")
        INITIALIZERS.unregister("constant")


SPEC = """\
version: 1
seed: 0
rules:
  - match: hidden1
    trigger: {kind: every, period: 2, units: 3}
    initializer: {kind: constant, value: 0.25}
    max_width: 16
"""


def test_user_kinds_run_from_a_spec_file(registered: None, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    torch.manual_seed(0)
    model = models.mlp(in_features=8, hidden=(4, 4), num_classes=2)
    grown = archgrow.wrap(model, path, torch.randn(1, 8))
    x = torch.randn(5, 8)
    before = grown(x).detach()
    opt = torch.optim.SGD(grown.parameters(), lr=0.0)  # lr 0: the function only changes by growth
    widths = []
    for _ in range(4):
        opt.zero_grad()
        grown(x).sum().backward()
        opt.step()
        grown.grow_step(opt)
        widths.append(grown.widths()["hidden1"])
    assert widths == [4, 7, 7, 10]
    new_rows = model.hidden1.weight[4:]
    assert torch.equal(new_rows, torch.full_like(new_rows, 0.25))
    assert torch.allclose(grown(x), before, atol=1e-6)  # zero fan-out
    assert [e.trigger for e in grown.history] == ["every", "every"]
    assert [e.initializer for e in grown.history] == ["constant", "constant"]


def test_user_kinds_are_validated_and_listed(registered: None, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC.replace("units: 3", "units: 0").replace("value: 0.25", "valu: 0.25"))
    with pytest.raises(archgrow.SpecError) as exc:
        archgrow.load_spec(path)
    assert exc.value.problems == [
        f"{path}: rules[0].trigger.units: input should be greater than 0; got 0",
        f"{path}: rules[0].initializer.valu: unknown field 'valu'; accepted fields: kind, value",
    ]
    path.write_text(SPEC.replace("kind: every", "kind: evry"))
    with pytest.raises(archgrow.SpecError, match="unknown kind 'evry'; accepted kinds: activation, .*, static, every$"):
        archgrow.load_spec(path)
    schema = json.dumps(json_schema())
    assert '"every"' in schema and '"constant"' in schema and '"period"' in schema


def test_unregistered_kinds_are_gone() -> None:
    assert "every" not in TRIGGERS and "constant" not in INITIALIZERS
    with pytest.raises(archgrow.SpecError, match="unknown kind 'every'"):
        parse_spec({"rules": [{"match": "*", "trigger": {"kind": "every"}}]})
    assert '"every"' not in json.dumps(json_schema())


def test_registration_errors_say_what_is_wrong(registered: None) -> None:
    class Other(TriggerRule):
        pass

    with pytest.raises(RegistrationError, match="trigger kind 'every' is already registered .*replace=True"):
        archgrow.register_trigger("every", config=EveryConfig)(Other)

    class NoKind(TriggerConfig):
        period: int = 1

    with pytest.raises(RegistrationError, match=r"NoKind needs the field  kind: Literal\['nokind'\] = 'nokind'"):
        archgrow.register_trigger("nokind", config=NoKind)(Other)
    with pytest.raises(RegistrationError, match="must be a subclass of TriggerConfig"):
        archgrow.register_trigger("every2", config=ConstantConfig)(Other)
    with pytest.raises(RegistrationError, match="is not a subclass of archgrow.triggers.TriggerRule"):
        archgrow.register_trigger("every", config=EveryConfig)(ConstantRule)
    with pytest.raises(RegistrationError, match="kind names are identifiers"):
        archgrow.register_initializer("not a name", config=ConstantConfig)(ConstantRule)
    # replacing on purpose works, and the failed attempts left the registry as it was
    assert TRIGGERS["every"] is EveryRule
    archgrow.register_trigger("every", config=EveryConfig, replace=True)(Other)
    assert TRIGGERS["every"] is Other


def test_capabilities_are_provided_without_kind_names(registered: None) -> None:
    """A user's trigger that declares needs_activations gets a probe and measurements, like T_act."""

    class CountConfig(TriggerConfig):
        kind: Literal["count_rows"] = "count_rows"

    seen: list[tuple[int, ...]] = []

    class CountRule(TriggerRule):
        needs_activations = True

        def evaluate(self, binding, step, measurement):
            seen.append(tuple(measurement.h.shape))
            return Decision(0, 0.0, 0.0)

    archgrow.register_trigger("count_rows", config=CountConfig)(CountRule)
    try:
        torch.manual_seed(0)
        model = models.mlp(in_features=8, hidden=(4,), num_classes=2)
        spec = {"rules": [{"match": "hidden1", "trigger": {"kind": "count_rows"}, "initializer": {"kind": "random"}}]}
        grown = archgrow.wrap(model, spec, torch.randn(1, 8))
        grown.prefill(torch.randn(16, 8))
        grown.grow_step()
        assert seen == [(16, 4)]
    finally:
        TRIGGERS.unregister("count_rows")
