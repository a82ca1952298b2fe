"""Per-step cost of each growth strategy against the static network, like the paper's Table 3.

    .venv/bin/python benchmarks/bench_step_cost.py [--steps 40] [--reps 3] [--models mlp vgg11 mlp-paper vgg11-paper]

For each model, every strategy trains from the same seed on the same fixed batches with its
trigger evaluated on every step (``every_n_steps: 1``).  A step is forward + backward + Adam step
+ ``grow_step`` (static: no wrapper at all).  ``name@step`` is the strategy with its activation
trigger on ``source: step`` (the training forward's own activations, no extra forward).  Columns:

* ``step ms``: mean wall time of a step over the timed steps (growth events included), median over
  ``--reps`` repetitions;
* ``x static``: that mean divided by the static network's, timed right before it (each repetition
  pairs the two, the ratio is the median over repetitions: the machine's speed drifts between
  runs, so the static row shows the noise floor);
* ``no-growth x``: the same ratio over the timed steps where nothing grew (trigger evaluation
  only; ``-`` when every step grew);
* ``overhead x``: the no-growth steps' mean divided by a plain step of the *grown* network (its
  final widths, no wrapper or hooks, same run): the cost of evaluating the triggers every step, without
  the cost of the network simply being bigger;
* ``flops x``: the matmul and convolution FLOPs of one more step after the timed ones (training
  step + ``grow_step``, counted by ``torch.utils.flop_counter``; LAPACK factorisations and
  element-wise work are not counted) over a plain step of the grown network: how much
  arithmetic the strategy adds (not a bound on the time ratio, whose uncounted parts differ;
  ``-`` when that step grew);
* ``grow_step ms``: mean time inside ``grow_step`` alone (trigger, initializer, surgery);
* ``params x``: final parameter count over the static network's (a grown network also costs more
  per step simply because it is bigger);
* ``events`` / ``final widths``.

Models: ``mlp`` is the paper's MNIST MLP (784 inputs, two hidden layers, Small = 64 units), batch
128; ``vgg11`` is VGG-11 at width multiplier 1/8 on 32x32 inputs, batch 64.  ``mlp-paper`` and
``vgg11-paper`` are the same networks at the paper's Table 2 sizes (MLP batch 512; VGG-11 at its
Small width, 1/4, batch 128): fixed per-step costs (Python, small factorisations) weigh less
against a bigger step.  Every model grows to at most 2x its widths.  Data are fixed random
tensors: the cost of a step does not depend on the values.  Activation triggers use a buffer of
one batch on VGG (the paper's GPU setting) and 2 x max width on the MLP (its CPU setting).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import archgrow
from archgrow import models

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = (
    "static",
    "north-select",
    "north-select@step",
    "north-random",
    "north-random@step",
    "north-weight",
    "gradmax",
    "firefly",
    "nest",
)


# model name -> (builder, input shape of one sample, batch size)
MODELS = {
    "mlp": (lambda: models.mlp(784, (64, 64), 10), (784,), 128),
    "mlp-paper": (lambda: models.mlp(784, (64, 64), 10), (784,), 512),
    "vgg11": (lambda: models.vgg11(width_mult=0.125), (3, 32, 32), 64),
    "vgg11-paper": (lambda: models.vgg11(width_mult=0.25), (3, 32, 32), 128),
}


def setup(model_name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, int]:
    build, shape, batch = MODELS[model_name]
    torch.manual_seed(0)
    return build(), torch.randn(batch, *shape), torch.randint(0, 10, (batch,)), batch


def spec_for(strategy: str, model_name: str, batch: int) -> archgrow.Spec:
    preset, _, source = strategy.partition("@")
    data = archgrow.load_spec(ROOT / "specs" / f"{preset}.yaml").model_dump(mode="json")
    data["defaults"]["max_width"] = "2x"
    for rule in data["rules"]:
        trig = rule.get("trigger") or {}
        if trig.get("kind") == "activation":
            trig["buffer_size"] = batch if model_name.startswith("vgg11") and not source else None
            trig["source"] = source or "buffer"
    return archgrow.spec.parse_spec(data, source=f"{strategy}.yaml (benchmark)")


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    net.train()
    loss = F.cross_entropy(net(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def plain_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int = 3) -> float:
    """Mean seconds of a plain training step of ``model`` (no wrapper, no growth)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        train_step(model, optimizer, x, y)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.fmean(times)


def run(model_name: str, strategy: str, steps: int, warmup: int = 3) -> dict[str, float]:
    base, x, y, batch = setup(model_name)
    model = copy.deepcopy(base)
    if strategy == "static":
        step = plain_steps(model, x, y, steps, warmup)
        widths = archgrow.trace(model, x[:1]).widths()
        params = sum(p.numel() for p in model.parameters())
        return {"step": step, "quiet": step, "final": step, "flops": 1.0, "grow": 0.0, "params": params, "events": 0, "widths": widths}
    grown = archgrow.wrap(model, spec_for(strategy, model_name, batch), x[:1])
    optimizer = torch.optim.Adam(grown.parameters(), lr=1e-3)
    grow_time, times, quiet = 0.0, [], []
    events = 0
    for step in range(warmup + steps):
        start = time.perf_counter()
        train_step(grown, optimizer, x, y)
        g0 = time.perf_counter()
        grew = len(grown.grow_step(optimizer, loss_fn=lambda: F.cross_entropy(grown(x), y)))
        events += grew
        if step >= warmup:
            grow_time += time.perf_counter() - g0
            times.append(time.perf_counter() - start)
            if not grew:
                quiet.append(times[-1])
    # the arithmetic of one more step (matmul and conv FLOPs; factorisations are not counted),
    # set against a plain step of the same network below
    with FlopCounterMode(display=False) as counter:
        train_step(grown, optimizer, x, y)
        grew = grown.grow_step(optimizer, loss_fn=lambda: F.cross_entropy(grown(x), y))
    step_flops = None if grew else counter.get_total_flops()
    widths = grown.widths()
    # the grown network trained plainly: what its size alone costs per step (its copy would keep
    # archgrow's hooks, which still capture into the wrapper's state: drop them)
    plain = copy.deepcopy(grown.model)
    for module in plain.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    final = plain_steps(plain, x, y, steps, warmup)
    with FlopCounterMode(display=False) as counter:
        train_step(plain, torch.optim.Adam(plain.parameters(), lr=1e-3), x, y)
    return {
        "flops": step_flops / counter.get_total_flops() if step_flops else None,
        "step": statistics.fmean(times),
        "quiet": statistics.fmean(quiet) if quiet else None,
        "final": final,
        "grow": grow_time / steps,
        "params": sum(p.numel() for p in model.parameters()),
        "events": events,
        "widths": widths,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["mlp", "vgg11"], choices=list(MODELS))
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} timed steps, median of {args.reps} runs\n")
    for model_name in args.models:
        run(model_name, "static", args.steps)  # warm the allocator and thread pool before timing
        results = {}
        for strategy in dict.fromkeys(["static", *args.strategies]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # each repetition times the static network right before the strategy: on a shared
                # machine the speed drifts between runs, so ratios are taken within a pair
                pairs = [(run(model_name, "static", args.steps), run(model_name, strategy, args.steps)) for _ in range(args.reps)]
            reps = [r for _, r in pairs]
            quiet = [(r["quiet"], s["step"]) for s, r in pairs if r["quiet"] is not None]
            results[strategy] = {
                **reps[0],
                "step": statistics.median(r["step"] for r in reps),
                "ratio": statistics.median(r["step"] / s["step"] for s, r in pairs),
                "quiet_ratio": statistics.median(q / s for q, s in quiet) if quiet else None,
                "overhead": statistics.median(q / r["final"] for r in reps if (q := r["quiet"]) is not None) if quiet else None,
                "grow": statistics.median(r["grow"] for r in reps),
            }
        static = results["static"]
        print(f"## {model_name}\n")
        print("| strategy | step ms | x static | no-growth x | overhead x | flops x | grow_step ms | params x | events | final widths |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for strategy, r in results.items():
            grown_widths = {k: v for k, v in r["widths"].items() if v != static["widths"].get(k)}
            shown = ", ".join(f"{k}={v}" for k, v in grown_widths.items()) or "unchanged"
            quiet = f"{r['quiet_ratio']:.2f}" if r["quiet_ratio"] is not None else "-"
            overhead = f"{r['overhead']:.2f}" if r["overhead"] is not None else "-"
            flops = f"{r['flops']:.2f}" if r["flops"] is not None else "-"
            print(
                f"| {strategy} | {1e3 * r['step']:.1f} | {r['ratio']:.2f} | {quiet} | {overhead} | {flops} | "
                f"{1e3 * r['grow']:.1f} | {r['params'] / static['params']:.2f} | {r['events']} | {shown} |"
            )
        print()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
