"""Plots and HTML reports drawn from run and sweep directories (docs/run-directory.md).

The directories are written here by hand, exactly as the contract describes them, so the viz code
is tested against the file format rather than against the runner that produces it.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from archgrow.viz import plots, report  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"
STEPS, EPOCHS = 12, 3

# strategy -> (kind, initial widths, events as (step, group, old, new)); the static baseline trains at its widths
STRATEGIES: dict[str, tuple[str, dict[str, int], list[tuple[int, str, int, int]]]] = {
    "north-select": ("growing", {"fc1": 8, "fc2": 4}, [(3, "fc1", 8, 10), (5, "fc2", 4, 6), (7, "fc1", 10, 13)]),
    "gradmax": ("growing", {"fc1": 8, f"blk{EVIL}": 4}, [(4, f"blk{EVIL}", 4, 9)]),
    "static-wide": ("static", {"fc1": 16, "fc2": 8}, []),
}
SEEDS = (0, 1)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def make_run(
    root: Path,
    strategy: str,
    seed: int,
    kind: str,
    widths: dict[str, int],
    events: list[tuple[int, str, int, int]],
    *,
    name: str = f"exp {EVIL}",
    test_acc: float = 0.9123,
) -> Path:
    """One run directory ``<root>/<strategy>/seed<k>`` with every text file of the contract."""
    d = root / strategy / f"seed{seed}"
    d.mkdir(parents=True)
    per_epoch = STEPS // EPOCHS
    params0 = 1_234_567
    final = dict(widths)
    history = []
    params = params0
    for step, group, old, new in events:
        final[group] = new
        params += 100 * (new - old)
        history.append(
            {
                "step": step,
                "group": group,
                "old_width": old,
                "new_width": new,
                "trigger": "north_select",
                "score": 3.5,
                "threshold": 1.25,
                "initializer": "gradmax",
                "trigger_seconds": 0.0123,
                "initializer_seconds": 0.0456,
                "epoch": (step - 1) // per_epoch + 1,
                "params": params,
            }
        )
    (d / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history), encoding="utf-8")
    config = {
        "name": name,
        "strategy": strategy,
        "kind": kind,
        "seed": seed,
        "model": {"name": "mlp"},
        "data": {"name": "digits"},
        "train": {"epochs": EPOCHS},
        "device": "cpu",
        "dtype": "float32",
        "spec": {"groups": {g: {"trigger": "north_select"} for g in widths}},
        "data_name": "digits",
    }
    (d / "config.json").write_text(json.dumps(config), encoding="utf-8")
    groups = list(widths)
    metric_rows = []
    for epoch in range(EPOCHS + 1):
        step = epoch * per_epoch
        w_now = {g: widths[g] for g in groups}
        for s, g, _old, new in events:
            if s <= step:
                w_now[g] = new
        p_now = params0 + sum(100 * (w_now[g] - widths[g]) for g in groups)
        metric_rows.append(
            [
                epoch,
                step,
                2.3 / (epoch + 1),
                0.1 + 0.25 * epoch,
                2.4 / (epoch + 1),
                0.1 + 0.24 * epoch,
                p_now,
                1.5 * epoch,
                *[w_now[g] for g in groups],
            ]
        )
    _write_csv(
        d / "metrics.csv",
        [
            "epoch",
            "step",
            "train_loss",
            "train_acc",
            "test_loss",
            "test_acc",
            "params",
            "seconds",
            *[f"width:{g}" for g in groups],
        ],
        metric_rows,
    )
    trigger_rows = []
    if kind == "growing":
        grows = {(s, g) for s, g, _o, _n in events}
        for step in range(1, STEPS + 1):
            for g in groups:
                add = 2 if (step, g) in grows else 0
                trigger_rows.append([step, g, 0.5 + 0.1 * step + (3 if add else 0), 1.25, add])
    _write_csv(d / "triggers.csv", ["step", "group", "score", "threshold", "add"], trigger_rows)
    summary = {
        "name": name,
        "strategy": strategy,
        "kind": kind,
        "seed": seed,
        "epochs": EPOCHS,
        "steps": STEPS,
        "initial_widths": widths,
        "final_widths": final,
        "initial_params": params0,
        "params": params,
        "train_acc": 0.95,
        "test_acc": test_acc + 0.01 * seed,
        "test_loss": 0.3141,
        "wall_seconds": 12.345,
        "train_seconds": 10.0,
        "growth_seconds": {"measure": 0.5, "trigger": 0.25, "initializer": 0.125, "grow": 0.0625},
        "events": len(events),
        "device": "cpu",
        "dtype": "float32",
    }
    (d / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return d


def make_sweep(root: Path) -> tuple[Path, list[Path]]:
    """A sweep directory with 2 growing strategies and 1 static baseline, 2 seeds each."""
    root.mkdir(parents=True, exist_ok=True)
    run_dirs, runs = [], []
    for i, (strategy, (kind, widths, events)) in enumerate(STRATEGIES.items()):
        for seed in SEEDS:
            d = make_run(root, strategy, seed, kind, widths, events, test_acc=0.80 + 0.05 * i)
            run_dirs.append(d)
            runs.append(json.loads((d / "summary.json").read_text()))
    table = []  # the runner's layout: X (the mean) and X_std; final_widths maps group -> [mean, std]
    for strategy in STRATEGIES:
        members = [r for r in runs if r["strategy"] == strategy]
        accs = [r["test_acc"] for r in members]
        table.append(
            {
                "strategy": strategy,
                "kind": members[0]["kind"],
                "seeds": len(members),
                "test_acc": sum(accs) / len(accs),
                "test_acc_std": 0.01,
                "params": members[0]["params"],
                "params_std": 0.0,
                "events": 1.5,
                "final_widths": {g: [w, 0.5] for g, w in members[0]["final_widths"].items()},
            }
        )
    (root / "summary.json").write_text(json.dumps({"name": "sweep", "runs": runs, "table": table}), encoding="utf-8")
    (root / "experiment.json").write_text(json.dumps({"name": "sweep", "seeds": list(SEEDS)}), encoding="utf-8")
    return root, run_dirs


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The sweep with every picture drawn and every report written (shared: tests only read it)."""
    root, run_dirs = make_sweep(tmp_path_factory.mktemp("sweep") / "out")
    for d in run_dirs:
        if d.name == "seed0":  # the pictures of the other seeds are never looked at: save the time
            plots.plot_run(d)
        report.write_run_report(d)
    plots.plot_sweep(root)
    report.write_sweep_report(root)
    return root, run_dirs


def _run(sweep: tuple[Path, list[Path]], strategy: str, seed: int = 0) -> Path:
    return sweep[0] / strategy / f"seed{seed}"


def _check_svg_png(paths: list[Path], stem: Path) -> None:
    assert paths == [stem.with_name(stem.name + ".svg"), stem.with_name(stem.name + ".png")]
    svg, png = paths
    root = ET.fromstring(svg.read_bytes())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert len(list(root.iter())) > 20  # something was drawn
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------


def test_width_series_follows_history_events(tmp_path: Path) -> None:
    kind, widths, events = STRATEGIES["north-select"]
    d = make_run(tmp_path, "north-select", 0, kind, widths, events)
    assert plots.width_series(d) == {
        "fc1": ([0, 3, 7, STEPS], [8, 10, 13, 13]),
        "fc2": ([0, 5, STEPS], [4, 6, 6]),
    }


def test_width_series_is_flat_for_static_runs(tmp_path: Path) -> None:
    kind, widths, events = STRATEGIES["static-wide"]
    d = make_run(tmp_path, "static-wide", 0, kind, widths, events)
    assert plots.width_series(d) == {"fc1": ([0, STEPS], [16, 16]), "fc2": ([0, STEPS], [8, 8])}


@pytest.mark.parametrize(
    "func,name", [(plots.plot_widths, "widths"), (plots.plot_triggers, "triggers"), (plots.plot_training, "training")]
)
def test_run_plots_write_svg_and_png(tmp_path: Path, func: Any, name: str) -> None:
    kind, widths, events = STRATEGIES["gradmax"]
    d = make_run(tmp_path, "gradmax", 0, kind, widths, events)
    stem = d / name if name != "training" else tmp_path / "elsewhere" / name  # default stem, and an explicit one
    _check_svg_png(func(d) if stem.parent == d else func(d, stem), stem)


def test_plot_run_draws_all_run_pictures(sweep: tuple[Path, list[Path]]) -> None:
    d = _run(sweep, "north-select")
    for name in ("widths", "triggers", "training"):
        assert (d / f"{name}.svg").is_file() and (d / f"{name}.png").is_file()


def test_triggers_without_evaluations_draw_nothing(sweep: tuple[Path, list[Path]]) -> None:
    d = _run(sweep, "static-wide")
    assert plots.plot_triggers(d) == []
    assert not (d / "triggers.svg").exists() and not (d / "triggers.png").exists()
    assert (d / "widths.svg").is_file()  # the static run still gets its flat width lines


def _legend_texts(svg: Path) -> list[str]:
    """The text of the legend of a matplotlib SVG (text is drawn as paths; each glyph run is preceded by a
    comment holding the text)."""
    root = ET.fromstring(svg.read_bytes(), parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))
    legends = [el for el in root.iter() if el.get("id") == "legend"]
    assert len(legends) == 1
    return [el.text.strip() for el in legends[0].iter() if el.tag is ET.Comment and el.text]


def test_accuracy_vs_params_names_every_strategy(sweep: tuple[Path, list[Path]]) -> None:
    root, _ = sweep
    _check_svg_png([root / "accuracy_vs_params.svg", root / "accuracy_vs_params.png"], root / "accuracy_vs_params")
    texts = " | ".join(_legend_texts(root / "accuracy_vs_params.svg"))
    for strategy, (kind, _w, _e) in STRATEGIES.items():
        assert f"{strategy} (static)" in texts if kind == "static" else strategy in texts
    assert "north-select (static)" not in texts


def test_plots_are_reproducible(sweep: tuple[Path, list[Path]]) -> None:
    d = _run(sweep, "north-select")
    before = (d / "widths.svg").read_bytes()
    plots.plot_widths(d)
    assert (d / "widths.svg").read_bytes() == before


def test_missing_matplotlib_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kind, widths, events = STRATEGIES["north-select"]
    d = make_run(tmp_path, "north-select", 0, kind, widths, events)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes `from matplotlib.figure import` fail
    with pytest.raises(ImportError, match=r"pip install 'archgrow\[viz\]'"):
        plots.plot_widths(d)
    assert report.write_run_report(d).is_file()  # the report itself never needs matplotlib


def test_mean_std() -> None:
    assert plots.mean_std([1.0, 3.0, float("nan")]) == (2.0, pytest.approx(2**0.5))
    assert plots.mean_std([5.0]) == (5.0, 0.0)


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------


def test_run_report_is_self_contained_and_escaped(sweep: tuple[Path, list[Path]]) -> None:
    d = _run(sweep, "gradmax")
    text = (d / "report.html").read_text(encoding="utf-8")
    assert sorted(p.name for p in d.iterdir() if p.suffix == ".html") == ["report.html"]
    assert "gradmax" in text
    # final widths table: initial -> final per group, the escaped group name first
    assert '<td class="l">blk&lt;script&gt;alert(1)&lt;/script&gt;</td><td>4</td><td>9</td><td>×2.25</td>' in text
    assert '<td class="l">fc1</td><td>8</td><td>8</td>' in text
    assert text.count("<svg") >= 3  # widths, triggers, training inlined
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", text, re.IGNORECASE)
    assert "<link" not in text and "<img" not in text
    assert "<script" not in text.lower()
    assert "exp &lt;script&gt;alert(1)&lt;/script&gt;" in text  # the experiment name, escaped
    # numbers: accuracy as %, params with separators, seconds with decimals
    assert "85.00 %" in text and "1,234,567 → 1,235,067 (+500, +0.04 %)" in text
    assert "12.3 s" in text and "0.94 s" in text and "12.3 ms" in text
    assert "\n  &quot;data_name&quot;: &quot;digits&quot;" in text  # pretty-printed config


def test_run_report_svg_ids_are_unique(sweep: tuple[Path, list[Path]]) -> None:
    text = (_run(sweep, "north-select") / "report.html").read_text(encoding="utf-8")
    ids = re.findall(r'\bid="([^"]*)"', text)
    assert len(ids) > 50 and len(ids) == len(set(ids))
    refs = set(re.findall(r'href="#([^"]*)"', text)) | set(re.findall(r"url\(#([^)]*)\)", text))
    assert refs and refs <= set(ids)


def test_run_report_is_idempotent(sweep: tuple[Path, list[Path]]) -> None:
    d = _run(sweep, "north-select", 1)
    before = (d / "report.html").read_bytes()
    assert report.write_run_report(d) == d / "report.html"
    assert (d / "report.html").read_bytes() == before


def test_run_report_skips_missing_pictures_and_falls_back_to_png(tmp_path: Path) -> None:
    kind, widths, events = STRATEGIES["north-select"]
    d = make_run(tmp_path, "north-select", 0, kind, widths, events)
    text = report.write_run_report(d).read_text(encoding="utf-8")
    assert "<svg" not in text and "<figure" not in text and "<h2>Pictures</h2>" not in text
    (d / "graph_before.png").write_bytes(PNG_SIGNATURE + b"fake")
    text = report.write_run_report(d).read_text(encoding="utf-8")
    assert text.count("<figure") == 1 and 'src="data:image/png;base64,' in text


def test_run_report_truncates_long_histories(tmp_path: Path) -> None:
    events = [(s, "fc1", 8 + s - 1, 8 + s) for s in range(1, 251)]
    d = make_run(tmp_path, "many", 0, "growing", {"fc1": 8}, events)
    text = report.write_run_report(d).read_text(encoding="utf-8")
    events_section = text.split("<h2>Growth events")[1].split("<h2>")[0]
    assert "first 200 of 250 events" in events_section
    assert events_section.count("<tr>") == 201  # header + 200 rows


def test_sweep_report_links_every_run(sweep: tuple[Path, list[Path]]) -> None:
    root, run_dirs = sweep
    text = (root / "report.html").read_text(encoding="utf-8")
    hrefs = re.findall(r'href="([^"#]+)"', text)
    assert sorted(hrefs) == sorted(d.relative_to(root).as_posix() + "/report.html" for d in run_dirs)
    assert all((root / h).is_file() for h in hrefs)
    assert "not written yet" not in text and "not found" not in text


def test_sweep_report_tables_and_pictures(sweep: tuple[Path, list[Path]]) -> None:
    root, _ = sweep
    text = (root / "report.html").read_text(encoding="utf-8")
    aggregated = text.split("<h2>Results per strategy")[1].split("<h2>")[0]
    assert "<th>test acc</th>" in aggregated and "80.50 % ± 1.00 %" in aggregated  # X and X_std as one column
    assert "<th>test acc std</th>" not in aggregated and "<td>1,235,267</td>" in aggregated  # a zero std left out
    assert "fc1 13 ± 0.5, fc2 6 ± 0.5" in aggregated and "<td>1.5</td>" in aggregated
    for strategy in STRATEGIES:
        assert f'<td class="l">{strategy}</td>' in aggregated
    widths = text.split("<h2>Widths over training")[1]
    assert widths.count("<svg") == len(STRATEGIES)  # one width plot per strategy (its first seed)
    assert text.count("<svg") == len(STRATEGIES) + 1  # + accuracy vs params
    assert "<script" not in text.lower()


def test_aggregate_table_accepts_other_mean_std_layouts() -> None:
    html_table = report._aggregate_table(
        [
            {"strategy": "a", "test_acc_mean": 0.5, "test_acc_std": 0.02, "params": {"mean": 1500.0, "std": 10.0}},
        ]
    )
    assert "<th>test acc</th>" in html_table and "50.00 % ± 2.00 %" in html_table
    assert "1,500 ± 10" in html_table and "std" not in html_table


def test_missing_summary_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("epoch\n0\n")
    with pytest.raises(FileNotFoundError, match=r"summary\.json.*not a run directory"):
        report.write_run_report(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"summary\.json.*not a run directory"):
        plots.plot_run(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"summary\.json.*not a sweep directory"):
        report.write_sweep_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_sweep_functions_reject_a_run_directory(sweep: tuple[Path, list[Path]]) -> None:
    with pytest.raises(ValueError, match="not a sweep directory"):
        plots.plot_accuracy_vs_params(_run(sweep, "gradmax"))
