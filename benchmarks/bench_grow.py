"""Cost of tracing and of one growth event, against one training step measured in the same run.

    .venv/bin/python benchmarks/bench_grow.py [--size 64] [--batch 32] [--k 8] [--reps 5] [MODEL ...]

For each model: median time of ``archgrow.trace`` (fx trace + shape recording + width analysis),
the number of groups (growable / frozen), the median time of one ``grow`` event (k units, Adam
state padded) over up to 5 growable groups spread through the network, and the median time of
one Adam training step (forward + backward + step) at the given batch size.  The last column is
grow / step: below 1 means a growth event costs less than a training step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import archgrow
from archgrow import models

DEFAULT = ("resnet18", "resnet50", "mobilenet_v2", "densenet121", "vgg11", "wrn28")


def build(name: str, size: int) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "wrn28":  # the paper's WRN-28 at its "Medium" width
        return models.wrn28(), (3, 32, 32)
    import torchvision

    return torchvision.models.get_model(name, weights=None), (3, size, size)


def median_time(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name: str, size: int, batch: int, k: int, reps: int) -> dict[str, object]:
    model, shape = build(name, size)
    x = torch.randn(batch, *shape)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def train_step() -> None:
        opt.zero_grad()
        out = model(x)
        (out[0] if isinstance(out, tuple) else out).logsumexp(1).mean().backward()
        opt.step()

    train_step()  # warm-up, and Adam state exists from here on
    step_s = median_time(train_step, reps)
    trace_s = median_time(lambda: archgrow.trace(model, x[:1]), reps)
    graph = archgrow.trace(model, x[:1])
    growable = [g for g in graph.groups if g.growable]
    picks = [growable[i * (len(growable) - 1) // 4] for i in range(5)] if len(growable) >= 5 else growable
    grow_times = []
    for g in picks:
        amount = max(g.step, k // g.step * g.step)
        start = time.perf_counter()
        archgrow.grow(graph, g.name, amount, optimizer=opt)
        grow_times.append(time.perf_counter() - start)
    grow_s = statistics.median(grow_times)
    return {
        "model": name,
        "input": "x".join(map(str, shape)),
        "trace_s": trace_s,
        "groups": f"{len(growable)}/{len(graph.groups) - len(growable)}",
        "grow_s": grow_s,
        "step_s": step_s,
        "ratio": grow_s / step_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(DEFAULT))
    parser.add_argument("--size", type=int, default=64, help="torchvision input size (px)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, k={args.k}, "
        f"medians of {args.reps} runs"
    )
    header = f"{'model':<14}{'input':>10}{'trace s':>10}{'groups g/f':>12}{'grow s':>10}{'step s':>10}{'grow/step':>11}"
    print(header)
    print("-" * len(header))
    for name in args.models:
        r = bench(name, args.size, args.batch, args.k, args.reps)
        print(
            f"{r['model']:<14}{r['input']:>10}{r['trace_s']:>10.3f}{r['groups']:>12}{r['grow_s']:>10.3f}"
            f"{r['step_s']:>10.3f}{r['ratio']:>11.2f}"
        )


if __name__ == "__main__":
    main()
