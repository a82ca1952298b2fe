"""Cost of tracing and of one growth event, against one training step measured in the same run.

    .venv/bin/python benchmarks/bench_grow.py [--size 64] [--batch 32] [--k 8] [--reps 5] [MODEL ...]
    .venv/bin/python benchmarks/bench_grow.py --versus          # trace vs Torch-Pruning only

For each model: median time of ``archgrow.trace`` (fx trace + shape recording + width analysis),
the number of groups (growable / frozen), the median time of one ``grow`` event (k units, Adam
state padded) over up to 5 growable groups spread through the network, and the median time of
one Adam training step (forward + backward + step) at the given batch size.  grow / step below 1
means a growth event costs less than a training step.

When ``torch_pruning`` is importable (it is not a dependency), the same run also times
Torch-Pruning's dependency analysis on the same model and input, ``DependencyGraph()
.build_dependency(model, example_inputs=x)`` plus consuming ``get_all_groups()`` (a generator:
the groups are only built when iterated), alternating with archgrow's trace rep by rep so that
machine noise hits both alike; trace / tp is the ratio of the two medians.  A model Torch-Pruning
fails on gets ``failed: <reason>`` in its cell instead of ending the table; ``--tp-skip`` names
models not to hand to it at all: by default swin_t, on which it ran out of memory at 224 px and
had not finished after 300 s (3 GB resident and growing) at 64 px.  MODEL is a torchvision name, ``wrn28``, or ``timm:<name>`` (``pretrained=False``).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import archgrow
from archgrow import models

DEFAULT = ("resnet18", "resnet50", "mobilenet_v2", "densenet121", "vgg11", "wrn28")
# Issue 18's comparison: the torchvision models named there, then a few timm CNNs.
VERSUS = (
    "mobilenet_v3_small", "efficientnet_b0", "densenet121", "swin_t", "shufflenet_v2_x0_5", "resnet18", "resnet50",
    "convnext_tiny", "timm:regnety_002", "timm:efficientnet_b0", "timm:mobilenetv3_small_050", "timm:resnet18d",
    "timm:convnext_atto", "timm:lcnet_050", "timm:cspresnet50", "timm:dpn48b", "timm:ghostnet_050",
)  # fmt: skip


def build(name: str, size: int) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "wrn28":  # the paper's WRN-28 at its "Medium" width
        return models.wrn28(), (3, 32, 32)
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name.removeprefix("timm:"), pretrained=False), (3, size, size)
    import torchvision

    return torchvision.models.get_model(name, weights=None), (3, size, size)


def median_time(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_pruning_groups() -> Callable[[nn.Module, torch.Tensor], object] | None:
    """Torch-Pruning's trace plus group discovery, or None where it is not installed."""
    try:
        import torch_pruning as tp
    except ImportError:
        return None

    def groups(model: nn.Module, x: torch.Tensor) -> object:
        with warnings.catch_warnings():  # it warns about every unwrapped parameter, every call
            warnings.simplefilter("ignore")
            return list(tp.DependencyGraph().build_dependency(model, example_inputs=x).get_all_groups())

    return groups


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"failed: {type(exc).__name__}" + (f": {text[:60]}" if text else "")


def time_traces(
    model: nn.Module, x: torch.Tensor, reps: int, tp_groups: Callable[[nn.Module, torch.Tensor], object] | None
) -> tuple[float, float | str | None]:
    """Median seconds of archgrow.trace, and of Torch-Pruning's analysis (or why it failed),
    alternating the two rep by rep on the same model (eval mode) and input, after one untimed
    call of each (first calls pay for lazy imports and caches).

    Each timed call starts right after an untimed ``gc.collect()``: otherwise the garbage one
    side leaves sets off a collection (about 0.1 s with timm imported: it walks every object of
    the process) inside the other side's timing."""
    ours: list[float] = []
    theirs: list[float] = []
    failure: str | None = None
    for rep in range(-1, reps):
        gc.collect()
        start = time.perf_counter()
        archgrow.trace(model, x)
        if rep >= 0:
            ours.append(time.perf_counter() - start)
        if tp_groups is None or failure is not None:
            continue
        try:
            gc.collect()
            start = time.perf_counter()
            tp_groups(model, x)
            if rep >= 0:
                theirs.append(time.perf_counter() - start)
        except (Exception, MemoryError, RecursionError) as exc:  # its failures must not end the table
            failure = _reason(exc)
    if tp_groups is None:
        return statistics.median(ours), None
    return statistics.median(ours), failure or statistics.median(theirs)


def bench(
    name: str,
    size: int,
    batch: int,
    k: int,
    reps: int,
    tp_groups: Callable[[nn.Module, torch.Tensor], object] | None = None,
    trace_only: bool = False,
) -> dict[str, Any]:
    model, shape = build(name, size)
    x = torch.randn(batch, *shape)
    model.eval()
    trace_s, tp_s = time_traces(model, x[:1], reps, tp_groups)
    graph = archgrow.trace(model, x[:1])
    growable = [g for g in graph.groups if g.growable]
    row: dict[str, Any] = {
        "model": name,
        "input": "x".join(map(str, shape)),
        "trace_s": trace_s,
        "tp_s": tp_s,
        "groups": f"{len(growable)}/{len(graph.groups) - len(growable)}",
    }
    if trace_only:
        return row
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def train_step() -> None:
        opt.zero_grad()
        out = model(x)
        (out[0] if isinstance(out, tuple) else out).logsumexp(1).mean().backward()
        opt.step()

    train_step()  # warm-up, and Adam state exists from here on
    step_s = median_time(train_step, reps)
    picks = [growable[i * (len(growable) - 1) // 4] for i in range(5)] if len(growable) >= 5 else growable
    grow_times = []
    for g in picks:
        amount = max(g.step, k // g.step * g.step)
        start = time.perf_counter()
        archgrow.grow(graph, g.name, amount, optimizer=opt)
        grow_times.append(time.perf_counter() - start)
    grow_s = statistics.median(grow_times)
    row.update(grow_s=grow_s, step_s=step_s, ratio=grow_s / step_s)
    return row


def format_row(r: dict[str, Any], with_tp: bool, trace_only: bool) -> str:
    cells = [r["model"], r["input"], f"{r['trace_s']:.3f}"]
    if with_tp:
        tp_s = r["tp_s"]
        if isinstance(tp_s, float):
            cells += [f"{tp_s:.3f}", f"{r['trace_s'] / tp_s:.2f}"]
        else:
            cells += [tp_s or "skipped (--tp-skip)", "-"]
    cells.append(r["groups"])
    if not trace_only:
        cells += [f"{r['grow_s']:.3f}", f"{r['step_s']:.3f}", f"{r['ratio']:.2f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*")
    parser.add_argument("--size", type=int, default=64, help="torchvision and timm input size (px)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--trace-only", action="store_true", help="time the traces only (no grow, no step)")
    parser.add_argument("--versus", action="store_true", help="issue 18's model list, traces only")
    parser.add_argument("--no-tp", action="store_true", help="do not time Torch-Pruning even if installed")
    parser.add_argument(
        "--tp-skip", nargs="*", default=["swin_t"], metavar="MODEL", help="models not handed to Torch-Pruning"
    )
    args = parser.parse_args()
    trace_only = args.trace_only or args.versus
    names = args.models or list(VERSUS if args.versus else DEFAULT)
    tp_groups = None if args.no_tp else torch_pruning_groups()
    with_tp = tp_groups is not None
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, k={args.k}, "
        f"medians of {args.reps} runs" + ("; Torch-Pruning: " + _tp_version() if with_tp else "")
    )
    columns = ["model", "input", "trace s"]
    if with_tp:
        columns += ["tp s", "trace/tp"]
    columns.append("groups g/f")
    if not trace_only:
        columns += ["grow s", "step s", "grow/step"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for name in names:
        groups = None if name in args.tp_skip else tp_groups
        r = bench(name, args.size, args.batch, args.k, args.reps, groups, trace_only)
        print(format_row(r, with_tp, trace_only), flush=True)


def _tp_version() -> str:
    try:
        import torch_pruning as tp
    except ImportError:  # a comparison given from elsewhere (the tests stand one in)
        return "not installed"
    return str(getattr(tp, "__version__", "?"))


if __name__ == "__main__":
    main()
