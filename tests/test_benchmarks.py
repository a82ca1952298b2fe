"""The step-cost benchmark runs end to end and prints a well-formed table (timings are not asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load("bench_step_cost")


def test_step_cost_table_has_a_row_per_strategy_with_positive_figures(bench, monkeypatch, capsys) -> None:
    strategies = ["gradmax", "north-select@step"]
    argv = ["bench_step_cost.py", "--models", "mlp", "--steps", "2", "--reps", "1", "--strategies", *strategies]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    header, *rows = lines
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[:4] == ["strategy", "step ms", "x static", "no-growth x"]
    table = {r.strip("|").split("|")[0].strip(): [c.strip() for c in r.strip("|").split("|")] for r in rows}
    assert list(table) == ["static", *strategies]
    for name, cells in table.items():
        assert float(cells[1]) > 0, name  # step ms
        assert float(cells[2]) > 0, name  # x static
    assert table["static"][-2] == "0"  # events: the static network never grows
    # the gradient strategy computes G on every step: it adds matmul FLOPs to the plain step
    assert float(table["gradmax"][columns.index("flops x")]) > 1.0


def test_every_model_config_builds_with_its_batch(bench) -> None:
    for name, (_, shape, batch) in bench.MODELS.items():
        model, x, y, b = bench.setup(name)
        assert b == batch and x.shape == (batch, *shape) and y.shape == (batch,), name
        assert model(x[:2]).shape == (2, 10), name


def test_capped_table_has_every_group_capped_and_no_trigger_evaluated(bench, monkeypatch, capsys) -> None:
    strategies = ["north-select", "north-select@step", "gradmax", "linear-schedule"]
    argv = ["bench_step_cost.py", "--capped", "--models", "mlp", "--steps", "2", "--reps", "1", "--strategies", *strategies]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    out = capsys.readouterr().out
    assert "groups: hidden1, hidden2" in out
    lines = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    header, *rows = lines
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == [
        "strategy", "capped widths", "capped", "step ms", "plain ms", "x plain", "grow_step ms", "evals",
        "uncapped ms", "uncapped x plain", "uncapped no-growth x", "uncapped events",
    ]
    table = {r.strip("|").split("|")[0].strip(): [c.strip() for c in r.strip("|").split("|")] for r in rows}
    assert list(table) == strategies
    for name, cells in table.items():
        row = dict(zip(columns, cells, strict=True))
        assert row["capped"] == "yes", name
        assert row["evals"] == "0", name  # the grower skips every capped group's trigger
        widths = [int(w) for w in row["capped widths"].split("/")]
        assert len(widths) == 2 and all(w >= 64 for w in widths), name
        for column in ("step ms", "plain ms", "x plain", "uncapped ms", "uncapped x plain"):
            assert float(row[column]) > 0, (name, column)
        assert int(row["uncapped events"]) >= 0, name
    # the schedule's own cap (final_width 64 + 4) is where it stops
    assert table["linear-schedule"][1] == "68/68"


@pytest.fixture(scope="module")
def bench_grow():
    return _load("bench_grow")


def test_grow_table_reports_a_failing_comparison_in_its_cell(bench_grow, monkeypatch, capsys) -> None:
    """A model Torch-Pruning fails on gets 'failed: <reason>' in its cell; the table goes on."""

    def failing(model, x):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(bench_grow, "torch_pruning_groups", lambda: failing)
    argv = ["bench_grow.py", "--trace-only", "--reps", "1", "--size", "32", "resnet18", "swin_t"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(bench_grow, "build", lambda name, size: (bench_grow.models.mlp(784), (784,)))
    bench_grow.main()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    header, *rows = lines
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == ["model", "input", "trace s", "tp s", "trace/tp", "groups g/f"]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    assert [c[0] for c in cells] == ["resnet18", "swin_t"]
    assert cells[0][3] == "failed: ZeroDivisionError: integer division or modulo by zero" and cells[0][4] == "-"
    assert cells[1][3] == "skipped (--tp-skip)"  # not handed to Torch-Pruning by default
    assert all(float(c[2]) > 0 for c in cells)
