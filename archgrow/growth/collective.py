"""What a growth decision reads from other processes, so every rank decides the same.

Under data parallelism each rank sees its own samples, but a width decision must be one decision:
ranks that grow differently die on shape mismatches, or worse, train on apart.  Everything a
decision depends on is therefore combined across ranks before anything is decided:

- activation measurements (the rows a probe produced on a rank's buffer or batch) are gathered,
  so every rank scores the union of all ranks' samples.  The triggers' metrics depend on the rows
  only through their Gram matrix, so this equals all-reducing the Grams; gathering also gives
  the initializers that need the rows themselves (NORTH-Select's bordered Grams, NORTH-Pre's layer
  inputs) the same values everywhere;
- the auxiliary gradient ``G`` and candidate losses and gradients are averaged, as DDP averages
  parameter gradients, so two ranks with batch ``B`` see what one process with batch ``2B`` sees;
- the decisions themselves, and the parameters after growth, are compared: a rank that would
  continue apart raises :class:`DivergenceError` instead.

:class:`Collective` is the single-process case (every operation is the identity); a
:class:`ProcessGroupCollective` runs the same operations over a ``torch.distributed`` process
group.  Every rank must call the same operations in the same order, which holds because every
input to the control flow around them is itself combined first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from archgrow.errors import ArchgrowError


class DivergenceError(ArchgrowError):
    """Ranks reached different growth decisions or parameters: they must never continue apart."""


class Collective:
    """One process: nothing to combine."""

    rank = 0
    world_size = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's rows (dim 0) concatenated in rank order."""
        return t

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of ``t`` over ranks (a new tensor; ``t`` is left alone)."""
        return t

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank."""
        return flag

    def check_same(self, what: str, labels: Sequence[str], values: Sequence[float], *, rtol: float = 0.0) -> None:
        """Raise :class:`DivergenceError` if ``values`` (one per label) differ between ranks."""


class ProcessGroupCollective(Collective):
    """The operations above over a ``torch.distributed`` process group (default: the world)."""

    def __init__(self, group: dist.ProcessGroup | None = None):
        if not dist.is_available() or not dist.is_initialized():
            raise ArchgrowError(
                "torch.distributed is not initialized: call torch.distributed.init_process_group() first "
                "(torchrun sets the environment it reads), then archgrow.distribute(grown)"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        # nccl moves CUDA tensors only; gloo takes CPU tensors (and CUDA ones for these operations)
        self._nccl = dist.get_backend(group) == "nccl"

    def _on_backend(self, t: torch.Tensor) -> torch.Tensor:
        if self._nccl and t.device.type != "cuda":
            return t.to(torch.device("cuda", torch.cuda.current_device()))
        return t

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        local = self._on_backend(t.detach().contiguous())
        counts = [torch.zeros(1, dtype=torch.int64, device=local.device) for _ in range(self.world_size)]
        dist.all_gather(counts, torch.tensor([local.shape[0]], dtype=torch.int64, device=local.device), group=self.group)
        sizes = [int(c.item()) for c in counts]
        most = max(sizes)
        if local.shape[0] < most:  # all_gather moves equal shapes: pad, then cut each part back
            local = torch.cat([local, local.new_zeros(most - local.shape[0], *local.shape[1:])])
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local, group=self.group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).to(t.device)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        total = self._on_backend(t.detach().clone())
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group)
        return (total / self.world_size).to(t.device)

    def all_true(self, flag: bool) -> bool:
        value = self._on_backend(torch.tensor([1 if flag else 0], dtype=torch.int64))
        dist.all_reduce(value, op=dist.ReduceOp.MIN, group=self.group)
        return bool(value.item())

    def check_same(self, what: str, labels: Sequence[str], values: Sequence[float], *, rtol: float = 0.0) -> None:
        mine = self._on_backend(torch.tensor([float(v) for v in values], dtype=torch.float64))
        everyone = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(everyone, mine, group=self.group)
        table = torch.stack(everyone).cpu()
        reference = table[0]
        apart = (table - reference).abs() > rtol * reference.abs()
        if not apart.any():
            return
        columns = apart.any(dim=0).nonzero().flatten().tolist()
        lines = [
            f"  {labels[c]}: " + ", ".join(f"rank {r}: {table[r, c].item():.10g}" for r in range(self.world_size))
            for c in columns
        ]
        raise DivergenceError(
            f"rank {self.rank}: ranks disagree on {what}; they must not continue apart:\n" + "\n".join(lines) + "\n"
            "every rank must run the same spec, model and seed, call grow_step after every optimizer step, and "
            "train through archgrow.distribute(grown), not DDP(grown)"
        )


__all__ = ["Collective", "DivergenceError", "ProcessGroupCollective"]
