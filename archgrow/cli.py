"""Command line: ``archgrow groups`` prints the width groups of built-in or torchvision models.

Later commands (``validate``, ``schema``, ``run``) hang off the same parser.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch
from torch import nn

from archgrow import __version__, models
from archgrow.errors import ArchgrowError
from archgrow.graph import trace

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="archgrow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"archgrow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("groups", help="trace models and print their width groups")
    p.add_argument("models", nargs="*", help=f"model names (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--width-mult", type=float, default=0.25, help="width multiplier of built-in models")
    p.add_argument("--members", type=int, default=4, help="members listed per group")
    p.set_defaults(func=cmd_groups)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ArchgrowError as exc:
        print(f"archgrow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
