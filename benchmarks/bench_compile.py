"""What growth costs a ``torch.compile``\\ d model: compiles, recompiles and step times.

    .venv/bin/python benchmarks/bench_compile.py [--models mlp cnn] [--growths 4] [--steps 4]

For each model, three runs from the same seed on the same batches, every growable group growing
by a batch of units on each of the first ``growths`` steps (``batched_schedule``, random fan-in),
then ``steps`` steps without growth:

* ``eager``: no compile;
* ``grown.compile()``: archgrow's default, growing dims compiled as dynamic sizes;
* ``dynamic=False``: ``grown.compile(dynamic=False)``, static sizes, so each growth recompiles.

Columns: the first step (compile included), the median step right after a growth (a recompile
when there is one), the median step once nothing grows, and how many graphs dynamo compiled.
Each run is its own process with a fresh inductor cache folder, and compiles one unrelated
function first, so that neither one-time toolchain costs nor earlier runs count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import archgrow
from archgrow import models

MODELS = {
    "mlp": (lambda: models.mlp(64, (64, 64), 10), (64,), 128),  # 64-64-64-10, batch 128
    "cnn": (lambda: models.vgg11(width_mult=0.125, init="torch"), (3, 32, 32), 32),  # VGG-11 at 1/8 width
}


def run(name: str, mode: str, growths: int, steps: int) -> dict[str, object]:
    build, shape, batch = MODELS[name]
    torch.manual_seed(0)
    model = build()
    trigger = {"kind": "batched_schedule", "final_width": "2x", "total_steps": growths, "grow_fraction": 1.0, "stages": growths}
    spec = {"seed": 0, "rules": [{"match": "*", "trigger": trigger, "initializer": {"kind": "random"}}]}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grown = archgrow.wrap(model, spec, x[:1])
        if mode == "grown.compile()":
            grown.compile()
        elif mode == "dynamic=False":
            grown.compile(dynamic=False)
    opt = torch.optim.Adam(grown.parameters(), lr=1e-3)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    times, grew = [], []
    for _ in range(growths + steps):
        start = time.perf_counter()
        loss = F.cross_entropy(grown(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
        grew.append(bool(grown.grow_step(opt)))
    after_growth = [t for t, g_ in zip(times[1:], grew, strict=False) if g_]
    return {
        "model": name,
        "mode": mode,
        "first s": times[0],
        "after growth s": statistics.median(after_growth) if after_growth else float("nan"),
        "steady ms": 1000 * statistics.median(times[growths + 1 :]),
        "graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs,
        "widths": sum(grown.widths().values()),
    }


def isolated(name: str, mode: str, growths: int, steps: int) -> dict[str, object]:
    """:func:`run` in a fresh process, with a fresh inductor cache."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="archgrow-bench-compile-"))
    argv = [sys.executable, __file__, "--one", name, mode, "--growths", str(growths), "--steps", str(steps)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--growths", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        torch.compile(lambda t: nn.functional.relu(t) + 1)(torch.randn(4))  # toolchain warm-up
        print(json.dumps(run(*args.one, args.growths, args.steps)))
        return
    print("| model | mode | first step s | step after a growth s | steady step ms | graphs compiled |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        widths = None
        for mode in ("eager", "grown.compile()", "dynamic=False"):
            r = isolated(name, mode, args.growths, args.steps)
            widths = widths or r["widths"]
            assert r["widths"] == widths, "the runs grew differently"
            print(
                f"| {r['model']} | {r['mode']} | {r['first s']:.2f} | {r['after growth s']:.2f} | "
                f"{r['steady ms']:.1f} | {r['graphs']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
