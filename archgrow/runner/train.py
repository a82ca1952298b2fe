"""One run: train one model with one growth spec (or as a static baseline) for one seed.

Everything a run produces goes to its directory as it happens (growth events, trigger
evaluations, per-epoch metrics), in the plain formats of ``docs/run-directory.md``, so a run that
is stopped half-way still leaves readable files and the pictures can be redrawn from them.

Batches come from ``torch.utils.data.DataLoader``s over the split's datasets, so the data need not
fit in memory; shuffling draws from generators seeded by the run's seed, one permutation per epoch,
which gives the same batches as the earlier loop that sliced whole in-memory tensors.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from archgrow.data import DataSplit
from archgrow.data.datasets import indexable_by_batch
from archgrow.distributed import distribute
from archgrow.errors import ArchgrowError
from archgrow.graph.widthgraph import trace
from archgrow.grower import GrowingModel, wrap
from archgrow.runner.build import base_init, build_model, scale_groups
from archgrow.runner.experiment import Experiment
from archgrow.runner.processes import Processes
from archgrow.runner.progress import Progress
from archgrow.runner.sampling import SeededShuffle
from archgrow.spec import Spec, parse_spec

SCHEDULES = ("linear_schedule", "batched_schedule")

SamplerFactory = Callable[[Dataset[Any], int], Sampler[int]]
"""Makes the training sampler from the training set and the run's seed. The hook for a distributed
run: ``lambda data, seed: DistributedSampler(data, num_replicas=world_size, rank=rank, seed=seed)``
gives each process its shard (the recipe calls ``set_epoch`` on samplers that have it)."""


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


class RunLog:
    """Every file a run writes goes through here: ``config.json``, ``summary.json``, the pictures
    and the three streamed files (``metrics.csv``, ``history.jsonl``, ``triggers.csv``, flushed as
    they grow so a run stopped half-way still leaves readable data).

    With ``enabled=False`` nothing is written and the run is otherwise the same: what the processes
    of a distributed run other than rank 0 need.
    """

    def __init__(self, directory: Path, *, enabled: bool = True, pictures: bool = True):
        self.directory, self.enabled, self.pictures = directory, enabled, pictures
        self._streams: list[Any] = []
        if enabled:
            directory.mkdir(parents=True, exist_ok=True)

    def json(self, name: str, data: Any) -> None:
        if self.enabled:
            _write_json(self.directory / name, data)

    def picture(self, draw: Callable[[Path], Any]) -> None:
        """``draw(directory)``; skipped when pictures are off, and with a warning without matplotlib."""
        if self.enabled and self.pictures:
            _picture(lambda: draw(self.directory))

    def open(self, groups: list[str]) -> None:
        if not self.enabled:
            return
        self._metrics_file = (self.directory / "metrics.csv").open("w", newline="")
        self._metrics = csv.writer(self._metrics_file)
        widths = [f"width:{g}" for g in groups]
        self._metrics.writerow(["epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc", "params", "seconds", *widths])
        self._history = (self.directory / "history.jsonl").open("w")
        self._triggers_file = (self.directory / "triggers.csv").open("w", newline="")
        self._triggers = csv.writer(self._triggers_file)
        self._triggers.writerow(["step", "group", "score", "threshold", "add"])
        self._streams = [self._metrics_file, self._history, self._triggers_file]

    def epoch(self, epoch: int, step: int, row: dict[str, float], params: int, seconds: float, widths: list[int]) -> None:
        if not self._streams:
            return
        self._metrics.writerow([epoch, step, *(_num(v) for v in row.values()), params, f"{seconds:.3f}", *widths])
        self._metrics_file.flush()
        self._triggers_file.flush()

    def evaluations(self, evaluations: list[Any]) -> None:
        if not self._streams:
            return
        for e in evaluations:
            self._triggers.writerow([e.step, e.group, _num(e.score), _num(e.threshold), e.add])

    def events(self, events: list[Any], epoch: int, params: int) -> None:
        if not self._streams:
            return
        for event in events:
            self._history.write(json.dumps({**event.to_dict(), "epoch": epoch, "params": params}) + "\n")
        self._history.flush()

    def close(self) -> None:
        for f in self._streams:
            f.close()
        self._streams = []


class TrainRecipe:
    """One run as a recipe (torchtune's shape): :meth:`setup`, :meth:`train`, :meth:`evaluate`,
    :meth:`report`; :meth:`run` does all four.

    Setup builds the seeded model on the experiment's device and dtype, and either wraps it with
    the strategy's spec (schedules fitted to the run's length, the buffer prefilled from a seeded
    draw of the training inputs) or widens it to the static baseline's widths.

    ``sampler`` replaces the seeded shuffle of the training set (see :data:`SamplerFactory`);
    the buffer's prefill and the evaluations still read the whole sets, in the same order on
    every process. ``writes_files=False`` makes the run write nothing (see :class:`RunLog`).
    ``processes`` (a torchrun worker's, :mod:`archgrow.runner.processes`) trains this rank's
    share of every global batch under DDP (``archgrow.distribute`` for growing runs), prefills
    this rank's share of the buffer, and writes files and progress on rank 0 only.
    """

    def __init__(
        self,
        exp: Experiment,
        plan: RunPlan,
        data: DataSplit,
        *,
        baseline_groups: list[str],
        progress: bool = True,
        pictures: bool = True,
        label: str = "",
        sampler: SamplerFactory | None = None,
        writes_files: bool = True,
        processes: Processes | None = None,
    ):
        self.exp, self.plan, self.data = exp, plan, data
        self.baseline_groups = baseline_groups
        self.progress, self.label = progress, label
        self.processes = processes
        if processes is not None:  # a torchrun worker: its share of every batch, DDP, files on rank 0
            sampler = sampler or processes.sampler
            writes_files = writes_files and processes.main
            self.progress = progress and processes.main
        self.sampler_factory = sampler
        self.started = time.perf_counter()
        self.log = RunLog(plan.directory, enabled=writes_files, pictures=pictures)
        self.grower: GrowingModel | None = None
        self.step = 0
        self.train_seconds = 0.0

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        exp, plan, data, cfg = self.exp, self.plan, self.data, self.exp.train
        self.device = device = resolve_device(exp.device)
        self.dtype = dtype = getattr(torch, exp.dtype)
        self.pin_memory = device.type == "cuda" if cfg.pin_memory == "auto" else cfg.pin_memory
        n_train = len(data.train)  # type: ignore[arg-type]
        factory = self.sampler_factory
        self.sampler = factory(data.train, plan.seed) if factory is not None else SeededShuffle(n_train, plan.seed)
        procs = self.processes
        batch = procs.local_batch(cfg.batch_size) if procs is not None else cfg.batch_size
        self.train_loader = self._loader(data.train, batch, self.sampler)
        self.test_loader = self._loader(data.test, cfg.eval_batch_size)
        self.train_eval_loader = self._loader(data.train, cfg.eval_batch_size)
        self.total_steps = len(self.train_loader) * cfg.epochs
        self.model = build_model(exp.model, data, plan.seed).to(device, dtype)
        example = data.example().to(device, dtype)
        if plan.kind == "growing":
            spec = fit_schedules(exp.spec(plan.strategy), self.total_steps).model_copy(update={"seed": plan.seed})
            self.grower = grower = wrap(self.model, spec, example)
            self.trainer: Any = distribute(grower, **procs.ddp_options()) if procs is not None else grower
            if grower.wants_prefill:  # phi(f_0) on a full buffer, from a seeded draw of training inputs
                order: Sampler[int] = SeededShuffle(n_train, plan.seed + 10_000)
                if procs is not None:
                    order = procs.strided(order)  # each rank its share of the same draw
                draw = self._loader(data.train, batch, order)
                grower.prefill(x for x, _ in self._batches(draw))
            self.graph = grower.graph
            self.groups = [n for n, b in grower.growing.items() if not b.trigger.never_fires]
            spec_dump = spec.model_dump(mode="json")
        else:
            self.graph = trace(self.model, example)
            factor = exp.baselines[plan.strategy]
            scale_groups(self.graph, factor, self.baseline_groups, plan.seed, init=base_init(exp.model))
            self.groups = list(self.baseline_groups)
            spec_dump = {"version": 1, "seed": plan.seed, "rules": [{"match": "*", "trigger": {"kind": "static"}}]}
            self.trainer = DistributedDataParallel(self.model, **procs.ddp_options()) if procs is not None else self.model
        self.net: nn.Module = self.trainer  # trains (through DDP in a torchrun worker)
        self.local_net: nn.Module = self.grower if self.grower is not None else self.model  # evaluates
        self.initial_widths = self.widths()
        self.initial_params = _params(self.model)
        self.log.json(
            "config.json",
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
        graph, groups = self.graph, self.groups
        self.log.picture(lambda out: _render_graph(graph, out / "graph_before", None, groups, f"{plan.strategy}: start"))
        self.optimizer = _optimizer(cfg, self.net)
        cosine = cfg.scheduler == "cosine"
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, self.total_steps) if cosine else None

    def widths(self) -> dict[str, int]:
        return {g: self.graph.group(g).width for g in self.groups}

    def _loader(self, dataset: Dataset[Any], batch_size: int, sampler: Sampler[int] | None = None) -> DataLoader[Any]:
        """Batches in ``sampler``'s order (in order without one). The loader's own generator only
        seeds worker processes; passing it keeps the global RNG untouched."""
        workers = self.exp.train.workers
        order: Sampler[Any] | None = sampler
        batch: int | None = batch_size
        if indexable_by_batch(dataset):  # one call per batch: the same values as per sample, several times faster
            order = BatchSampler(sampler if sampler is not None else SequentialSampler(dataset), batch_size, False)
            batch = None
        return DataLoader(
            dataset,
            batch_size=batch,
            sampler=order,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(self.plan.seed),
        )

    def _batches(self, loader: DataLoader[Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The loader's batches on the run's device, inputs in the run's dtype."""
        for x, y in loader:
            yield (
                x.to(self.device, self.dtype, non_blocking=self.pin_memory),
                y.to(self.device, non_blocking=self.pin_memory),
            )

    # ------------------------------------------------------------------ train / evaluate
    def evaluate(self, train_loss: float | None) -> dict[str, float]:
        """Test loss and accuracy (and train accuracy when asked), in eval mode."""
        cfg = self.exp.train
        if cfg.bn_statistics == "recalibrated":
            inputs = (x for x, _ in self._batches(self.train_eval_loader))
            context: Any = recalibrated_batch_norm(self.model, inputs)
        else:
            context = nullcontext()
        with context:
            test_loss, test_acc = _evaluate(self.local_net, self._batches(self.test_loader))
            if cfg.eval_train or train_loss is None:
                loss_all, train_acc = _evaluate(self.local_net, self._batches(self.train_eval_loader))
                train_loss = train_loss if train_loss is not None else loss_all
            else:
                train_acc = float("nan")
        return {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}

    def train(self) -> dict[str, float]:
        """Every epoch: the training steps, growth after each, then an evaluation; returns the last one."""
        cfg, plan, grower = self.exp.train, self.plan, self.grower
        log = self.log
        log.open(self.groups)
        bar = Progress(self.label or f"{plan.strategy} seed {plan.seed}", self.total_steps, enabled=self.progress)
        set_epoch = getattr(self.sampler, "set_epoch", None)

        def record(epoch: int, train_loss: float | None) -> dict[str, float]:
            row = self.evaluate(train_loss)
            widths = [self.graph.group(g).width for g in self.groups]
            log.epoch(epoch, self.step, row, _params(self.model), time.perf_counter() - self.started, widths)
            return row

        try:
            last = record(0, None)
            for epoch in range(1, cfg.epochs + 1):
                self.net.train()
                if set_epoch is not None:  # a DistributedSampler's shuffle depends on it
                    set_epoch(epoch)
                loss_sum = torch.zeros((), dtype=self.dtype, device=self.device)  # summed on device: no sync per step
                batches = 0
                t0 = time.perf_counter()
                for xb, yb in self._batches(self.train_loader):
                    self.optimizer.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(self.net(xb), yb)
                    loss.backward()
                    self.optimizer.step()
                    self.step += 1
                    if grower is not None:
                        events = self.trainer.grow_step(self.optimizer, loss_fn=_loss_fn(grower, xb, yb))
                        log.evaluations(grower.evaluations)
                        if events:
                            log.events(events, epoch, _params(self.model))
                    if self.scheduler is not None:
                        self.scheduler.step()
                    loss_sum += loss.detach()
                    batches += 1
                    if bar.live:  # formatting (and loss.item()'s sync) only where the bar is drawn
                        bar.update(self.step, loss=f"{loss.item():.3f}", test_acc=f"{last['test_acc']:.2%}", width=self._short())
                self.train_seconds += time.perf_counter() - t0
                total, count = loss_sum.item(), batches
                if self.processes is not None:  # the mean over every rank's batches
                    total, count = self.processes.sum(total), self.processes.sum(count)
                last = record(epoch, total / count)
                bar.update(self.step, force=True, test_acc=f"{last['test_acc']:.2%}", width=self._short())
                bar.epoch_line(
                    f"epoch {epoch}/{cfg.epochs}: loss {last['train_loss']:.4f}, test acc {last['test_acc']:.2%}, "
                    f"params {_params(self.model):,}, widths {self._short()}"
                )
        finally:
            bar.close()
            log.close()
        return last

    def _short(self) -> str:
        return _short(self.graph, self.groups)

    # ------------------------------------------------------------------ report
    def report(self, last: dict[str, float]) -> dict[str, Any]:
        """``summary.json`` and the pictures; returns the summary."""
        exp, plan, grower = self.exp, self.plan, self.grower
        timings = dict(grower.timings) if grower is not None else {"measure": 0.0, "trigger": 0.0, "initializer": 0.0, "grow": 0.0}
        summary = {
            "name": exp.title,
            "strategy": plan.strategy,
            "kind": plan.kind,
            "seed": plan.seed,
            "epochs": exp.train.epochs,
            "steps": self.step,
            "initial_widths": self.initial_widths,
            "final_widths": self.widths(),
            "initial_params": self.initial_params,
            "params": _params(self.model),
            "train_acc": None if math.isnan(last["train_acc"]) else last["train_acc"],  # null: eval_train off
            "test_acc": last["test_acc"],
            "test_loss": last["test_loss"],
            "train_seconds": self.train_seconds,
            "growth_seconds": timings,
            "events": len(grower.history) if grower is not None else 0,
            "device": str(self.device),
            "dtype": exp.dtype,
        }
        if plan.kind == "growing":
            graph, groups, initial = self.graph, self.groups, self.initial_widths
            self.log.picture(lambda out: _render_graph(graph, out / "graph_after", initial, groups, f"{plan.strategy}: end"))
        summary["wall_seconds"] = time.perf_counter() - self.started
        self.log.json("summary.json", summary)
        self.log.picture(_draw_run)
        return summary

    def run(self) -> dict[str, Any]:
        self.setup()
        return self.report(self.train())


@contextmanager
def recalibrated_batch_norm(model: nn.Module, batches: Iterable[torch.Tensor]) -> Iterator[None]:
    """Inside, every batch norm's running statistics are the plain average over the input
    ``batches`` at the current weights; on exit the running averages (and momentum, step count)
    are put back exactly.

    After a short budget the exponential running averages still carry the large activations of the
    first steps (measured on WRN-28: experiments/wrn_bn_check.py), so eval-mode accuracy says more
    about that lag than about the weights; this is the usual remedy, as an explicit option.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m, m.momentum, {k: v.clone() for k, v in m.named_buffers(recurse=False)}) for m in norms]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        model.train()
        try:
            cuda = sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)
            with torch.no_grad(), torch.random.fork_rng(devices=cuda):
                for x in batches:
                    model(x)
        finally:
            for m, flag in modes:
                m.training = flag
        yield
    finally:
        for m, momentum, buffers in saved:
            m.momentum = momentum
            for name, value in buffers.items():
                getattr(m, name).copy_(value)


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
def _evaluate(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    was_training = net.training
    net.eval()
    total_loss, correct, n = 0.0, 0, 0
    try:
        for x, y in batches:
            logits = net(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
            n += y.shape[0]
    finally:
        net.train(was_training)
    n = max(1, n)
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
