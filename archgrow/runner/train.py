"""One run: train one model with one growth spec (or as a static baseline) for one seed.

Everything a run produces goes to its directory as it happens (growth events, trigger
evaluations, per-epoch metrics), in the plain formats of ``docs/run-directory.md``, so a run that
is stopped half-way still leaves readable files and the pictures can be redrawn from them.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archgrow.data import DataSplit
from archgrow.errors import ArchgrowError
from archgrow.graph.widthgraph import trace
from archgrow.grower import GrowingModel, wrap
from archgrow.runner.build import base_init, build_model, scale_groups
from archgrow.runner.experiment import Experiment
from archgrow.runner.progress import Progress
from archgrow.spec import Spec, parse_spec

SCHEDULES = ("linear_schedule", "batched_schedule")


@dataclass(frozen=True)
class RunPlan:
    """What one run trains: a strategy (growing) or a baseline (static), for one seed."""

    strategy: str
    kind: str  # "growing" or "static"
    seed: int
    directory: Path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArchgrowError(f"device: {name!r} was asked for but CUDA is not available here; use cpu or auto")
    return device


def fit_schedules(spec: Spec, total_steps: int) -> Spec:
    """Set preset schedules' ``total_steps`` to the run's length (a schedule made for another length
    would stop growing early or never finish); other triggers are left alone."""
    data = spec.model_dump(mode="json", exclude_unset=True)
    changed = False
    for part in [data.get("defaults") or {}, *data.get("rules", [])]:
        trigger = part.get("trigger")
        if isinstance(trigger, dict) and trigger.get("kind") in SCHEDULES:
            trigger["total_steps"] = total_steps
            changed = True
    return parse_spec(data, source=spec.source) if changed else spec


def run_one(
    exp: Experiment,
    plan: RunPlan,
    data: DataSplit,
    *,
    baseline_groups: list[str],
    progress: bool = True,
    pictures: bool = True,
    label: str = "",
) -> dict[str, Any]:
    """Train, write the run directory, return the run's summary (also in ``summary.json``)."""
    started = time.perf_counter()
    out = plan.directory
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(exp.device)
    dtype = getattr(torch, exp.dtype)
    cfg = exp.train
    x_train, y_train = data.x_train.to(device, dtype), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device, dtype), data.y_test.to(device)
    n_train = x_train.shape[0]
    steps_per_epoch = -(-n_train // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs

    model = build_model(exp.model, data, plan.seed).to(device, dtype)
    example = x_train[:1]
    grower: GrowingModel | None = None
    if plan.kind == "growing":
        spec = fit_schedules(exp.spec(plan.strategy), total_steps).model_copy(update={"seed": plan.seed})
        grower = wrap(model, spec, example)
        if grower.wants_prefill:  # phi(f_0) on a full buffer, from a seeded draw of training inputs
            prefill_order = torch.randperm(n_train, generator=torch.Generator().manual_seed(plan.seed + 10_000))
            grower.prefill(
                x_train[prefill_order[i : i + cfg.batch_size].to(device)] for i in range(0, n_train, cfg.batch_size)
            )
        graph = grower.graph
        groups = [n for n, b in grower.growing.items() if not b.trigger.never_fires]
        spec_dump = spec.model_dump(mode="json")
    else:
        graph = trace(model, example)
        scale_groups(graph, exp.baselines[plan.strategy], baseline_groups, plan.seed, init=base_init(exp.model))
        groups = list(baseline_groups)
        spec_dump = {"version": 1, "seed": plan.seed, "rules": [{"match": "*", "trigger": {"kind": "static"}}]}
    net: nn.Module = grower if grower is not None else model
    initial_widths = {g: graph.group(g).width for g in groups}
    initial_params = _params(model)
    _write_json(
        out / "config.json",
        {
            "name": exp.title,
            "strategy": plan.strategy,
            "kind": plan.kind,
            "seed": plan.seed,
            "model": exp.model.model_dump(mode="json"),
            "data": exp.data.model_dump(mode="json"),
            "train": cfg.model_dump(mode="json"),
            "device": str(device),
            "dtype": exp.dtype,
            "spec": spec_dump,
            "baseline_factor": exp.baselines.get(plan.strategy),
            "data_name": data.name,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    )
    if pictures:
        _picture(lambda: _render_graph(graph, out / "graph_before", None, groups, f"{plan.strategy}: start"))

    optimizer = _optimizer(cfg, net)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps) if cfg.scheduler == "cosine" else None
    generator = torch.Generator().manual_seed(plan.seed)
    width_columns = [f"width:{g}" for g in groups]
    metrics_file = (out / "metrics.csv").open("w", newline="")
    metrics = csv.writer(metrics_file)
    metrics.writerow(["epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc", "params", "seconds", *width_columns])
    history = (out / "history.jsonl").open("w")
    triggers_file = (out / "triggers.csv").open("w", newline="")
    triggers = csv.writer(triggers_file)
    triggers.writerow(["step", "group", "score", "threshold", "add"])
    bar = Progress(label or f"{plan.strategy} seed {plan.seed}", total_steps, enabled=progress)

    def record_epoch(epoch: int, step: int, train_loss: float | None) -> dict[str, float]:
        test_loss, test_acc = _evaluate(net, x_test, y_test, cfg.eval_batch_size)
        if cfg.eval_train or train_loss is None:
            loss_all, train_acc = _evaluate(net, x_train, y_train, cfg.eval_batch_size)
            train_loss = train_loss if train_loss is not None else loss_all
        else:
            train_acc = float("nan")
        row = {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}
        widths = [graph.group(g).width for g in groups]
        metrics.writerow(
            [epoch, step, *(_num(v) for v in row.values()), _params(model), f"{time.perf_counter() - started:.3f}", *widths]
        )
        metrics_file.flush()
        triggers_file.flush()
        return row

    train_seconds = 0.0
    step = 0
    try:
        last = record_epoch(0, 0, None)
        for epoch in range(1, cfg.epochs + 1):
            net.train()
            order = torch.randperm(n_train, generator=generator).to(device)
            loss_sum = torch.zeros((), dtype=dtype, device=device)  # summed on device: no sync per step
            batches = 0
            t0 = time.perf_counter()
            for i in range(0, n_train, cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                xb, yb = x_train[idx], y_train[idx]
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(net(xb), yb)
                loss.backward()
                optimizer.step()
                step += 1
                if grower is not None:
                    events = grower.grow_step(optimizer, loss_fn=_loss_fn(grower, xb, yb))
                    for e in grower.evaluations:
                        triggers.writerow([e.step, e.group, _num(e.score), _num(e.threshold), e.add])
                    if events:
                        params = _params(model)
                        for event in events:
                            history.write(json.dumps({**event.to_dict(), "epoch": epoch, "params": params}) + "\n")
                        history.flush()
                if scheduler is not None:
                    scheduler.step()
                loss_sum += loss.detach()
                batches += 1
                if bar.live:  # formatting (and loss.item()'s sync) only where the bar is drawn
                    bar.update(step, loss=f"{loss.item():.3f}", test_acc=f"{last['test_acc']:.2%}", width=_short(graph, groups))
            train_seconds += time.perf_counter() - t0
            last = record_epoch(epoch, step, loss_sum.item() / batches)
            bar.update(step, force=True, test_acc=f"{last['test_acc']:.2%}", width=_short(graph, groups))
            bar.epoch_line(
                f"epoch {epoch}/{cfg.epochs}: loss {last['train_loss']:.4f}, test acc {last['test_acc']:.2%}, "
                f"params {_params(model):,}, widths {_short(graph, groups)}"
            )
    finally:
        bar.close()
        metrics_file.close()
        history.close()
        triggers_file.close()

    timings = dict(grower.timings) if grower is not None else {"measure": 0.0, "trigger": 0.0, "initializer": 0.0, "grow": 0.0}
    summary = {
        "name": exp.title,
        "strategy": plan.strategy,
        "kind": plan.kind,
        "seed": plan.seed,
        "epochs": cfg.epochs,
        "steps": step,
        "initial_widths": initial_widths,
        "final_widths": {g: graph.group(g).width for g in groups},
        "initial_params": initial_params,
        "params": _params(model),
        "train_acc": None if math.isnan(last["train_acc"]) else last["train_acc"],  # null: eval_train off
        "test_acc": last["test_acc"],
        "test_loss": last["test_loss"],
        "train_seconds": train_seconds,
        "growth_seconds": timings,
        "events": len(grower.history) if grower is not None else 0,
        "device": str(device),
        "dtype": exp.dtype,
    }
    if pictures:
        if plan.kind == "growing":
            _picture(lambda: _render_graph(graph, out / "graph_after", initial_widths, groups, f"{plan.strategy}: end"))
    summary["wall_seconds"] = time.perf_counter() - started
    _write_json(out / "summary.json", summary)
    if pictures:
        _picture(lambda: _draw_run(out))
    return summary


# --------------------------------------------------------------------------- helpers
def _optimizer(cfg: Any, net: nn.Module) -> torch.optim.Optimizer:
    params = list(net.parameters())
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _loss_fn(net: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: F.cross_entropy(net(xb), yb)


@torch.no_grad()
def _evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[float, float]:
    was_training = net.training
    net.eval()
    total_loss, correct = 0.0, 0
    try:
        for i in range(0, x.shape[0], batch):
            logits = net(x[i : i + batch])
            total_loss += F.cross_entropy(logits, y[i : i + batch], reduction="sum").item()
            correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    finally:
        net.train(was_training)
    n = max(1, x.shape[0])
    return total_loss / n, correct / n


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _num(v: float) -> str:
    return "nan" if v != v else f"{v:.6g}"


def _short(graph: Any, groups: list[str]) -> str:
    return ",".join(str(graph.group(g).width) for g in groups[:8]) + (",…" if len(groups) > 8 else "")


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _picture(draw: Callable[[], Any]) -> None:
    """Pictures are a convenience: without matplotlib the run still writes its data files."""
    try:
        draw()
    except ImportError as exc:
        warnings.warn(f"pictures skipped: {exc}", stacklevel=2)


def _render_graph(graph: Any, stem: Path, before: dict[str, int] | None, groups: list[str], title: str) -> None:
    from archgrow.viz.graph import render_width_graph

    render_width_graph(graph, stem, before=before, growing=groups, title=title)


def _draw_run(run_dir: Path) -> None:
    from archgrow.viz.plots import plot_run
    from archgrow.viz.report import write_run_report

    plot_run(run_dir)
    write_run_report(run_dir)
