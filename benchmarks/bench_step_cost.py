"""Per-step cost of each growth strategy against the static network, like the paper's Table 3.

    .venv/bin/python benchmarks/bench_step_cost.py [--steps 40] [--reps 3] [--models mlp vgg11 mlp-paper vgg11-paper] [--device cuda]
    .venv/bin/python benchmarks/bench_step_cost.py --capped [--cap-add 4] [--grow-steps 40] [--steps 20] [--reps 3]

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

``--capped`` (strategies: ``--strategies`` from ``CAPPED_STRATEGIES`` by default) measures what a
run costs once every growing group has reached its cap, where the grower skips buffering,
measurement, auxiliary-gradient capture and trigger evaluation for the group.  Each strategy is
first grown to caps ``--cap-add`` steps of each group above its width (``max_width`` per group;
a schedule gets that as its own cap, ``final_width``, over ``SCHEDULE_STEPS`` steps, and keeps
``max_width: 2x``) for at most ``--grow-steps`` steps, stopping when every group is capped.  A
strategy whose trigger does not reach a cap in that window (GradMax's threshold rarely fires on
random data) is re-run from the same seed with each cap lowered to the width its group reached,
so that every group still grows by its own trigger and then stops (a group that never grew is
capped from the start).  Then, per repetition, a plain step of an identical unwrapped copy (same
widths and weights, no hooks), ``--steps`` steps of the capped wrapped model and ``--steps``
steps of the same strategy wrapped *uncapped* around another copy (``max_width: 2x`` from the
capped widths, trigger due every step) are timed in turn.  Columns:

* ``capped widths``: the groups' widths in the order listed above the table; ``capped``: ``yes``
  when every group is at its cap, else which are not;
* ``step ms``: mean wall time of a step of the capped wrapped model (forward, backward, Adam,
  ``grow_step``), median over repetitions; ``plain ms``: the plain copy's step;
* ``x plain``: the two's ratio, taken within each repetition, median over repetitions;
* ``grow_step ms``: mean time inside the capped model's ``grow_step``;
* ``evals``: trigger evaluations during the capped model's timed steps (all repetitions; 0 when
  the grower skips every capped group);
* ``uncapped ms`` / ``uncapped x plain``: the uncapped model's mean step (growth events
  included) and its ratio to the plain step (same pairing); ``uncapped no-growth x``: the same
  ratio over its steps where nothing grew (trigger evaluation only; ``-`` when every step grew);
  ``uncapped events``: its growth events over the timed steps, summed over repetitions (the
  uncapped network is larger by whatever it grew in the window).
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
# --capped: strategies grown to their caps, then timed at them
CAPPED_STRATEGIES = ("north-select", "north-select@step", "gradmax", "gradmax-authors", "linear-schedule")
SCHEDULE_STEPS = 10  # --capped: a schedule's total_steps, so that it reaches its final width in a few steps


# model name -> (builder, input shape of one sample, batch size)
MODELS = {
    "mlp": (lambda: models.mlp(784, (64, 64), 10), (784,), 128),
    "mlp-paper": (lambda: models.mlp(784, (64, 64), 10), (784,), 512),
    "vgg11": (lambda: models.vgg11(width_mult=0.125), (3, 32, 32), 64),
    "vgg11-paper": (lambda: models.vgg11(width_mult=0.25), (3, 32, 32), 128),
}


# where the benchmark runs (--device); a CUDA step is timed after synchronizing
DEVICE = torch.device("cpu")


def now() -> float:
    """Seconds, once the device's queued work is done (CUDA launches return before it is)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return time.perf_counter()


def setup(model_name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, int]:
    build, shape, batch = MODELS[model_name]
    torch.manual_seed(0)
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    return build().to(DEVICE), x.to(DEVICE), y.to(DEVICE), batch


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
        start = now()
        train_step(model, optimizer, x, y)
        if step >= warmup:
            times.append(now() - start)
    return statistics.fmean(times)


def plain_copy(grown: archgrow.GrowingModel) -> torch.nn.Module:
    """The wrapped network as it is now, without wrapper or hooks (a copy would keep archgrow's
    hooks, which still capture into the wrapper's state: they are dropped)."""
    plain = copy.deepcopy(grown.model)
    for module in plain.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return plain


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
        start = now()
        train_step(grown, optimizer, x, y)
        g0 = now()
        grew = len(grown.grow_step(optimizer, loss_fn=lambda: F.cross_entropy(grown(x), y)))
        events += grew
        if step >= warmup:
            grow_time += now() - g0
            times.append(now() - start)
            if not grew:
                quiet.append(times[-1])
    # the arithmetic of one more step (matmul and conv FLOPs; factorisations are not counted),
    # set against a plain step of the same network below
    with FlopCounterMode(display=False) as counter:
        train_step(grown, optimizer, x, y)
        grew = grown.grow_step(optimizer, loss_fn=lambda: F.cross_entropy(grown(x), y))
    step_flops = None if grew else counter.get_total_flops()
    widths = grown.widths()
    # the grown network trained plainly: what its size alone costs per step
    plain = plain_copy(grown)
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


def growable_groups(model_name: str) -> list[str]:
    """The groups a preset grows in ``model_name``, in graph order."""
    base, x, _, batch = setup(model_name)
    probe = archgrow.wrap(base, spec_for("gradmax", model_name, batch), x[:1])
    probe.close()
    return list(probe.growing)


def capped_spec(strategy: str, model_name: str, batch: int, caps: dict[str, int]) -> archgrow.Spec:
    """``strategy`` with each group capped at ``caps[group]``: its ``max_width``, or a schedule's own
    ``final_width`` (reached within ``SCHEDULE_STEPS`` steps)."""
    data = spec_for(strategy, model_name, batch).model_dump(mode="json")
    trigger = next((r["trigger"] for r in reversed(data["rules"]) if r.get("trigger")), data["defaults"]["trigger"])
    schedule = trigger["kind"].endswith("_schedule")
    for group, cap in caps.items():
        if schedule:
            data["rules"].append({"match": group, "trigger": {**trigger, "final_width": cap, "total_steps": SCHEDULE_STEPS}})
        else:
            data["rules"].append({"match": group, "max_width": cap})
    return archgrow.spec.parse_spec(data, source=f"{strategy}.yaml (benchmark, capped)")


def loss_of(grown: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    return lambda: F.cross_entropy(grown(x), y)


def grow_to_caps(model_name: str, strategy: str, cap_add: int, grow_steps: int, passes: int = 4):
    """A wrapped model grown by ``strategy`` until every group is at its cap (see the module doc).

    Returns the model, its optimizer, the batch, the caps and the groups not at their cap."""
    base, x, y, batch = setup(model_name)
    probe = archgrow.wrap(copy.deepcopy(base), spec_for(strategy, model_name, batch), x[:1])
    caps = {name: b.width + cap_add * b.group.step for name, b in probe.growing.items()}
    probe.close()
    for _ in range(passes):
        torch.manual_seed(1)  # the same steps on every pass (dropout included)
        grown = archgrow.wrap(copy.deepcopy(base), capped_spec(strategy, model_name, batch, caps), x[:1])
        optimizer = torch.optim.Adam(grown.parameters(), lr=1e-3)
        for _ in range(grow_steps):
            train_step(grown, optimizer, x, y)
            grown.grow_step(optimizer, loss_fn=loss_of(grown, x, y))
            widths = grown.widths()
            if all(widths[g] >= cap for g, cap in caps.items()):
                return grown, optimizer, x, y, caps, {}
        widths = grown.widths()
        short = {g: (widths[g], cap) for g, cap in caps.items() if widths[g] < cap}
        grown.close()
        caps = {g: widths[g] for g in caps}  # the same run again, stopping where it got to
    return grown, optimizer, x, y, caps, short


def wrapped_steps(grown, optimizer, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int = 3) -> dict[str, float]:
    """Mean seconds of a step (and of ``grow_step``) of a wrapped model over ``steps`` timed steps."""
    times, quiet = [], []
    grow_time, events, evaluations = 0.0, 0, 0
    for step in range(warmup + steps):
        start = now()
        train_step(grown, optimizer, x, y)
        g0 = now()
        grew = len(grown.grow_step(optimizer, loss_fn=loss_of(grown, x, y)))
        end = now()
        if step >= warmup:
            times.append(end - start)
            grow_time += end - g0
            events += grew
            evaluations += len(grown.evaluations)
            if not grew:
                quiet.append(end - start)
    return {
        "step": statistics.fmean(times),
        "quiet": statistics.fmean(quiet) if quiet else None,
        "grow": grow_time / steps,
        "events": events,
        "evals": evaluations,
    }


def capped_row(model_name: str, strategy: str, args: argparse.Namespace) -> dict:
    grown, optimizer, x, y, caps, short = grow_to_caps(model_name, strategy, args.cap_add, args.grow_steps)
    _, _, batch = MODELS[model_name]
    plain = plain_copy(grown)
    reps = []
    for _ in range(args.reps):
        # in turn within a repetition, ratios taken within it: the machine's speed drifts between runs
        base = plain_steps(plain, x, y, args.steps)
        capped = wrapped_steps(grown, optimizer, x, y, args.steps)
        uncapped_model = archgrow.wrap(plain_copy(grown), spec_for(strategy, model_name, batch), x[:1])
        uncapped = wrapped_steps(uncapped_model, torch.optim.Adam(uncapped_model.parameters(), lr=1e-3), x, y, args.steps)
        uncapped_model.close()
        reps.append((base, capped, uncapped))
    quiet = [(u["quiet"], b) for b, _, u in reps if u["quiet"] is not None]
    return {
        "widths": {g: grown.widths()[g] for g in caps},
        "short": short,
        "step": statistics.median(c["step"] for _, c, _ in reps),
        "plain": statistics.median(b for b, _, _ in reps),
        "ratio": statistics.median(c["step"] / b for b, c, _ in reps),
        "grow": statistics.median(c["grow"] for _, c, _ in reps),
        "evals": sum(c["evals"] for _, c, _ in reps),
        "uncapped": statistics.median(u["step"] for _, _, u in reps),
        "uncapped_ratio": statistics.median(u["step"] / b for b, _, u in reps),
        "uncapped_quiet": statistics.median(q / b for q, b in quiet) if quiet else None,
        "uncapped_events": sum(u["events"] for _, _, u in reps),
    }


def capped_main(args: argparse.Namespace) -> None:
    strategies = args.strategies or list(CAPPED_STRATEGIES)
    for model_name in args.models:
        run(model_name, "static", args.steps)  # warm the allocator and thread pool before timing
        print(f"## {model_name}, capped (+{args.cap_add} steps per group, grown in at most {args.grow_steps} steps)\n")
        print(f"groups: {', '.join(growable_groups(model_name))}\n")
        print("| strategy | capped widths | capped | step ms | plain ms | x plain | grow_step ms | evals | uncapped ms | uncapped x plain | "
              "uncapped no-growth x | uncapped events |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for strategy in strategies:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = capped_row(model_name, strategy, args)
            widths = "/".join(str(w) for w in r["widths"].values())
            capped = "yes" if not r["short"] else "no: " + ", ".join(f"{g} {w} < {c}" for g, (w, c) in r["short"].items())
            quiet = f"{r['uncapped_quiet']:.2f}" if r["uncapped_quiet"] is not None else "-"
            print(
                f"| {strategy} | {widths} | {capped} | {1e3 * r['step']:.2f} | {1e3 * r['plain']:.2f} | {r['ratio']:.2f} | "
                f"{1e3 * r['grow']:.3f} | {r['evals']} | {1e3 * r['uncapped']:.2f} | {r['uncapped_ratio']:.2f} | {quiet} | "
                f"{r['uncapped_events']} |"
            )
            sys.stdout.flush()
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["mlp", "vgg11"], choices=list(MODELS))
    parser.add_argument(
        "--strategies", nargs="*", default=None, choices=list(dict.fromkeys([*STRATEGIES, *CAPPED_STRATEGIES])),
        help=f"default: {' '.join(STRATEGIES)}; with --capped: {' '.join(CAPPED_STRATEGIES)}",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 40; with --capped 20)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (CUDA steps are timed after a synchronize)")
    parser.add_argument("--capped", action="store_true", help="time steps once every group is at its cap (see the doc)")
    parser.add_argument("--cap-add", type=int, default=4, help="--capped: caps this many steps above each group's width")
    parser.add_argument("--grow-steps", type=int, default=40, help="--capped: most steps to reach the caps")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    if args.steps is None:
        args.steps = 20 if args.capped else 40
    torch.set_num_threads(max(1, torch.get_num_threads()))
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {DEVICE} ({where}), {args.steps} timed steps, median of {args.reps} runs\n")
    if args.capped:
        capped_main(args)
        return
    args.strategies = args.strategies or list(STRATEGIES)
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
