"""Command line: ``archgrow groups`` (width groups of a model), ``archgrow validate`` (spec files)
and ``archgrow schema`` (the spec's JSON Schema)."""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Sequence

import torch
from torch import nn

from archgrow import __version__, models
from archgrow.errors import ArchgrowError, SpecError
from archgrow.graph import trace
from archgrow.spec import json_schema, load_spec

DEFAULT_MODELS = ("wrn28", "resnet18")
BUILTIN_INPUTS = {"mlp": (1, 64), "vgg11": (1, 3, 32, 32), "wrn28": (1, 3, 32, 32)}
TORCHVISION_SIZES = {"inception_v3": 299, "maxvit_t": 224}


def build_model(name: str, width_mult: float) -> tuple[nn.Module, torch.Tensor]:
    """A built-in model (mlp, vgg11, wrn28) or any torchvision classification model, with an input."""
    torch.manual_seed(0)
    if name in models.BUILDERS:
        return models.build(name, width_mult=width_mult), torch.randn(BUILTIN_INPUTS[name])
    try:
        import torchvision
    except ImportError:
        raise ArchgrowError(
            f"'{name}' is not a built-in model ({', '.join(models.BUILDERS)}) and torchvision is not "
            "installed: pip install 'archgrow[vision]'"
        ) from None
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise ArchgrowError(
            f"unknown model '{name}': use a built-in model ({', '.join(models.BUILDERS)}) or a "
            f"torchvision classification model ({', '.join(names[:6])}, ...)"
        )
    size = 224 if name.startswith("vit_") else TORCHVISION_SIZES.get(name, 64)
    return torchvision.models.get_model(name, weights=None), torch.randn(1, 3, size, size)


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
    from archgrow.grower import wrap

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


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


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
