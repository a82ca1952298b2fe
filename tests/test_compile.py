"""torch.compile: a compiled model keeps training through growth, equal to its eager twin, with no
graph break in archgrow's code, no recompile per growth and no silent fall back to eager.

Compiling on CPU is slow, so most tests use a backend that runs dynamo's graphs as they are (it
exercises everything archgrow does: hooks, measurement, trials, recompile guards) and counts
them; one test runs inductor.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import archgrow
from archgrow import models

dynamo = pytest.importorskip("torch._dynamo")
if not dynamo.is_dynamo_supported():
    pytest.skip("torch.compile (dynamo) is not supported on this platform", allow_module_level=True)

ARCHGROW = str(Path(archgrow.__file__).resolve().parent)
# One unit per step for 12 steps, more growths than dynamo's recompile_limit (8).  hidden1's new
# units are NORTH-Select candidates, measured on the input buffer (archgrow's own forwards);
# out is the model's output (frozen).
SCHEDULE = {"kind": "linear_schedule", "final_width": 16, "total_steps": 12, "grow_fraction": 1.0}
SPEC = {
    "seed": 0,
    "rules": [
        {"match": "hidden1", "trigger": SCHEDULE, "initializer": {"kind": "select", "candidates": 8}, "max_width": 16},
        {"match": "hidden2", "trigger": SCHEDULE, "initializer": {"kind": "random"}, "max_width": 16},
    ],
}
# Every kind of hook archgrow puts on a model: GradMax reads the auxiliary gradient (the bridge's
# forward hooks and tensor hooks), T_act with source: step hooks the measured producers.
HOOKED_SPEC = {
    "seed": 0,
    "rules": [
        {"match": "hidden1", "trigger": SCHEDULE, "initializer": {"kind": "gradmax"}, "max_width": 16},
        {"match": "hidden2", "trigger": {"kind": "activation", "source": "step"}, "initializer": {"kind": "random"}},
    ],
}


class CountingBackend:
    """A dynamo backend that runs each graph as traced and counts compiles and calls: a graph
    that stops being called means dynamo fell back to eager."""

    def __init__(self) -> None:
        self.compiles = 0
        self.calls = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.compiles += 1

        def run(*args: Any) -> Any:
            self.calls += 1
            return gm.forward(*args)

        return run


class GraphBreaks(logging.Handler):
    """Where dynamo broke graphs, from its ``graph_breaks`` log ("... in user code at FILE:LINE")."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.locations: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.locations += re.findall(r"in user code at (\S+):\d+", record.getMessage())

    def __enter__(self) -> GraphBreaks:
        torch._logging.set_logs(graph_breaks=True)
        logging.getLogger("torch._dynamo.symbolic_convert.__graph_breaks").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("torch._dynamo.symbolic_convert.__graph_breaks").removeHandler(self)
        torch._logging.set_logs()


def _twins(spec: dict[str, Any]) -> tuple[archgrow.GrowingModel, archgrow.GrowingModel]:
    out = []
    for _ in range(2):
        torch.manual_seed(0)
        out.append(archgrow.wrap(models.mlp(in_features=8, hidden=(4, 4), num_classes=3), spec, torch.randn(1, 8)))
    return out[0], out[1]


def _train_side_by_side(eager: archgrow.GrowingModel, compiled: archgrow.GrowingModel, steps: int, atol: float,
                        each_step: Callable[[int], None] = lambda step: None) -> int:
    """Train both on the same batches; their outputs and widths must agree at every step."""
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (eager, compiled)]
    g = torch.Generator().manual_seed(0)
    growths = 0
    for step in range(steps):
        x, y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
        outs = []
        for model, opt in zip((eager, compiled), opts, strict=True):
            out = model(x)
            opt.zero_grad()
            F.cross_entropy(out, y).backward()
            opt.step()
            events = model.grow_step(opt, loss_fn=lambda model=model, x=x, y=y: F.cross_entropy(model(x), y))
            outs.append(out.detach())
        growths += len(events)
        assert eager.widths() == compiled.widths(), step
        torch.testing.assert_close(outs[1], outs[0], atol=atol, rtol=atol)
        each_step(step)
    return growths


def test_compiled_model_grows_12_times_without_recompiling_or_falling_back_to_eager() -> None:
    """Dynamo compiles once, on the first step, and the graph runs on every step after: growth
    changes no guard (the growing dims are dynamic sizes) and archgrow's own forwards (Select's
    measurements) never reach the compiled model."""
    eager, compiled = _twins(SPEC)
    backend = CountingBackend()
    compiled.compile(backend=backend)
    seen: list[tuple[int, int]] = []
    with GraphBreaks() as breaks:
        growths = _train_side_by_side(eager, compiled, 12, 1e-6, lambda step: seen.append((backend.compiles, backend.calls)))
    assert growths == 24 and compiled.widths()["hidden1"] == 16
    assert [c for c, _ in seen] == [1] * 12, f"recompiled after growth: compiles per step {seen}"
    assert [n for _, n in seen] == list(range(1, 13)), f"the compiled graph stopped running: calls per step {seen}"
    assert not breaks.locations


def test_archgrow_hooks_break_graphs_only_outside_archgrow() -> None:
    """Hooked modules break the graph where torch calls the hook (archgrow's hooks run as plain
    Python), never inside archgrow; training still equals eager through growth."""
    eager, compiled = _twins(HOOKED_SPEC)
    compiled.compile(backend=CountingBackend())
    with GraphBreaks() as breaks:
        assert _train_side_by_side(eager, compiled, 4, 1e-6) >= 4
    assert breaks.locations, "the hooks were not called from the compiled forward"
    inside = [loc for loc in breaks.locations if loc.startswith(ARCHGROW)]
    assert not inside, f"graph breaks in archgrow's code: {inside}"


def _cpp_compiler() -> str | None:
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:
        return None


@pytest.mark.skipif(_cpp_compiler() is None, reason="inductor compiles C++ on CPU and no C++ compiler was found")
def test_inductor_training_matches_eager_through_growth() -> None:
    eager, compiled = _twins(SPEC)
    compiled.compile()
    assert _train_side_by_side(eager, compiled, 3, 1e-5) == 6


def test_compiling_the_wrapper_itself_fails_with_a_pointer_to_grown_compile() -> None:
    grown = archgrow.wrap(models.mlp(in_features=8, hidden=(4, 4), num_classes=3), SPEC, torch.randn(1, 8))
    with pytest.raises(AssertionError, match=r"grown\.compile\("):
        torch.compile(grown, backend="eager")(torch.randn(4, 8))


def test_static_compile_is_warned_about() -> None:
    grown = archgrow.wrap(models.mlp(in_features=8, hidden=(4, 4), num_classes=3), SPEC, torch.randn(1, 8))
    with pytest.warns(UserWarning, match="every growth recompiles"):
        grown.compile(dynamic=False, backend="eager")


def test_growths_near_the_recompile_limit_are_warned_about() -> None:
    """Growing conv groups recompiles under inductor: once growth may have used half of the
    model's recompile limit, the user is told before dynamo would fall back to eager."""
    eager, compiled = _twins(SPEC)
    compiled.compile(backend=CountingBackend(), recompile_limit=6)
    with pytest.warns(UserWarning, match=r"grown 3 times since it was compiled.*recompile_limit \(6\)"):
        _train_side_by_side(eager, compiled, 4, 1e-6)
