"""Growth runs shared by the two-process DDP tests (tests/test_distributed.py).

Each case trains a small model for a few steps on fixed data: in one process on the whole batch,
or on each of ``world`` gloo ranks on its contiguous share of every batch (what a
DistributedSampler without shuffling gives), through ``archgrow.distribute``.  A run returns
everything that must agree: widths, growth events, parameters and optimizer state.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import archgrow
from archgrow.distributed import distribute

STEPS = 6
# tools/gpu-check runs the same cases with CUDA tensors (gloo moves them; nccl needs a GPU per rank)
DEVICE = os.environ.get("ARCHGROW_TEST_DEVICE", "cpu")
BATCH = 32  # the global batch: each of 2 ranks trains on 16 samples

# trigger family x initializer; every case must grow within STEPS steps
CASES: dict[str, dict[str, Any]] = {
    "activation_buffer-select": {
        "trigger": {"kind": "activation", "buffer_size": 64, "baseline": "first_batch"},
        "initializer": {"kind": "select", "candidates": 20},
    },
    "activation_step-preactivation": {
        "trigger": {"kind": "activation", "source": "step"},
        "initializer": {"kind": "preactivation", "candidates": 20},
    },
    "weight-weight": {"trigger": {"kind": "weight"}, "initializer": {"kind": "weight"}},
    "gradient-gradmax": {"trigger": {"kind": "gradient", "threshold": "code"}, "initializer": {"kind": "gradmax"}},
    "linear_schedule-firefly": {
        "trigger": {"kind": "linear_schedule", "final_width": 14, "total_steps": STEPS},
        "initializer": {"kind": "firefly", "candidates": 10},
    },
    "batched_schedule-random": {
        "trigger": {"kind": "batched_schedule", "final_width": 14, "total_steps": STEPS},
        "initializer": {"kind": "random"},
    },
    "conv-linear_schedule-nest": {
        "conv": True,
        "trigger": {"kind": "linear_schedule", "final_width": 8, "total_steps": STEPS},
        "initializer": {"kind": "nest", "candidates": 4},
    },
}
# decided by quantities that are sums or means over samples only: 2 ranks x B = 1 process x 2B
DETERMINISTIC = ["activation_buffer-select", "weight-weight", "gradient-gradmax", "batched_schedule-random"]


def _model(conv: bool) -> nn.Module:
    torch.manual_seed(0)
    if conv:
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
        )
    return nn.Sequential(nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))


def _data(conv: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = BATCH * STEPS
    x = torch.randn((n, 1, 6, 6) if conv else (n, 12), generator=g)
    if not conv:
        x[:, 6:] = x[:, :6] @ torch.randn(6, 6, generator=g)  # six independent features of twelve
    return x, torch.randint(0, 3, (n,), generator=g)


def run(case: str, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Train ``case`` on this rank's share of every batch; returns what the ranks must agree on."""
    settings = CASES[case]
    conv = settings.get("conv", False)
    model = _model(conv).to(DEVICE)
    x, y = (t.to(DEVICE) for t in _data(conv))
    spec = {
        "seed": 3,
        "defaults": {"max_width": 24},
        "rules": [{"match": "*", "trigger": settings["trigger"], "initializer": settings["initializer"]}],
    }
    share = BATCH // world
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few rows for the width: expected on this tiny data
        grown = archgrow.wrap(model, spec, x[:1])
        trained = distribute(grown) if world > 1 else grown
        optimizer = torch.optim.Adam(trained.parameters(), lr=0.01)
        _train(trained, optimizer, x, y, range(STEPS), rank, world)
        trained.train()  # one more step after the last growth: DDP must reduce the new shapes
        optimizer.zero_grad()
        F.cross_entropy(trained(x[rank * share : (rank + 1) * share]), y[rank * share : (rank + 1) * share]).backward()
        optimizer.step()
    return _result(grown, optimizer, trained)


def _train(trained: nn.Module, optimizer: Any, x: torch.Tensor, y: torch.Tensor, steps: range, rank: int, world: int) -> None:
    share = BATCH // world
    for step in steps:
        lo = step * BATCH + rank * share
        xb, yb = x[lo : lo + share], y[lo : lo + share]
        trained.train()
        optimizer.zero_grad()
        F.cross_entropy(trained(xb), yb).backward()
        optimizer.step()
        trained.grow_step(optimizer, loss_fn=lambda xb=xb, yb=yb: F.cross_entropy(trained(xb), yb))


def _result(grown: archgrow.GrowingModel, optimizer: Any, trained: nn.Module) -> dict[str, Any]:
    state = {
        name: {k: v.clone() for k, v in optimizer.state[p].items() if isinstance(v, torch.Tensor)}
        for name, p in grown.model.named_parameters()
    }
    return {
        "widths": grown.widths(),
        "events": [(e.step, e.group, e.old_width, e.new_width) for e in grown.history],
        "parameters": {k: v.detach().cpu().clone() for k, v in grown.model.state_dict().items()},
        "optimizer": {name: {k: v.cpu() for k, v in entries.items()} for name, entries in state.items()},
        "rebuilds": getattr(trained, "rebuilds", 0),
    }


def _error(fn: Any) -> str:
    try:
        fn()
    except archgrow.ArchgrowError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _schedule_spec(seed: int) -> dict[str, Any]:
    return {
        "seed": seed,
        "rules": [{"match": "*", "trigger": {"kind": "linear_schedule", "final_width": 10, "total_steps": 2}}],
    }


def _one_step(trained: nn.Module, x: torch.Tensor, y: torch.Tensor, grower: Any = None) -> list[Any]:
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.1)
    F.cross_entropy(trained(x), y).backward()
    optimizer.step()
    return (grower or trained).grow_step(optimizer)


def checks(rank: int, world: int) -> dict[str, Any]:
    """Misuse and bad input under DDP: what each rank saw."""
    x, y = _data(False)
    share = BATCH // world
    xb, yb = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
    out: dict[str, Any] = {}
    # DDP(grown), the order that cannot follow growth
    grown = archgrow.wrap(_model(False), _schedule_spec(0), x[:1])
    out["plain_ddp"] = _error(lambda: _one_step(nn.parallel.DistributedDataParallel(grown), xb, yb, grown))
    # ranks configured differently (another seed each) must not continue apart
    grown = archgrow.wrap(_model(False), _schedule_spec(rank), x[:1])
    out["seed_divergence"] = _error(lambda: _one_step(distribute(grown), xb, yb))
    # unequal row counts gather in rank order
    collective = distribute(archgrow.wrap(_model(False), _schedule_spec(0), x[:1])).grown.collective
    out["gathered"] = collective.gather_rows(torch.full((rank + 1, 2), float(rank)))
    # a NaN sample on rank 1 only: not buffered, and the ranks still decide alike
    spec = {
        "seed": 0,
        "defaults": {"max_width": 24},
        "rules": [{"match": "*", "trigger": {"kind": "activation", "buffer_size": 64, "baseline": "first_batch"}}],
    }
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trained = distribute(archgrow.wrap(_model(False), spec, x[:1]))
        optimizer = torch.optim.SGD(trained.parameters(), lr=0.1)
        trained.train()
        for step in range(2):
            lo = step * BATCH + rank * share
            xs = x[lo : lo + share].clone()
            if step == 0:  # a batch whose loss a user would skip: a forward in training mode, no update
                if rank == 1:
                    xs[0, 0] = float("nan")
                with torch.no_grad():
                    trained(xs)
            else:
                optimizer.zero_grad()
                F.cross_entropy(trained(xs), y[lo : lo + share]).backward()
                optimizer.step()
            trained.grow_step(optimizer)
    out["nonfinite"] = {
        "count": trained.grown.nonfinite_inputs,
        "buffered": trained.grown.buffered_samples,
        "widths": trained.widths(),
        "warnings": [str(w.message) for w in seen if "NaN" in str(w.message)],
    }
    return out


def resumed(rank: int, world: int, out: str) -> dict[str, Any]:
    """Save after 3 of 6 steps (every rank calls save; rank 0 writes), load on every rank into a fresh
    model, distribute again and finish; returns the uninterrupted run and the resumed one."""
    settings = CASES["activation_buffer-select"]
    spec = {"seed": 3, "defaults": {"max_width": 24}, "rules": [{"match": "*", **{k: settings[k] for k in ("trigger", "initializer")}}]}
    x, y = _data(False)
    results = []
    path = Path(out) / "resume.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for interrupted in (False, True):
            grown = archgrow.wrap(_model(False), spec, x[:1])
            trained = distribute(grown)
            optimizer = torch.optim.Adam(trained.parameters(), lr=0.01)
            if interrupted:
                _train(trained, optimizer, x, y, range(3), rank, world)
                archgrow.save(path, trained, optimizer)
                fresh = _model(False)
                optimizer = torch.optim.Adam(fresh.parameters(), lr=0.01)
                grown = archgrow.load(path, fresh, optimizer)
                trained = distribute(grown)
                _train(trained, optimizer, x, y, range(3, STEPS), rank, world)
            else:
                _train(trained, optimizer, x, y, range(STEPS), rank, world)
            results.append(_result(grown, optimizer, trained))
    single = archgrow.load(path, _model(False))  # the checkpoint holds every rank's buffer
    return {"runs": results, "single_buffer": single.buffered_samples, "buffer": grown.buffered_samples}


def worker(rank: int, world: int, port: int, out: str, cases: list[str]) -> None:
    """One gloo rank: run every case (and the misuse checks) and save results to ``out/NAME.RANK.pt``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for case in cases:
            torch.save(run(case, rank, world), Path(out) / f"{case}.{rank}.pt")
        torch.save(checks(rank, world), Path(out) / f"checks.{rank}.pt")
        torch.save(resumed(rank, world, out), Path(out) / f"resumed.{rank}.pt")
    finally:
        dist.destroy_process_group()
