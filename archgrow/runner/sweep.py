"""A sweep: every strategy and static baseline of an experiment, for every seed, side by side.

The data is loaded once; each run gets its own directory; the combined table (mean and standard
deviation over seeds per strategy) is what the paper's figures plot, so it is written as JSON,
CSV and Markdown next to the runs, and drawn and put into one HTML report.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from archgrow.binder import bind
from archgrow.graph.widthgraph import trace
from archgrow.runner.build import build_model, load_data
from archgrow.runner.experiment import Experiment
from archgrow.runner.processes import Processes
from archgrow.runner.train import RunPlan, TrainRecipe, resolve_device


@dataclass(frozen=True)
class SweepResult:
    directory: Path
    runs: list[dict[str, Any]]
    table: list[dict[str, Any]]

    @property
    def report(self) -> Path:
        return self.directory / "report.html"


def output_dir(exp: Experiment, output: str | Path | None = None) -> Path:
    return Path(output or exp.output or Path("runs") / exp.title)


def run_experiment(
    exp: Experiment,
    *,
    output: str | Path | None = None,
    progress: bool = True,
    pictures: bool = True,
    stream: TextIO | None = None,
    processes: Processes | None = None,
) -> SweepResult:
    """Run everything the experiment lists; returns the per-run summaries and the combined table.

    ``processes``: this torchrun worker's place (see :mod:`archgrow.runner.processes`); every rank
    trains every run on its share of each batch, and rank 0 alone writes files and progress.
    """
    stream = stream if stream is not None else sys.stderr
    out = output_dir(exp, output)
    writes = processes is None or processes.main
    progress = progress and writes
    if writes:
        out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = load_data(exp.data)
    resolve_device(exp.device)  # fail before the first run, not after it
    if writes:
        (out / "experiment.json").write_text(json.dumps(exp.model_dump(mode="json"), indent=2) + "\n")
    baseline_groups = _baseline_groups(exp, data) if exp.baselines else []
    plans = [RunPlan(name, kind, seed, out / name / f"seed{seed}") for name, kind, seed in exp.runs()]
    runs = []
    for i, plan in enumerate(plans, start=1):
        label = f"[{i}/{len(plans)}] {plan.strategy} seed {plan.seed}"
        runs.append(
            TrainRecipe(
                exp,
                plan,
                data,
                baseline_groups=baseline_groups,
                progress=progress,
                pictures=pictures,
                label=label,
                processes=processes,
            ).run()
        )
    table = aggregate(runs)
    if not writes:
        return SweepResult(out, runs, table)
    write_summaries(out, exp.title, runs, table)
    if pictures:
        try:
            from archgrow.viz.plots import plot_sweep
            from archgrow.viz.report import write_sweep_report

            plot_sweep(out)
            write_sweep_report(out)
        except ImportError as exc:
            warnings.warn(f"pictures skipped: {exc}", stacklevel=2)
    if progress:
        stream.write(f"{len(runs)} runs in {time.perf_counter() - started:.1f} s\n")
    return SweepResult(out, runs, table)


def _baseline_groups(exp: Experiment, data: Any) -> list[str]:
    """The groups any strategy grows (every growable group when the experiment has no strategy)."""
    model = build_model(exp.model, data, exp.seeds[0])
    example = data.example().to(next(model.parameters()).dtype)
    graph = trace(model, example)
    if not exp.strategies:
        return [g.name for g in graph.groups if g.growable]
    names: dict[str, None] = {}
    for strategy in exp.strategies:  # bind checks each spec against the model; static triggers never grow
        names.update(dict.fromkeys(b.name for b in bind(exp.spec(strategy), graph) if not b.trigger.never_fires))
    return list(names)


# --------------------------------------------------------------------------- the combined table
def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per strategy: mean and standard deviation over its seeds."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_name.setdefault(r["strategy"], []).append(r)
    table = []
    for name, rs in by_name.items():
        row: dict[str, Any] = {"strategy": name, "kind": rs[0]["kind"], "seeds": len(rs)}
        for key in ("test_acc", "train_acc", "params", "wall_seconds", "train_seconds"):
            row[key], row[f"{key}_std"] = _mean_std([math.nan if r[key] is None else float(r[key]) for r in rs])
        row["growth_seconds"], row["growth_seconds_std"] = _mean_std([sum(r["growth_seconds"].values()) for r in rs])
        row["events"], _ = _mean_std([float(r["events"]) for r in rs])
        row["final_widths"] = {g: _mean_std([float(r["final_widths"][g]) for r in rs]) for g in rs[0]["final_widths"]}
        table.append(row)
    return table


def _mean_std(values: list[float]) -> tuple[float, float]:
    if any(math.isnan(v) for v in values):  # e.g. train accuracy with eval_train: false
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _json_number(v: Any) -> Any:
    """NaN is not JSON: write null (what browsers and strict parsers accept)."""
    return None if isinstance(v, float) and math.isnan(v) else v


def markdown_table(table: list[dict[str, Any]]) -> str:
    lines = [
        "| strategy | kind | seeds | test acc (%) | params | final widths | growth s | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        widths = ", ".join(f"{g} {m:.0f}" + (f"±{s:.0f}" if s else "") for g, (m, s) in r["final_widths"].items())
        lines.append(
            f"| {r['strategy']} | {r['kind']} | {r['seeds']} | {100 * r['test_acc']:.2f} ± {100 * r['test_acc_std']:.2f} "
            f"| {r['params']:,.0f} ± {r['params_std']:,.0f} | {widths} | {r['growth_seconds']:.2f} "
            f"| {r['wall_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_summaries(out: Path, name: str, runs: list[dict[str, Any]], table: list[dict[str, Any]]) -> None:
    table = [{k: _json_number(v) for k, v in row.items()} for row in table]
    (out / "summary.json").write_text(json.dumps({"name": name, "runs": runs, "table": table}, indent=2) + "\n")
    (out / "summary.md").write_text(markdown_table(table))
    groups = list(dict.fromkeys(g for r in runs for g in r["final_widths"]))
    columns = ["strategy", "kind", "seed", "epochs", "steps", "params", "initial_params", "train_acc", "test_acc"]
    columns += ["test_loss", "wall_seconds", "growth_seconds", "events"]
    with (out / "runs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns + [f"width:{g}" for g in groups])
        for r in runs:
            values = [r[c] if c != "growth_seconds" else sum(r[c].values()) for c in columns]
            w.writerow(values + [r["final_widths"].get(g, "") for g in groups])
