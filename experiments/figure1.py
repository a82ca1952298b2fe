"""Figure 1 of Maile et al. (2022) at CPU scale: hidden widths reached on the generated task vs n_f.

For each number of independent features n_f and each depth (1 or 2 hidden layers, 4 units each at
the start) every dynamic strategy of ``specs/`` is run for several seeds with ``archgrow run``'s
machinery; the final widths and test accuracies are collected into a Markdown table and a picture
(one panel per hidden layer, width against n_f, one line per strategy).

    python experiments/figure1.py --out runs/figure1 --doc docs/results

Depths can run in separate processes and be combined afterwards (no training):

    python experiments/figure1.py --depths 1 --out runs/figure1-h1 &
    python experiments/figure1.py --depths 2 --out runs/figure1-h2
    python experiments/figure1.py --combine runs/figure1-h1 runs/figure1-h2 --doc docs/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from archgrow.runner import parse_experiment, run_experiment

ROOT = Path(__file__).resolve().parents[1]
# the paper's seven strategies (specs/<name>.yaml) and, where the authors' code behaved otherwise,
# their variants (specs/<name>-authors.yaml)
STRATEGIES = (
    "north-select",
    "north-select-authors",
    "north-pre",
    "north-random",
    "north-weight",
    "north-weight-authors",
    "gradmax",
    "gradmax-authors",
    "firefly",
    "firefly-authors",
    "nest",
    "nest-authors",
)


def experiment(n_f: int, depth: int, args: argparse.Namespace) -> dict:
    overrides = {"max_width": args.max_width}
    return {
        "name": f"figure1-h{depth}-nf{n_f}",
        "model": {"name": "mlp", "hidden": [4] * depth},
        "data": {"kind": "generated", "n_independent": n_f, "n_samples": 5000, "n_features": 64, "test_frac": 0.1},
        "train": {"optimizer": "adam", "lr": args.lr, "batch_size": 128, "epochs": args.epochs, "eval_train": False},
        "strategies": {
            s: {"spec": str(ROOT / "specs" / f"{s}.yaml"), "defaults": overrides} for s in args.strategies
        },
        "seeds": args.seeds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nf", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-width", type=int, default=512, help="cap per layer (the paper's Table 2: 512)")
    p.add_argument("--out", type=Path, default=Path("runs/figure1"))
    p.add_argument("--doc", type=Path, help="write figure1.md/.svg/.png here")
    p.add_argument("--combine", type=Path, nargs="+", help="only merge the figure1.json of earlier --out folders")
    args = p.parse_args()

    rows = []
    if args.combine:
        for folder in args.combine:
            rows += json.loads((folder / "figure1.json").read_text())
        args.depths = sorted({r["depth"] for r in rows})
        args.nf = sorted({r["n_f"] for r in rows})
        args.seeds = sorted({r["seed"] for r in rows})
        args.strategies = list(dict.fromkeys(r["strategy"] for r in rows))
        args.epochs = max(r["epochs"] for r in rows)
    for depth in [] if args.combine else args.depths:
        for n_f in args.nf:
            t0 = time.perf_counter()
            exp = parse_experiment(experiment(n_f, depth, args), source=f"figure1 h{depth} nf{n_f}")
            result = run_experiment(exp, output=args.out / f"h{depth}-nf{n_f}", progress=False, pictures=False)
            for r in result.runs:
                metrics = args.out / f"h{depth}-nf{n_f}" / r["strategy"] / f"seed{r['seed']}" / "metrics.csv"
                rows.append({"depth": depth, "n_f": n_f, **r, "settled_epoch": settled_epoch(metrics)})
            print(f"depth {depth} n_f {n_f}: {len(result.runs)} runs in {time.perf_counter() - t0:.0f} s", flush=True)
            (args.out / "figure1.json").write_text(json.dumps(rows, indent=1))  # what is done so far survives a stop
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "figure1.json").write_text(json.dumps(rows, indent=1))
    table = markdown(rows, args)
    print(table)
    if args.doc:
        args.doc.mkdir(parents=True, exist_ok=True)
        (args.doc / "figure1.md").write_text(table)
        plot(rows, args.doc / "figure1")


def settled_epoch(metrics: Path) -> int:
    """The first epoch after which no width changed again (the budget's end if still growing)."""
    import csv

    with metrics.open() as f:
        rows = list(csv.DictReader(f))
    widths = [tuple(v for k, v in r.items() if k.startswith("width:")) for r in rows]
    last = len(widths) - 1
    while last > 0 and widths[last - 1] == widths[-1]:
        last -= 1
    return int(rows[last]["epoch"])


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(rows: list[dict], **where) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = []
    for depth in args.depths:
        layers = [f"hidden{i}" for i in range(1, depth + 1)]
        for layer in layers:
            lines.append(f"\n**{depth} hidden layer{'s' if depth > 1 else ''}, {layer}: final width (mean ± std over "
                         f"{len(args.seeds)} seeds)**\n")
            lines.append("| strategy | " + " | ".join(f"n_f={n}" for n in args.nf) + " |")
            lines.append("|---|" + "---|" * len(args.nf))
            for s in args.strategies:
                cells = []
                for n in args.nf:
                    m, sd = _ms([r["final_widths"][layer] for r in cell(rows, depth=depth, n_f=n, strategy=s)])
                    cells.append(f"{m:.0f} ± {sd:.0f}")
                lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines.append(f"\n**{depth} hidden layer{'s' if depth > 1 else ''}: test accuracy % (mean ± std)**\n")
        lines.append("| strategy | " + " | ".join(f"n_f={n}" for n in args.nf) + " |")
        lines.append("|---|" + "---|" * len(args.nf))
        for s in args.strategies:
            cells = []
            for n in args.nf:
                m, sd = _ms([100 * r["test_acc"] for r in cell(rows, depth=depth, n_f=n, strategy=s)])
                cells.append(f"{m:.1f} ± {sd:.1f}")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines.append(
            f"\n**{depth} hidden layer{'s' if depth > 1 else ''}: last epoch in which a width changed (mean; "
            f"{args.epochs} = a width changed in the last epoch of the budget)**\n"
        )
        lines.append("| strategy | " + " | ".join(f"n_f={n}" for n in args.nf) + " |")
        lines.append("|---|" + "---|" * len(args.nf))
        for s in args.strategies:
            cells = [f"{_ms([r['settled_epoch'] for r in cell(rows, depth=depth, n_f=n, strategy=s)])[0]:.1f}" for n in args.nf]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    seconds = sum(r["wall_seconds"] for r in rows)
    lines.append(f"\n{len(rows)} runs, {seconds / 60:.1f} min of run time in total.\n")
    return "\n".join(lines)


def plot(rows: list[dict], stem: Path) -> None:
    from matplotlib.figure import Figure

    panels = [(d, f"hidden{i}") for d in (1, 2) for i in range(1, d + 1) if any(r["depth"] == d for r in rows)]
    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    nfs = sorted({r["n_f"] for r in rows})
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    # one colour per strategy, the authors' variant dashed in its paper variant's colour
    bases = list(dict.fromkeys(s.removesuffix("-authors") for s in strategies))
    colour = {b: f"C{i % 10}" for i, b in enumerate(bases)}
    for ax, (depth, layer) in zip(axes, panels, strict=True):
        for s in strategies:
            stats = [_ms([r["final_widths"][layer] for r in cell(rows, depth=depth, n_f=n, strategy=s)]) for n in nfs]
            style = {"color": colour[s.removesuffix("-authors")], "ls": "--" if s.endswith("-authors") else "-"}
            ax.errorbar(nfs, [m for m, _ in stats], yerr=[sd for _, sd in stats], marker="o", ms=3, capsize=2, label=s, **style)
        ax.plot(nfs, nfs, "k:", lw=1, label="n_f")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("independent features n_f")
        ax.set_ylabel("final width (units)")
        ax.set_title(f"{depth} hidden layer{'s' if depth > 1 else ''}: {layer}")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    for suffix in ("svg", "png"):
        fig.savefig(f"{stem}.{suffix}", dpi=110, metadata={"Date": None} if suffix == "svg" else None)


if __name__ == "__main__":
    main()
