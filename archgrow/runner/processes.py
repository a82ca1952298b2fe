"""``archgrow run --nproc N``: the runner's processes, launched by torchrun and joined with DDP.

The launcher is ``torch.distributed.run`` (torchrun) itself, not a scheduler of archgrow's own:
``archgrow run FILE --nproc N`` calls it with ``-m archgrow run FILE`` as every worker's command,
passing multi-node options through.  Each worker finds torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...), joins the default process group (gloo on the
CPU, nccl on CUDA, one GPU per local rank) and trains its share of every batch; rank 0 alone
writes the run files, so the directory holds one run's results.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from archgrow.errors import ArchgrowError
from archgrow.runner.sampling import ShardedShuffle

# torchrun's options that `archgrow run` passes through: (its flag, archgrow's argparse dest)
LAUNCH_OPTIONS = (
    ("--nnodes", "nnodes"),
    ("--node-rank", "node_rank"),
    ("--master-addr", "master_addr"),
    ("--master-port", "master_port"),
    ("--rdzv-backend", "rdzv_backend"),
    ("--rdzv-endpoint", "rdzv_endpoint"),
    ("--rdzv-id", "rdzv_id"),
)


@dataclass(frozen=True)
class Processes:
    """This worker's place among the run's processes."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0

    def sampler(self, data: Dataset[Any], seed: int) -> Sampler[int]:
        """This rank's share of each global batch a single process would read (a DistributedSampler
        over the run's seeded order, see :mod:`archgrow.runner.sampling`)."""
        return ShardedShuffle(data, seed, self.rank, self.world_size)

    def strided(self, order: Sampler[int]) -> Sampler[int]:
        """Every ``world_size``-th index of ``order``, from this rank's: the ranks' shares of a draw
        together are the draw (the activation buffer's prefill)."""
        return _Strided(order, self.rank, self.world_size)

    def ddp_options(self) -> dict[str, Any]:
        return {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}

    def local_batch(self, batch_size: int) -> int:
        """The per-rank batch: the experiment's ``batch_size`` is the global one (one run's results)."""
        if batch_size % self.world_size:
            raise ArchgrowError(
                f"train.batch_size: {batch_size} is the global batch and must divide among {self.world_size} "
                f"processes; use a multiple of {self.world_size}"
            )
        return batch_size // self.world_size

    def sum(self, value: float) -> float:
        """``value`` summed over ranks."""
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t.item())


class _Strided(Sampler[int]):
    def __init__(self, order: Sampler[int], rank: int, world_size: int):
        self.order, self.rank, self.world_size = order, rank, world_size

    def __iter__(self):
        return (i for k, i in enumerate(self.order) if k % self.world_size == self.rank)

    def __len__(self) -> int:
        return len(range(self.rank, len(self.order), self.world_size))  # type: ignore[arg-type]


def in_torchrun_worker() -> bool:
    """This process was started by torchrun (or another launcher setting its environment)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def join(device: str) -> Processes | None:
    """Join the process group torchrun's environment describes (None for a single process).

    ``device`` is the experiment's (cpu, cuda, auto): nccl and the local rank's GPU on CUDA, gloo
    on the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise ArchgrowError(f"device: {device!r} was asked for but CUDA is not available on this node")
        if local >= torch.cuda.device_count():
            raise ArchgrowError(
                f"rank {os.environ.get('RANK')}: local rank {local} has no GPU ({torch.cuda.device_count()} here); "
                "use --nproc up to the node's GPU count, or device: cpu"
            )
        where = torch.device("cuda", local)
        torch.cuda.set_device(where)
    else:
        where = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), local, where)


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launch(worker_args: Sequence[str], nproc: int, options: dict[str, Any]) -> int:
    """Run ``archgrow <worker_args>`` in ``nproc`` processes per node through torchrun.

    ``options`` maps :data:`LAUNCH_OPTIONS` dests to values (None: torchrun's default).  A single
    node with no rendezvous given uses ``--standalone`` (a free local port).
    """
    from torch.distributed import run as torchrun

    argv = ["--nproc-per-node", str(nproc)]
    given = {dest: value for _, dest in LAUNCH_OPTIONS if (value := options.get(dest)) is not None}
    for flag, dest in LAUNCH_OPTIONS:
        if dest in given:
            argv += [flag, str(given[dest])]
    if not given or (set(given) == {"nnodes"} and str(given["nnodes"]) == "1"):
        argv.append("--standalone")
    argv += ["--module", "archgrow", *worker_args]
    try:
        torchrun.main(argv)
    except Exception as exc:  # torchrun's ChildFailedError lists every failed rank and its error file
        raise ArchgrowError(f"a worker process failed under torchrun: {exc}") from None
    return 0


__all__ = ["LAUNCH_OPTIONS", "Processes", "in_torchrun_worker", "join", "launch", "leave"]
