"""Command line: ``archgrow run`` (experiments), ``archgrow groups`` (width groups of a model),
``archgrow validate`` (spec files) and ``archgrow schema`` (the spec's JSON Schema)."""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from archgrow import __version__, models
from archgrow.binder import bind
from archgrow.errors import ArchgrowError, SpecError
from archgrow.graph import trace
from archgrow.grower import wrap
from archgrow.runner import load_experiment, markdown_table, processes, run_experiment
from archgrow.runner.sweep import output_dir
from archgrow.spec import json_schema, load_spec
from archgrow.viz import plot_run, plot_sweep, render_width_graph, write_run_report, write_sweep_report

DEFAULT_MODELS = ("wrn28", "resnet18")
TORCHVISION_SIZES = {"inception_v3": 299, "maxvit_t": 224}


def build_model(name: str, width_mult: float) -> tuple[nn.Module, torch.Tensor]:
    """A built-in model (mlp, vgg11, wrn28) or any torchvision classification model, with an input."""
    torch.manual_seed(0)
    builtin = models.MODELS.get(name)
    if builtin is not None:
        return models.build(name, width_mult=width_mult), torch.randn(builtin.example_input)
    size = 224 if name.startswith("vit_") else TORCHVISION_SIZES.get(name, 64)
    return models.torchvision_model(name), torch.randn(1, 3, size, size)


def cmd_groups(args: argparse.Namespace) -> int:
    for name in args.models or DEFAULT_MODELS:
        model, x = build_model(name, args.width_mult)
        start = time.perf_counter()
        graph = trace(model, x)
        seconds = time.perf_counter() - start
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"\n== {name} ({type(model).__name__}, {n_params:,} parameters, input {tuple(x.shape)}, "
            f"traced in {seconds:.2f} s)"
        )
        print(graph.summary(max_members=args.members))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """One line per problem; with --model, also the problems that need the model (wrap-time)."""
    failed = 0
    built = {name: build_model(name, args.width_mult) for name in args.model}
    for path in args.files:
        problems: list[str] = []
        try:
            spec = load_spec(path)
        except SpecError as exc:
            problems = exc.problems
        else:
            for name, (model, x) in built.items():
                try:
                    wrap(copy.deepcopy(model), spec, x)
                except SpecError as exc:
                    problems += [f"{p} (model {name})" for p in exc.problems]
        if problems:
            failed += 1
            for line in problems:
                print(line, file=sys.stderr)
            continue
        print(f"{path}: ok" + (f" (bound to {', '.join(args.model)})" if args.model else ""))
    return 1 if failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    """Train every strategy and baseline of an experiment file; print the table and the report's path."""
    exp = load_experiment(args.experiment)
    changes = {}
    if args.epochs is not None:
        changes["train.epochs"] = args.epochs
    if args.device is not None:
        changes["device"] = args.device
    if args.strategy or args.seeds or changes:
        exp = exp.restricted(strategies=args.strategy, seeds=args.seeds, **changes)
    runs = exp.runs()
    out = output_dir(exp, args.out)
    launching = (args.nproc > 1 or (args.nnodes not in (None, "1"))) and not processes.in_torchrun_worker()
    if launching and not args.dry_run:
        options = {dest: getattr(args, dest) for _, dest in processes.LAUNCH_OPTIONS}
        return processes.launch(_worker_args(args), args.nproc, options)
    if args.dry_run:
        print(f"{exp.source}: ok; {len(runs)} runs into {out}")
        for name, kind, seed in runs:
            print(f"  {name} ({kind}) seed {seed}")
        return 0
    procs = processes.join(exp.device) if processes.in_torchrun_worker() else None
    try:
        result = run_experiment(exp, output=out, progress=not args.quiet, pictures=not args.no_pictures, processes=procs)
    finally:
        processes.leave()
    if procs is not None and not procs.main:
        return 0  # rank 0 prints the table and writes the files
    print(markdown_table(result.table), end="")
    where = result.report if result.report.exists() else result.directory
    print(f"report: {where}")
    return 0


def _worker_args(args: argparse.Namespace) -> list[str]:
    """``archgrow run`` as every torchrun worker runs it: the same file and options, no launch flags."""
    argv = ["run", args.experiment]
    if args.out:
        argv += ["--out", args.out]
    for name in args.strategy or []:
        argv += ["--strategy", name]
    if args.seeds:
        argv += ["--seeds", *map(str, args.seeds)]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    if args.device:
        argv += ["--device", args.device]
    argv += [flag for flag, on in (("--quiet", args.quiet), ("--no-pictures", args.no_pictures)) if on]
    return argv


def cmd_visualize(args: argparse.Namespace) -> int:
    """Redraw a run's or a sweep's pictures and report from its files, or draw a model's width-group graph."""
    if args.model:
        model, x = build_model(args.model, args.width_mult)
        graph = trace(model, x)
        growing = None
        if args.spec:
            growing = [b.name for b in bind(load_spec(args.spec), graph) if not b.trigger.never_fires]
        stem = Path(args.out or f"{args.model}-groups")
        for path in render_width_graph(graph, stem, growing=growing, engine=args.engine, title=args.title):
            print(path)
        return 0
    if not args.dirs:
        raise ArchgrowError("give run or sweep directories, or --model NAME to draw a model's width-group graph")
    for d in map(Path, args.dirs):
        if (d / "runs.csv").is_file():  # a sweep: its runs, then the sweep itself
            for summary in sorted(d.glob("*/seed*/summary.json")):
                plot_run(summary.parent)
                write_run_report(summary.parent)
            plot_sweep(d)
            print(write_sweep_report(d))
        elif (d / "summary.json").is_file():
            plot_run(d)
            print(write_run_report(d))
        else:
            raise ArchgrowError(f"{d}: neither a run directory (summary.json) nor a sweep directory (runs.csv)")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="archgrow", description="Grow any PyTorch model while it trains.")
    parser.add_argument("--version", action="version", version=f"archgrow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("groups", help="trace models and print their width groups")
    p.add_argument("models", nargs="*", help=f"model names (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--width-mult", type=float, default=0.25, help="width multiplier of built-in models")
    p.add_argument("--members", type=int, default=4, help="members listed per group")
    p.set_defaults(func=cmd_groups)
    p = sub.add_parser("validate", help="check growth spec files (exit 1 if any is invalid)")
    p.add_argument("files", nargs="+", help="YAML or JSON spec files")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        help="also bind each spec to this model (built-in or torchvision name; repeatable)",
    )
    p.add_argument("--width-mult", type=float, default=0.25, help="width multiplier of built-in models")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("run", help="train the strategies and static baselines of an experiment file")
    p.add_argument("experiment", help="experiment YAML file (see experiments/)")
    p.add_argument("--out", help="output folder (default: the file's output, else runs/<name>)")
    p.add_argument("--strategy", action="append", help="run only this strategy or baseline (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", help="run only these seeds")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--device", help="override device (cpu, cuda, auto)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--no-pictures", action="store_true", help="write the data files only")
    p.add_argument("--dry-run", action="store_true", help="validate and list the runs, train nothing")
    p.add_argument(
        "--nproc",
        type=_positive,
        default=1,
        help="processes per node, launched through torch.distributed.run (torchrun); DDP with gloo on the CPU, "
        "nccl on CUDA; train.batch_size is the global batch",
    )
    for flag, dest in processes.LAUNCH_OPTIONS:
        p.add_argument(flag, dest=dest, help=f"passed to torchrun's {flag} (multi-node runs)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("visualize", help="redraw run/sweep pictures and reports, or draw a model's width groups")
    p.add_argument("dirs", nargs="*", help="run or sweep directories written by `archgrow run`")
    p.add_argument("--model", help="draw this model's width-group graph instead (built-in or torchvision name)")
    p.add_argument("--spec", help="with --model: mark the groups this spec does not grow as frozen")
    p.add_argument("--width-mult", type=float, default=0.25, help="width multiplier of built-in models")
    p.add_argument("--out", help="with --model: output path without suffix (default <model>-groups)")
    p.add_argument("--engine", choices=["auto", "dot", "python"], default="auto", help="graph renderer")
    p.add_argument("--title", help="with --model: picture title")
    p.set_defaults(func=cmd_visualize)
    p = sub.add_parser("schema", help="print the JSON Schema of growth spec files")
    p.set_defaults(func=cmd_schema)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ArchgrowError as exc:
        print(f"archgrow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
