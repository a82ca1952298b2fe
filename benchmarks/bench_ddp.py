"""What growing under DDP costs on top of DDP itself (gloo, two processes on 127.0.0.1).

    .venv/bin/python benchmarks/bench_ddp.py [--steps 20] [--reps 3]

For each model, three loops train the same fixed batches (each rank its half of a global batch):

* ``plain DDP``: ``DDP(model)``, no archgrow;
* ``growing``: ``archgrow.distribute(archgrow.wrap(model, spec))``, an activation trigger on a
  buffer of 256 samples evaluated every step (rows gathered across ranks, decisions compared) and
  NORTH-Select with 100 candidates, up to 2x the widths: steps that grow also rebuild DDP;
* ``rebuild ms``: one ``DistributedGrowingModel.rebuild()`` alone (DDP built again over the grown
  model: shape check across ranks, broadcast from rank 0);
* ``capped``: the same with every group capped at its width (``max_width: 1x``): nothing is
  measured or evaluated, so a step should cost a plain DDP step.

Columns are medians over ``--reps`` repetitions of the mean step time, with the ratio to plain DDP
measured in the same repetition.  One intra-op thread per process.
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import statistics
import tempfile
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import archgrow

BATCH = 128


def _models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    cnn = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    return {"mlp 784-64-64-10": (mlp, (784,)), "cnn 32-64 on 32x32": (cnn, (3, 32, 32))}


def _loop(step, steps: int) -> float:
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    return (time.perf_counter() - t0) / steps


def _rank(rank: int, world: int, port: int, steps: int, reps: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    warnings.simplefilter("ignore")
    rows = []
    for name, (model, shape) in _models().items():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(BATCH // world, *shape, generator=g)
        y = torch.randint(0, 10, (BATCH // world,), generator=g)
        plain, grown_ms, rebuild_ms, capped_ms, events = [], [], [], [], []
        for _ in range(reps):
            ddp = nn.parallel.DistributedDataParallel(_copy(model))
            opt = torch.optim.SGD(ddp.parameters(), lr=0.01)

            def plain_step(_i, ddp=ddp, opt=opt, x=x, y=y):
                opt.zero_grad()
                F.cross_entropy(ddp(x), y).backward()
                opt.step()

            plain_step(0)
            plain.append(_loop(plain_step, steps))
            growing = _run(model, x, y, steps, "2x")
            capped = _run(model, x, y, steps, "1x")
            grown_ms.append(growing[0])
            rebuild_ms.append(growing[1])
            events.append(growing[2])
            capped_ms.append(capped[0])
        rows.append((
            name,
            statistics.median(plain),
            statistics.median(grown_ms),
            statistics.median(g / p for g, p in zip(grown_ms, plain, strict=True)),
            statistics.median(events),
            statistics.median(rebuild_ms),
            statistics.median(capped_ms),
            statistics.median(c / p for c, p in zip(capped_ms, plain, strict=True)),
        ))
    if rank == 0:
        with open(out, "w") as f:
            f.write(
                "| model | plain DDP ms | growing ms | x plain | steps that grew | rebuild ms | capped ms | x plain |\n"
            )
            f.write("| --- | --- | --- | --- | --- | --- | --- | --- |\n")
            for name, p, gr, ratio, ev, rb, cap, cratio in rows:
                f.write(
                    f"| {name} | {p * 1e3:.1f} | {gr * 1e3:.1f} | {ratio:.2f} | {ev}/{steps} | {rb * 1e3:.2f} | "
                    f"{cap * 1e3:.1f} | {cratio:.2f} |\n"
                )
    dist.destroy_process_group()


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, cap: str) -> tuple[float, float, int]:
    """Mean step time of a distributed growing model (activation trigger every step, NORTH-Select,
    widths capped at ``cap``), the time of one DDP rebuild, and how many steps grew."""
    spec = {
        "seed": 0,
        "defaults": {"max_width": cap},
        "rules": [{"match": "*", "trigger": {"kind": "activation", "buffer_size": 256}, "initializer": {"kind": "select", "candidates": 100}}],
    }
    trained = archgrow.distribute(archgrow.wrap(_copy(model), spec, x[:1]))
    opt = torch.optim.SGD(trained.parameters(), lr=0.01)
    grew = 0

    def step(_i: int) -> None:
        nonlocal grew
        opt.zero_grad()
        F.cross_entropy(trained(x), y).backward()
        opt.step()
        grew += bool(trained.grow_step(opt))

    step(0)  # baselines taken
    grew = 0
    mean = _loop(step, steps)
    t0 = time.perf_counter()
    trained.rebuild()
    return mean, time.perf_counter() - t0, grew


def _copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tempfile.mktemp(suffix=".md")
    mp.start_processes(_rank, args=(2, port, args.steps, args.reps, out), nprocs=2, start_method="spawn")
    print(open(out).read(), end="")


if __name__ == "__main__":
    main()
