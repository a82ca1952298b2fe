"""Pictures of a run or a sweep, drawn from the files of ``docs/run-directory.md`` alone.

The plots read only the plain-text files the runner writes (``summary.json``, ``history.jsonl``,
``metrics.csv``, ``triggers.csv``, the sweep's ``summary.json``), never live objects: a finished
run can be redrawn long after training, on another machine, by ``tools/visualize_growth``.

matplotlib is used through its object-oriented API only (``Figure`` + ``savefig``): no pyplot, no
``matplotlib.use``, no rcParams changes, so drawing is safe inside a training process, a notebook
or a test run that has its own matplotlib state.  matplotlib is imported lazily, when a figure is
made: the readers here (also used by :mod:`archgrow.viz.report`, which only embeds existing
pictures) work without it.

Every plot writes ``<stem>.svg`` (without a date, so regenerating gives the same file) and
``<stem>.png`` and returns both paths.  Plots with nothing to draw (``plot_triggers`` on a run
without trigger evaluations, ``plot_training`` without ``metrics.csv``) write nothing and return
``[]``; the report skips pictures that are absent.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archgrow.errors import VizDependencyError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PathLike = str | os.PathLike[str]

#: At most this many per-group panels in ``triggers.svg`` (the groups with most growth events win).
MAX_TRIGGER_PANELS = 12
#: Above this many lines the legend goes outside the axes, to the right.
LEGEND_INSIDE_MAX = 6
PNG_DPI = 120


# ----------------------------------------------------------------------------------------------
# Readers (no matplotlib needed)
# ----------------------------------------------------------------------------------------------


def _read_summary(directory: PathLike, what: str) -> Any:
    """``<directory>/summary.json``; :class:`FileNotFoundError` saying the dir is not a ``what`` directory."""
    path = Path(directory) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: {Path(directory)} is not a {what} directory (see docs/run-directory.md)"
        )
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def load_run_summary(run_dir: PathLike) -> dict[str, Any]:
    """``<run_dir>/summary.json``; :class:`FileNotFoundError` naming the file if the dir is not a run."""
    return _read_summary(run_dir, "run")


def load_sweep_summary(sweep_dir: PathLike) -> dict[str, Any]:
    """``<sweep_dir>/summary.json`` (with its ``runs`` list); clear errors for a missing file or a run dir."""
    summary = _read_summary(sweep_dir, "sweep")
    path = Path(sweep_dir) / "summary.json"
    if not isinstance(summary, dict) or not isinstance(summary.get("runs"), list):
        raise ValueError(
            f"{path} has no 'runs' list: {Path(sweep_dir)} looks like a run directory, not a sweep directory"
        )
    return summary


def read_json(path: PathLike) -> Any | None:
    """A JSON file's content, or ``None`` when the file does not exist."""
    p = Path(path)
    if not p.is_file():
        return None
    with p.open(encoding="utf-8") as f:
        return json.load(f)


def read_history(run_dir: PathLike) -> list[dict[str, Any]]:
    """The growth events of ``history.jsonl`` in file order (``[]`` when absent; blank lines skipped)."""
    path = Path(run_dir) / "history.jsonl"
    if not path.is_file():
        return []
    events = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                events.append(json.loads(line))
    return events


def read_csv(path: PathLike) -> list[dict[str, str]]:
    """Rows of a CSV file with a header, as strings (``[]`` when the file is absent or header-only)."""
    p = Path(path)
    if not p.is_file():
        return []
    with p.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def to_float(value: Any) -> float:
    """A CSV/JSON cell as a float; empty, ``None`` or unparsable cells become NaN."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def width_series(run_dir: PathLike) -> dict[str, tuple[list[int], list[int]]]:
    """Each group's width as a step function: ``group -> (steps, widths)`` for a ``where="post"`` plot.

    The series starts at step 0 with the group's width in ``initial_widths`` (for static runs,
    which train at one width throughout, ``final_widths``), changes to ``new_width`` at every
    event of ``history.jsonl`` (the width *after* that optimizer step), and ends at the run's last
    step (``steps`` of ``summary.json``, or the last event if that is later) with the last width.
    Groups that only appear in the history start from their first event's ``old_width``.
    """
    summary = load_run_summary(run_dir)
    static = summary.get("kind") == "static"
    start = dict(summary.get("final_widths") or {}) if static else dict(summary.get("initial_widths") or {})
    for group, width in (summary.get("initial_widths") or {}).items():
        start.setdefault(group, width)
    events = read_history(run_dir)
    for ev in events:
        start.setdefault(str(ev["group"]), int(ev["old_width"]))
    series: dict[str, tuple[list[int], list[int]]] = {g: ([0], [int(w)]) for g, w in start.items()}
    last_step = int(summary.get("steps") or 0)
    for ev in sorted(events, key=lambda e: int(e["step"])):  # stable: same-step events keep file order
        steps, widths = series[str(ev["group"])]
        step = int(ev["step"])
        if steps[-1] == step:  # two events of one group in one step: keep the final width
            widths[-1] = int(ev["new_width"])
        else:
            steps.append(step)
            widths.append(int(ev["new_width"]))
        last_step = max(last_step, step)
    for steps, widths in series.values():
        if steps[-1] < last_step:
            steps.append(last_step)
            widths.append(widths[-1])
    return series


def run_title(summary: dict[str, Any]) -> str:
    """``name · strategy · seed k`` (parts that are missing are left out)."""
    parts = [str(summary[k]) for k in ("name", "strategy") if summary.get(k) not in (None, "")]
    if summary.get("seed") is not None:
        parts.append(f"seed {summary['seed']}")
    return " · ".join(parts) or "run"


# ----------------------------------------------------------------------------------------------
# Drawing helpers
# ----------------------------------------------------------------------------------------------


def _new_figure(**kwargs: Any) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise VizDependencyError(
            "archgrow's plots need matplotlib, which is not installed: pip install 'archgrow[viz]'"
        ) from e
    return Figure(layout="constrained", **kwargs)


def _text(s: Any) -> str:
    """Text for matplotlib with ``$`` escaped, so names are never parsed as mathtext."""
    return str(s).replace("$", r"\$")


# matplotlib names markers and clip paths "m"/"p" + 10 hex digits of a hash salted with a fresh uuid
# (unless the global rcParam svg.hashsalt is set, which we must not touch).
_RANDOM_SVG_ID = re.compile(r'id="([mp][0-9a-f]{10})"')


def _stable_svg_ids(text: str) -> str:
    """Renumber matplotlib's random marker/clip-path ids in order of appearance, so that drawing the
    same data twice gives the same SVG bytes."""
    mapping: dict[str, str] = {}
    for old in _RANDOM_SVG_ID.findall(text):
        mapping.setdefault(old, f"{old[0]}{len(mapping)}")
    if not mapping:
        return text
    return re.sub(r"\b[mp][0-9a-f]{10}\b", lambda m: mapping.get(m.group(0), m.group(0)), text)


def _save(fig: Figure, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    svg = stem.with_name(stem.name + ".svg")
    png = stem.with_name(stem.name + ".png")
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg.write_text(_stable_svg_ids(buffer.getvalue()), encoding="utf-8")
    fig.savefig(png, format="png", dpi=PNG_DPI)
    return [svg, png]


def _stem(default_dir: PathLike, name: str, stem: PathLike | None) -> Path:
    return Path(default_dir) / name if stem is None else Path(stem)


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


_LINESTYLES = ("-", "--", ":", "-.")


def _thousands(ax_axis: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    ax_axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))


def _legend(fig: Figure, ax: Axes, n: int, **kwargs: Any) -> None:
    """Inside the axes for a few entries, outside to the right (in columns) for many."""
    if n == 0:
        return
    if n <= LEGEND_INSIDE_MAX:
        legend = ax.legend(fontsize="small", **kwargs)
    else:
        handles, labels = ax.get_legend_handles_labels()
        legend = fig.legend(
            handles,
            labels,
            loc="outside right upper",
            fontsize="x-small" if n > 20 else "small",
            ncols=1 + (n - 1) // 25,
            **kwargs,
        )
    legend.set_gid("legend")


def _positive_span(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    if not finite or min(finite) <= 0:
        return 0.0
    return max(finite) / min(finite)


# ----------------------------------------------------------------------------------------------
# Run plots
# ----------------------------------------------------------------------------------------------


def plot_widths(run_dir: PathLike, stem: PathLike | None = None) -> list[Path]:
    """``widths.svg/.png``: each group's width over training steps (flat lines for static runs)."""
    summary = load_run_summary(run_dir)
    series = width_series(run_dir)
    fig = _new_figure(figsize=(8.0 if len(series) <= LEGEND_INSIDE_MAX else 10.0, 4.5))
    ax = fig.add_subplot()
    colors = _colors(min(len(series), 10))  # beyond 10 groups: the 10 colours again, with another line style
    for i, (group, (steps, widths)) in enumerate(series.items()):
        ax.step(
            steps,
            widths,
            where="post",
            label=_text(group),
            color=colors[i % 10],
            linestyle=_LINESTYLES[(i // 10) % len(_LINESTYLES)],
            linewidth=1.6,
        )
    if not series:
        ax.text(0.5, 0.5, "no width groups in summary.json", ha="center", va="center", transform=ax.transAxes)
    all_widths = [w for _, ws in series.values() for w in ws]
    if _positive_span(all_widths) >= 16:
        ax.set_yscale("log", base=2)
    kind = "static baseline" if summary.get("kind") == "static" else f"{int(summary.get('events') or 0)} growth events"
    ax.set_title(_text(f"{run_title(summary)}: width per group ({kind})"))
    ax.set_xlabel("training step (optimizer steps)")
    ax.set_ylabel("width (units / channels)")
    ax.grid(True, alpha=0.3)
    steps_total, epochs = int(summary.get("steps") or 0), int(summary.get("epochs") or 0)
    if steps_total > 0 and epochs > 0:
        per_epoch = steps_total / epochs
        top = ax.secondary_xaxis("top", functions=(lambda s: s / per_epoch, lambda e: e * per_epoch))
        top.set_xlabel("epoch")
    _legend(fig, ax, len(series), title="group")
    return _save(fig, _stem(run_dir, "widths", stem))


def _pick_trigger_groups(groups: Sequence[str], counts: dict[str, int]) -> list[str]:
    if len(groups) <= MAX_TRIGGER_PANELS:
        return list(groups)
    keep = set(sorted(groups, key=lambda g: -counts.get(g, 0))[:MAX_TRIGGER_PANELS])
    return [g for g in groups if g in keep]


def plot_triggers(run_dir: PathLike, stem: PathLike | None = None) -> list[Path]:
    """``triggers.svg/.png``: score and threshold per group over steps, growth events marked.

    One small panel per group (a grid, at most :data:`MAX_TRIGGER_PANELS`, preferring the groups
    that grew most).  Red triangles are evaluations whose trigger asked to grow (``add > 0`` in
    ``triggers.csv``, before caps); dotted vertical lines are the growths that happened
    (``history.jsonl``).  A run without trigger evaluations (static baselines, schedule-only
    specs whose ``triggers.csv`` is empty or absent) gets no picture: nothing is written and
    ``[]`` is returned.
    """
    summary = load_run_summary(run_dir)
    rows = read_csv(Path(run_dir) / "triggers.csv")
    if not rows:
        return []
    by_group: dict[str, list[tuple[float, float, float, float]]] = {}
    for r in rows:
        by_group.setdefault(r["group"], []).append(
            (to_float(r["step"]), to_float(r["score"]), to_float(r["threshold"]), to_float(r.get("add")))
        )
    event_steps: dict[str, list[int]] = {}
    for ev in read_history(run_dir):
        event_steps.setdefault(str(ev["group"]), []).append(int(ev["step"]))
    groups = _pick_trigger_groups(list(by_group), {g: len(s) for g, s in event_steps.items()})

    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = _new_figure(figsize=(max(8.5, 4.4 * ncols), (2.7 if ncols > 1 else 3.6) * nrows + 0.9))  # room for the legend
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel()
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    for ax, group in zip(axes, groups, strict=False):
        pts = sorted(by_group[group])
        steps = [p[0] for p in pts]
        scores = [p[1] for p in pts]
        thresholds = [p[2] for p in pts]
        ax.plot(steps, scores, color="C0", linewidth=1.2, label="score")
        ax.plot(steps, thresholds, color="C1", linestyle="--", linewidth=1.2, label="threshold")
        asked = [(s, v) for s, v, _t, a in pts if a > 0 and math.isfinite(v)]
        if asked:
            ax.scatter(
                *zip(*asked, strict=True),
                marker="^",
                color="C3",
                s=18,
                zorder=3,
                label="trigger asked to grow (add > 0)",
            )
        for i, s in enumerate(event_steps.get(group, [])):
            ax.axvline(s, color="0.35", linestyle=":", linewidth=1.0, label="growth event" if i == 0 else None)
        if _positive_span(scores + thresholds) > 1e3:
            ax.set_yscale("log")
        n_events = len(event_steps.get(group, []))
        ax.set_title(_text(f"{group} ({n_events} event{'s' if n_events != 1 else ''})"), fontsize="medium")
        ax.grid(True, alpha=0.3)
    for ax in axes[: len(groups)]:
        ax.tick_params(labelbottom=True)
    for ax in axes[(nrows - 1) * ncols : len(groups)]:
        ax.set_xlabel("training step")
    for ax in axes[: len(groups) : ncols]:
        ax.set_ylabel("score (trigger units)")
    shown = "" if len(groups) == len(by_group) else f" (the {len(groups)} of {len(by_group)} groups with most events)"
    fig.suptitle(_text(f"{run_title(summary)}: trigger score vs threshold{shown}"))
    handles: dict[str, Any] = {}
    for ax in axes[: len(groups)]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    legend = fig.legend(
        list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles), fontsize="small"
    )
    legend.set_gid("legend")
    return _save(fig, _stem(run_dir, "triggers", stem))


def plot_training(run_dir: PathLike, stem: PathLike | None = None) -> list[Path]:
    """``training.svg/.png``: train/test accuracy (top) and parameter count (bottom) per epoch.

    Epoch 0 is the model before training.  Without ``metrics.csv`` nothing is written (``[]``).
    """
    summary = load_run_summary(run_dir)
    rows = read_csv(Path(run_dir) / "metrics.csv")
    if not rows:
        return []
    rows.sort(key=lambda r: to_float(r.get("epoch")))
    epochs = [to_float(r.get("epoch")) for r in rows]
    marker = "o" if len(rows) <= 30 else None
    fig = _new_figure(figsize=(7.5, 6.0))
    from matplotlib.ticker import MaxNLocator

    ax_acc, ax_par = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    for key, label, color in (("train_acc", "train", "C0"), ("test_acc", "test", "C1")):
        ax_acc.plot(
            epochs, [100 * to_float(r.get(key)) for r in rows], marker=marker, markersize=3.5, color=color, label=label
        )
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.grid(True, alpha=0.3)
    ax_acc.legend(fontsize="small", loc="lower right").set_gid("legend")
    ax_acc.set_title(_text(f"{run_title(summary)}: training"))
    ax_par.plot(epochs, [to_float(r.get("params")) for r in rows], marker=marker, markersize=3.5, color="C2")
    ax_par.set_ylabel("parameters at epoch end (count)")
    ax_par.set_xlabel("epoch (0 = before training)")
    _thousands(ax_par.yaxis)
    ax_par.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_par.grid(True, alpha=0.3)
    return _save(fig, _stem(run_dir, "training", stem))


def plot_run(run_dir: PathLike) -> list[Path]:
    """All run pictures (widths, triggers, training) into the run directory; the paths written."""
    load_run_summary(run_dir)  # fail early, with the clear message, on a non-run directory
    return [*plot_widths(run_dir), *plot_triggers(run_dir), *plot_training(run_dir)]


# ----------------------------------------------------------------------------------------------
# Sweep plots
# ----------------------------------------------------------------------------------------------


def runs_by_strategy(runs: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Run summaries grouped by strategy, strategies in order of first appearance, seeds sorted."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(str(run.get("strategy")), []).append(run)
    for members in groups.values():
        members.sort(key=lambda r: (r.get("seed") is None, r.get("seed") if isinstance(r.get("seed"), int) else 0))
    return groups


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of the finite values; NaNs if none."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def plot_accuracy_vs_params(sweep_dir: PathLike, stem: PathLike | None = None) -> list[Path]:
    """``accuracy_vs_params.svg/.png``: final test accuracy vs parameter count of every run.

    One colour per strategy; each seed drawn faintly, the strategy's mean with error bars of one
    sample standard deviation over seeds on both axes.  Static baselines (``kind == "static"``)
    are squares, growing strategies circles.  The x axis is logarithmic when the parameter
    counts span more than a factor of 10.
    """
    summary = load_sweep_summary(sweep_dir)
    groups = runs_by_strategy(summary["runs"])
    fig = _new_figure(figsize=(8.0 if len(groups) <= LEGEND_INSIDE_MAX else 10.0, 5.0))
    ax = fig.add_subplot()
    all_params: list[float] = []
    for (strategy, runs), color in zip(groups.items(), _colors(len(groups)), strict=True):
        static = any(r.get("kind") == "static" for r in runs)
        marker = "s" if static else "o"
        pts = [(to_float(r.get("params")), 100 * to_float(r.get("test_acc"))) for r in runs]
        pts = [(p, a) for p, a in pts if math.isfinite(p) and math.isfinite(a)]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        all_params.extend(xs)
        ax.scatter(xs, ys, marker=marker, color=color, alpha=0.3, s=22, linewidths=0)
        (mx, sx), (my, sy) = mean_std(xs), mean_std(ys)
        label = f"{strategy} (static)" if static else strategy
        ax.errorbar(
            [mx],
            [my],
            xerr=[sx],
            yerr=[sy],
            fmt=marker,
            color=color,
            markersize=7,
            markeredgecolor="black",
            markeredgewidth=0.6,
            capsize=3,
            elinewidth=1.2,
            label=_text(f"{label}, n={len(pts)}"),
        )
    if not all_params:
        ax.text(0.5, 0.5, "no runs with a test accuracy", ha="center", va="center", transform=ax.transAxes)
    elif _positive_span(all_params) > 10:
        ax.set_xscale("log")
    else:
        _thousands(ax.xaxis)
    ax.set_xlabel("parameters at the end of training (count)")
    ax.set_ylabel("final test accuracy (%)")
    name = summary.get("name")
    ax.set_title(_text(f"{name + ': ' if name else ''}test accuracy vs parameters (mean ± std over seeds)"))
    ax.grid(True, alpha=0.3)
    _legend(fig, ax, len(groups), title="strategy")
    return _save(fig, _stem(sweep_dir, "accuracy_vs_params", stem))


def plot_sweep(sweep_dir: PathLike) -> list[Path]:
    """The sweep pictures (``accuracy_vs_params``); run pictures are drawn by :func:`plot_run`."""
    return plot_accuracy_vs_params(sweep_dir)
