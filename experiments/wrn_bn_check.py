"""Why WRN-28 scores near chance in eval mode after a short budget: batch-norm running statistics.

Trains the Medium static network of ``wrn28_fashion.yaml`` (WRN-28-1: same seed, images, batch
size, optimizer and the paper's Xavier init; ``--lr``, ``--limit`` and ``--epochs`` override the
experiment's) and tests the first 1,000 test images twice: in eval mode (batch norm uses its
running statistics, as every reported accuracy does) and with each test batch's own statistics.
It then compares, for every batch-norm layer, its running variance with the variance of what it
actually normalises in eval mode (the median and largest ratio over channels and layers): a
ratio far above 1 means the running averages still carry the large activations of the first
steps and squash the features in eval mode.  Last, it recomputes every running statistic as a
plain average over the training images at the final weights (momentum None, one pass in
training mode without gradients) and tests in eval mode again: if that recovers the
batch-statistics accuracy, the exponential averages' lag is the whole cause.

    python experiments/wrn_bn_check.py                                # the experiment's 24 steps
    python experiments/wrn_bn_check.py --lr 1e-3 --limit 2000         # 48 steps at lr 1e-3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from archgrow.graph.widthgraph import trace
from archgrow.runner import load_experiment
from archgrow.runner.build import base_init, build_model, load_data, scale_groups

ROOT = Path(__file__).resolve().parents[1]
TEST_IMAGES = 1000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the experiment's)")
    parser.add_argument("--limit", type=int, default=None, help="first N training images (default: the experiment's)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs over them (default: the experiment's)")
    return parser.parse_args()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Test accuracy in the model's current train/eval mode, one forward pass per batch."""
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(y), batch_size)])
    return (logits.argmax(1) == y).float().mean().item()


def variance_ratios(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per channel of every batch norm: running variance / variance of its eval-mode input on ``x``."""
    ratios: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen = args[0].transpose(0, 1).flatten(1).var(dim=1)
        ratios.append(module.running_var / seen.clamp_min(1e-12))

    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    handles = [m.register_forward_hook(hook) for m in norms]
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return torch.cat(ratios)


def recalibrate(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Running statistics as the plain average over ``x`` at the current weights."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    exp = load_experiment(ROOT / "experiments" / "wrn28_fashion.yaml")
    updates = {k: v for k, v in (("limit", args.limit),) if v is not None}
    data = load_data(exp.data.model_copy(update={**updates, "test_limit": TEST_IMAGES}))
    cfg = exp.train.model_copy(update={k: v for k, v in (("lr", args.lr), ("epochs", args.epochs)) if v is not None})
    seed = exp.seeds[0]
    model = build_model(exp.model, data, seed)
    graph = trace(model, data.x_train[:1])
    growable = [g.name for g in graph.groups if g.growable]
    scale_groups(graph, exp.baselines["medium-static"], growable, seed, init=base_init(exp.model))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    order = torch.Generator().manual_seed(seed)
    n, steps = len(data.y_train), 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=order)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            model.train()
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    print(f"lr {cfg.lr:g}, {n} training images, {cfg.epochs} epochs, {steps} steps, last loss {loss.item():.3f}")
    ratios = variance_ratios(model, data.x_test[: cfg.batch_size])
    print(
        f"running variance / variance of the eval-mode input, over {ratios.numel()} batch-norm channels: "
        f"median {ratios.median().item():.3g}, largest {ratios.max().item():.3g}"
    )
    # Eval mode first: the batch-statistics pass runs in train mode and so updates running stats.
    for label, train_mode in (("running statistics (eval mode)", False), ("batch statistics", True)):
        model.train(train_mode)
        print(f"test accuracy with {label}: {accuracy(model, data.x_test, data.y_test, cfg.batch_size):.1%}")
    recalibrate(model, data.x_train, cfg.batch_size)
    model.eval()
    print(f"test accuracy in eval mode after recomputing the statistics: {accuracy(model, data.x_test, data.y_test, cfg.batch_size):.1%}")
    print(f"wall time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
