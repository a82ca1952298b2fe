"""One self-contained HTML page per run and per sweep, made from the files of the run directory.

A report is meant to be mailed, archived or opened from a cluster's file browser, so it is a
single file with nothing external: the pictures are inlined (SVG markup, or a base64 PNG when only
the PNG exists), the CSS is inline and there is no JavaScript.  It is built from the plain-text
files of ``docs/run-directory.md`` alone and never draws: pictures that are present are embedded,
absent ones are skipped (draw them first with :mod:`archgrow.viz.plots`), so writing a report
does not need matplotlib.

Every piece of text from the run (experiment, strategy and group names, config values) goes
through :func:`html.escape`; the inlined SVGs get their ``id`` attributes prefixed so that two
pictures on one page cannot capture each other's clip paths or glyphs.  The output has no
timestamps: regenerating a report from the same files gives the same bytes.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from archgrow.viz.plots import (
    load_run_summary,
    load_sweep_summary,
    mean_std,
    read_csv,
    read_history,
    read_json,
    run_title,
    runs_by_strategy,
    to_float,
)

PathLike = str | os.PathLike[str]

#: Growth events shown in a run report; the rest are counted in a note (history.jsonl has them all).
MAX_EVENT_ROWS = 200

RUN_PICTURES = (
    ("graph_before", "Width-group graph before training"),
    ("graph_after", "Width-group graph after training"),
    ("widths", "Width of each group over training"),
    ("triggers", "Trigger score and threshold per group"),
    ("training", "Accuracy and parameter count per epoch"),
)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.1em; } .sub { color: #666; margin-top: 0; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
.scroll { overflow-x: auto; max-height: 40em; overflow-y: auto; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; margin-bottom: 0.3em; }
figure svg, figure img { max-width: 100%; height: auto; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { color: #666; font-size: 0.9em; } .muted { color: #999; }
"""


# ----------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------

_INT_KEYS = {"epoch", "epochs", "step", "steps", "events", "seed", "old_width", "new_width", "n", "runs", "seeds"}


def _missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def fmt_acc(value: Any) -> str:
    """A fraction in [0, 1] as a percentage with two decimals (``–`` when missing)."""
    v = to_float(value)
    return "–" if math.isnan(v) else f"{100 * v:.2f} %"


def fmt_int(value: Any) -> str:
    """A count with thousands separators (``–`` when missing); a mean over seeds below 1,000 keeps one decimal."""
    v = to_float(value)
    if not math.isfinite(v):
        return "–"
    return f"{v:,.1f}" if abs(v) < 1000 and not v.is_integer() else f"{round(v):,}"


def fmt_seconds(value: Any) -> str:
    """Seconds: milliseconds below 0.1 s, two decimals below 10 s, one above; minutes added from two minutes on."""
    v = to_float(value)
    if math.isnan(v):
        return "–"
    if 0 < abs(v) < 0.1:
        return f"{1000 * v:.1f} ms"
    text = f"{v:.2f} s" if abs(v) < 10 else f"{v:,.1f} s"
    if abs(v) >= 120:
        minutes = v / 60
        text += f" ({minutes:.1f} min)" if minutes < 120 else f" ({minutes / 60:.1f} h)"
    return text


def fmt_number(value: Any) -> str:
    """Any other value: whole numbers with thousands separators, other numbers to four significant
    digits, text as is, anything else as JSON."""
    if isinstance(value, str):
        v = to_float(value)
        if math.isnan(v):
            return value or "–"
        value = v
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return json.dumps(value, default=str)
    if not math.isfinite(value):
        return "–" if math.isnan(value) else str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{round(value):,}"
    return f"{value:.4g}"


def fmt_cell(key: str, value: Any) -> str:
    """Format a value by what its column name says it is (accuracy, count, seconds, loss)."""
    if _missing(value):
        return "–"
    k = key.lower()
    if isinstance(value, str) and math.isnan(to_float(value)):
        return value
    if "acc" in k:
        return fmt_acc(value)
    if "seconds" in k or k in {"wall", "time"}:
        return fmt_seconds(value)
    if "params" in k or "width" in k or k in _INT_KEYS:
        return fmt_int(value)
    if "loss" in k:
        v = to_float(value)
        return f"{v:.4f}" if math.isfinite(v) else str(value)
    return fmt_number(value)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, left: int | Collection[int] = 0, raw: bool = False
) -> str:
    """An HTML table; ``left`` (the first n columns, or a set of indices) is left-aligned.  Cells are escaped
    unless ``raw`` (then the caller has escaped them)."""
    lefts = set(range(left)) if isinstance(left, int) else set(left)

    def cls(i: int) -> str:
        return ' class="l"' if i in lefts else ""

    head = "<tr>" + "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(headers)) + "</tr>"
    out = ['<div class="scroll"><table>', head]
    for row in rows:
        out.append("<tr>" + "".join(f"<td{cls(i)}>{c if raw else _e(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</table></div>")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------

_SVG_START = re.compile(r"<svg\b", re.IGNORECASE)
_DROP = re.compile(
    r"<metadata\b.*?</metadata>|<script\b.*?</script>|<foreignObject\b.*?</foreignObject>", re.IGNORECASE | re.DOTALL
)
_ID = re.compile(r'\bid="([^"]*)"')
_HREF = re.compile(r'((?:xlink:)?href=")#([^"]*)"')
_URL = re.compile(r"url\(\s*#([^)\s]*)\s*\)")


def inline_svg(path: PathLike, prefix: str) -> str:
    """An SVG file's markup for inlining in HTML, with every id (and reference to it) prefixed.

    The XML declaration, DOCTYPE, comments before the root and ``<metadata>`` are dropped, as are
    ``<script>`` and ``<foreignObject>`` elements (the pictures are data, never code).
    """
    text = Path(path).read_text(encoding="utf-8")
    match = _SVG_START.search(text)
    if match is None:
        raise ValueError(f"{path} is not an SVG file (no <svg> element)")
    text = _DROP.sub("", text[match.start() :])
    text = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', text)
    text = _HREF.sub(lambda m: f'{m.group(1)}#{prefix}{m.group(2)}"', text)
    return _URL.sub(lambda m: f"url(#{prefix}{m.group(1)})", text).strip()


class _Pictures:
    """Embeds pictures with page-unique id prefixes."""

    def __init__(self) -> None:
        self.count = 0

    def figure(self, stem: Path, caption: str) -> str | None:
        """``<figure>`` with ``<stem>.svg`` inlined (or ``<stem>.png`` as base64); ``None`` if neither exists."""
        svg, png = stem.with_name(stem.name + ".svg"), stem.with_name(stem.name + ".png")
        if svg.is_file():
            self.count += 1
            body = inline_svg(svg, f"f{self.count}-")
        elif png.is_file():
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            body = f'<img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
        else:
            return None
        return f"<figure><figcaption>{_e(caption)}</figcaption>\n{body}\n</figure>"


# ----------------------------------------------------------------------------------------------
# Run report
# ----------------------------------------------------------------------------------------------


def _page(title: str, body: Sequence[str]) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            *body,
            '<p class="note">Made by archgrow.viz.report from the files of this directory (docs/run-directory.md).</p>',
            "</body>",
            "</html>",
            "",
        ]
    )


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _ratio(initial: Any, final: Any) -> str:
    a, b = to_float(initial), to_float(final)
    if not (math.isfinite(a) and math.isfinite(b)) or a == 0:
        return "–"
    return f"×{b / a:.2f}"


def _growth(initial: Any, final: Any) -> str:
    """``1,000 → 1,500 (+500, +50.0 %)``."""
    text = f"{fmt_int(initial)} → {fmt_int(final)}"
    a, b = to_float(initial), to_float(final)
    if math.isfinite(a) and math.isfinite(b):
        pct = 100 * (b - a) / a if a else math.nan
        text += f" ({round(b - a):+,}" + (f", {pct:+.{2 if abs(pct) < 1 else 1}f} %)" if a else ")")
    return text


def _key_numbers(summary: dict[str, Any], config: dict[str, Any] | None) -> str:
    growth = summary.get("growth_seconds") or {}
    growth_total = sum(to_float(v) for v in growth.values() if math.isfinite(to_float(v))) if growth else math.nan
    wall = to_float(summary.get("wall_seconds"))
    share = f" ({100 * growth_total / wall:.1f} % of wall time)" if wall > 0 and math.isfinite(growth_total) else ""
    split = ", ".join(f"{k} {fmt_seconds(v)}" for k, v in growth.items()) if growth else ""
    rows = [
        ("Test accuracy", fmt_acc(summary.get("test_acc"))),
        ("Train accuracy", fmt_acc(summary.get("train_acc"))),
        ("Test loss", fmt_cell("loss", summary.get("test_loss"))),
        ("Parameters", _growth(summary.get("initial_params"), summary.get("params"))),
        ("Growth events", fmt_int(summary.get("events"))),
        ("Epochs / steps", f"{fmt_int(summary.get('epochs'))} / {fmt_int(summary.get('steps'))}"),
        ("Wall time", fmt_seconds(summary.get("wall_seconds"))),
        ("Training time", fmt_seconds(summary.get("train_seconds"))),
        ("Growth time", f"{fmt_seconds(growth_total)}{share}" + (f": {split}" if split else "")),
        ("Device / dtype", f"{summary.get('device', '–')} / {summary.get('dtype', '–')}"),
    ]
    if config and config.get("data_name"):
        rows.append(("Data", str(config["data_name"])))
    return _table(["quantity", "value"], rows, left=2)


def _widths_table(summary: dict[str, Any], events: Sequence[dict[str, Any]]) -> str:
    initial = summary.get("initial_widths") or {}
    final = summary.get("final_widths") or {}
    groups = list(initial) + [g for g in final if g not in initial]
    if not groups:
        return '<p class="note">No width groups (summary.json has no initial_widths).</p>'
    counts: dict[str, int] = {}
    for ev in events:
        counts[str(ev.get("group"))] = counts.get(str(ev.get("group")), 0) + 1
    rows = [
        (
            g,
            fmt_int(initial.get(g)),
            fmt_int(final.get(g)),
            _ratio(initial.get(g), final.get(g)),
            fmt_int(counts.get(g, 0)),
        )
        for g in groups
    ]
    return _table(["group", "initial width", "final width", "change", "events"], rows, left=1)


_EVENT_COLUMNS = (
    "step",
    "epoch",
    "group",
    "old_width",
    "new_width",
    "trigger",
    "score",
    "threshold",
    "initializer",
    "trigger_seconds",
    "initializer_seconds",
    "params",
)


def _events_table(events: Sequence[dict[str, Any]]) -> str:
    if not events:
        return '<p class="note">No growth events (history.jsonl is empty or absent).</p>'
    extra = [k for ev in events[:MAX_EVENT_ROWS] for k in ev if k not in _EVENT_COLUMNS]
    columns = [c for c in _EVENT_COLUMNS if any(c in ev for ev in events)] + list(dict.fromkeys(extra))
    rows = [[fmt_cell(c, ev.get(c)) for c in columns] for ev in events[:MAX_EVENT_ROWS]]
    text_cols = {"group", "trigger", "initializer"}
    note = ""
    if len(events) > MAX_EVENT_ROWS:
        note = (
            f'<p class="note">Showing the first {MAX_EVENT_ROWS:,} of {len(events):,} events; '
            "history.jsonl has them all.</p>"
        )
    return note + _table(columns, rows, left={i for i, c in enumerate(columns) if c in text_cols})


def _csv_table(rows: Sequence[dict[str, str]], empty: str) -> str:
    if not rows:
        return f'<p class="note">{_e(empty)}</p>'
    columns = list(rows[0])
    return _table(columns, [[fmt_cell(c, r.get(c)) for c in columns] for r in rows])


def write_run_report(run_dir: PathLike) -> Path:
    """Write ``<run_dir>/report.html`` from the run's files and return its path.

    Sections: key numbers, final widths, pictures present (graph before/after, widths,
    triggers, training), growth events (the first :data:`MAX_EVENT_ROWS`), per-epoch metrics and
    the config.  Raises :class:`FileNotFoundError` if ``summary.json`` is missing.
    """
    run_dir = Path(run_dir)
    summary = load_run_summary(run_dir)
    config = read_json(run_dir / "config.json")
    events = read_history(run_dir)
    metrics = read_csv(run_dir / "metrics.csv")
    title = run_title(summary)
    kind = summary.get("kind") or (config or {}).get("kind") or "–"
    body = [
        f"<h1>{_e(summary.get('name') or 'Run')}</h1>",
        f'<p class="sub">strategy <b>{_e(summary.get("strategy", "–"))}</b> · {_e(kind)} · seed '
        f"{_e(summary.get('seed', '–'))}</p>",
        "<h2>Key numbers</h2>",
        _key_numbers(summary, config),
        "<h2>Widths</h2>",
        _widths_table(summary, events),
    ]
    pictures = _Pictures()
    figures = [f for f in (pictures.figure(run_dir / stem, caption) for stem, caption in RUN_PICTURES) if f]
    if figures:
        body += ["<h2>Pictures</h2>", *figures]
    body += [f"<h2>Growth events ({len(events):,})</h2>", _events_table(events)]
    body += ["<h2>Metrics per epoch</h2>", _csv_table(metrics, "metrics.csv is empty or absent.")]
    body.append("<h2>Config</h2>")
    if config is None:
        body.append('<p class="note">config.json is absent.</p>')
    else:
        body.append(f"<pre>{_e(json.dumps(config, indent=2, sort_keys=False, default=str))}</pre>")
    return _write(run_dir / "report.html", _page(f"{title} — archgrow run", body))


# ----------------------------------------------------------------------------------------------
# Sweep report
# ----------------------------------------------------------------------------------------------


def _mean_pm_std(key: str, mean: Any, std: Any) -> str:
    text = fmt_cell(key, mean)
    return text if _missing(std) or (to_float(std) == 0 and "acc" not in key) else f"{text} ± {fmt_cell(key, std)}"


def _aggregate_value(key: str, value: Any, std: Any = None) -> str:
    """One cell of the per-strategy table: a number, ``mean ± std``, or a mapping of those."""
    if isinstance(value, dict) and "mean" in value:
        return _mean_pm_std(key, value.get("mean"), value.get("std"))
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return _mean_pm_std(key, value[0], value[1])
    if isinstance(value, dict):  # e.g. final_widths: group -> [mean, std]
        return ", ".join(f"{name} {_aggregate_value(key, v)}" for name, v in value.items()) or "–"
    return _mean_pm_std(key, value, std)


def _aggregate_table(table: Sequence[dict[str, Any]]) -> str:
    """The sweep's per-strategy table, whatever its exact columns.

    A column ``X`` with a companion ``X_std`` (or ``X_mean`` with ``X_std``), a ``{"mean", "std"}``
    mapping or a ``[mean, std]`` pair is shown as one ``mean ± std`` column named ``X`` (a zero
    std is left out, except for accuracies); mappings such as ``final_widths`` (group ->
    ``[mean, std]``) are shown as ``group mean ± std, ...``.
    """
    if not table:
        return '<p class="note">summary.json has no "table".</p>'
    keys = list(dict.fromkeys(k for row in table for k in row))
    columns: list[tuple[str, str, str | None]] = []  # (name, mean key, std key)
    for k in keys:
        if k.endswith("_std") and (k[:-4] in keys or k[:-4] + "_mean" in keys):
            continue
        base = k[:-5] if k.endswith("_mean") else k
        columns.append((base, k, base + "_std" if base + "_std" in keys else None))
    rows = [
        [_aggregate_value(name, row.get(k), row.get(std) if std else None) for name, k, std in columns] for row in table
    ]
    lefts = {i for i, (name, _k, _s) in enumerate(columns) if name in {"strategy", "name", "kind"} or "widths" in name}
    return _table([name.replace("_", " ") for name, _k, _s in columns], rows, left=lefts)


def find_run_dirs(sweep_dir: PathLike, runs: Sequence[dict[str, Any]]) -> list[Path | None]:
    """Each run summary's directory: found by its own ``summary.json`` under ``<sweep>/*/seed*/``,
    else ``<sweep>/<strategy>/seed<k>`` if that exists, else ``None``."""
    sweep = Path(sweep_dir)
    found: dict[tuple[str, str], Path] = {}
    for path in sorted(sweep.glob("*/seed*/summary.json")):
        try:
            s = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found.setdefault((str(s.get("strategy")), str(s.get("seed"))), path.parent)
    out: list[Path | None] = []
    for run in runs:
        key = (str(run.get("strategy")), str(run.get("seed")))
        guess = sweep / key[0] / f"seed{key[1]}"
        out.append(found.get(key) or (guess if (guess / "summary.json").is_file() else None))
    return out


def _href(sweep_dir: Path, target: Path) -> str:
    rel = os.path.relpath(target, sweep_dir)
    return _e(quote(Path(rel).as_posix()))


def write_sweep_report(sweep_dir: PathLike) -> Path:
    """Write ``<sweep_dir>/report.html`` from the sweep's files and return its path.

    Sections: the aggregated per-strategy table, the accuracy-vs-parameters picture, one row per
    run linking to the run's ``report.html`` (relative links, so the tree can be moved), each
    strategy's width plot (its first seed), and the resolved experiment.
    """
    sweep = Path(sweep_dir)
    summary = load_sweep_summary(sweep)
    runs = summary["runs"]
    name = summary.get("name") or "Sweep"
    body = [
        f"<h1>{_e(name)}</h1>",
        f'<p class="sub">{len(runs)} runs · {len(runs_by_strategy(runs))} strategies</p>',
        "<h2>Results per strategy (mean ± std over seeds)</h2>",
        _aggregate_table(summary.get("table") or []),
    ]
    pictures = _Pictures()
    acc = pictures.figure(sweep / "accuracy_vs_params", "Final test accuracy vs parameter count")
    if acc:
        body += ["<h2>Accuracy vs parameters</h2>", acc]

    dirs = find_run_dirs(sweep, runs)
    rows = []
    for run, d in zip(runs, dirs, strict=True):
        if d is None:
            link = '<span class="muted">run directory not found</span>'
        else:
            report = d / "report.html"
            link = f'<a href="{_href(sweep, report)}">{_e(os.path.relpath(d, sweep))}</a>'
            if not report.is_file():
                link += ' <span class="muted">(report not written yet)</span>'
        rows.append(
            [
                _e(run.get("strategy", "–")),
                _e(run.get("kind", "–")),
                _e(fmt_int(run.get("seed"))),
                _e(fmt_acc(run.get("test_acc"))),
                _e(fmt_acc(run.get("train_acc"))),
                _e(f"{fmt_int(run.get('initial_params'))} → {fmt_int(run.get('params'))}"),
                _e(fmt_int(run.get("events"))),
                _e(fmt_seconds(run.get("wall_seconds"))),
                link,
            ]
        )
    body += [
        "<h2>Runs</h2>",
        _table(
            ["strategy", "kind", "seed", "test acc", "train acc", "params", "events", "wall time", "report"],
            rows,
            left=2,
            raw=True,
        ),
    ]

    width_figures = []
    index = {id(r): d for r, d in zip(runs, dirs, strict=True)}
    for strategy, members in runs_by_strategy(runs).items():
        d = index.get(id(members[0]))
        if d is None:
            continue
        accs = mean_std([to_float(r.get("test_acc")) for r in members])
        caption = f"{strategy} (seed {members[0].get('seed')}); mean test accuracy over seeds {fmt_acc(accs[0])}"
        fig = pictures.figure(d / "widths", caption)
        if fig:
            width_figures.append(fig)
    if width_figures:
        body += ["<h2>Widths over training (first seed of each strategy)</h2>", *width_figures]

    experiment = read_json(sweep / "experiment.json")
    if experiment is not None:
        body += [
            "<h2>Experiment</h2>",
            f"<details><summary>experiment.json</summary><pre>"
            f"{_e(json.dumps(experiment, indent=2, default=str))}</pre></details>",
        ]
    return _write(sweep / "report.html", _page(f"{name} — archgrow sweep", body))
