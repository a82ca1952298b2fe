"""Figures 2-3 of Maile et al. (2022) from finished sweeps of ``experiments/mnist_mlp.yaml`` or
``experiments/fashion_mlp.yaml``.

Reads only the sweeps' files (no training; several sweep folders of one experiment are merged,
e.g. one run with ``--strategy`` for the strategies a first, interrupted sweep did not reach): test accuracy and training time against the final
parameter count for every strategy and static baseline (Figure 2), and each hidden layer's width
over training for the dynamic strategies, mean over seeds (Figure 3). Writes the pictures and a
Markdown table into ``--doc``.

    archgrow run experiments/mnist_mlp.yaml --out runs/mnist_mlp
    python experiments/figures23.py runs/mnist_mlp --doc docs/results
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from archgrow.runner import aggregate, markdown_table
from archgrow.viz.plots import width_series


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweeps", type=Path, nargs="+", help="sweep folders of `archgrow run` (merged)")
    p.add_argument("--doc", type=Path, required=True)
    p.add_argument("--name", default="figures23")
    args = p.parse_args()
    runs, title = _runs(args.sweeps)
    table = aggregate(runs)
    args.doc.mkdir(parents=True, exist_ok=True)
    (args.doc / f"{args.name}.md").write_text(markdown_table(table))
    strategies = list(dict.fromkeys(r["strategy"] for r in runs))
    tab20 = colormaps["tab20"]  # 20 distinct colours: dark shades first, then the light ones
    colours = {s: tab20((2 * i) % 20 + (2 * i) // 20 % 2) for i, s in enumerate(strategies)}

    # Figure 2: accuracy and time vs parameters
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_acc, ax_time = fig.subplots(1, 2)
    for s in strategies:
        rs = [r for r in runs if r["strategy"] == s]
        marker = "s" if rs[0]["kind"] == "static" else "o"
        (pm, ps), (am, as_), (tm, ts) = (
            _ms([r["params"] for r in rs]),
            _ms([100 * r["test_acc"] for r in rs]),
            _ms([r["train_seconds"] for r in rs]),
        )
        ax_acc.errorbar(pm, am, xerr=ps, yerr=as_, fmt=marker, color=colours[s], capsize=3, label=s)
        ax_time.errorbar(pm, tm, xerr=ps, yerr=ts, fmt=marker, color=colours[s], capsize=3, label=s)
    for ax, label in ((ax_acc, "test accuracy (%)"), (ax_time, "training time incl. growth (s)")):
        ax.set_xscale("log")
        ax.set_xlabel("parameters at the end of training")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_time.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"{title}: mean ± std over seeds (squares: static)")
    _save(fig, args.doc / f"{args.name}-size")

    # Figure 3: widths over training, dynamic strategies only
    dynamic = [s for s in strategies if any(r["strategy"] == s and r["kind"] == "growing" for r in runs)]
    groups = list(next(r for r in runs if r["kind"] == "growing")["initial_widths"])
    fig = Figure(figsize=(5 * len(groups) + 2, 4), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for s in dynamic:
        dirs = [r["_dir"] for r in runs if r["strategy"] == s]
        series = [width_series(d) for d in dirs]
        last = max(r["steps"] for r in runs if r["strategy"] == s)
        for ax, g in zip(axes, groups, strict=True):
            steps = list(range(0, last + 1))
            mean = [statistics.fmean(_at(ser[g], t) for ser in series) for t in steps]
            ax.plot(steps, mean, color=colours[s], label=s, drawstyle="steps-post")
    for ax, g in zip(axes, groups, strict=True):
        ax.set_title(g)
        ax.set_xlabel("training step")
        ax.set_ylabel("width (units), mean over seeds")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    _save(fig, args.doc / f"{args.name}-widths")


def _runs(sweeps: list[Path]) -> tuple[list[dict], str]:
    """Every finished run's summary (a run directory with summary.json), in the experiment's order:
    strategies, then baselines, seeds ascending."""
    order: list[str] = []
    runs = []
    title = ""
    for sweep in sweeps:
        exp = json.loads((sweep / "experiment.json").read_text())
        title = title or exp.get("name") or sweep.name
        order += [n for n in [*exp.get("strategies", {}), *exp.get("baselines", {})] if n not in order]
        for path in sorted(sweep.glob("*/seed*/summary.json")):
            runs.append({**json.loads(path.read_text()), "_dir": path.parent})
    rank = {n: i for i, n in enumerate(order)}
    runs.sort(key=lambda r: (rank.get(r["strategy"], len(rank)), r["seed"]))
    return runs, title


def _at(series: tuple[list[int], list[int]], step: int) -> int:
    """Width after ``step`` from a step function given as (steps, widths)."""
    steps, widths = series
    value = widths[0]
    for s, w in zip(steps, widths, strict=True):
        if s <= step:
            value = w
    return value


def _save(fig: Figure, stem: Path) -> None:
    fig.savefig(f"{stem}.svg", metadata={"Date": None})
    fig.savefig(f"{stem}.png", dpi=110)


if __name__ == "__main__":
    main()
