"""The order in which a run reads its training set: seeded, the same in one process or several.

A run's batches are part of its result: the published runs read each epoch's batches from one
generator seeded with the run's seed.  Under torchrun each rank must read its share of those same
global batches, so that N processes with batch ``B / N`` each train on what one process with
batch ``B`` does (the ranks' shares together are the batch; only the order inside it differs).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler


class SeededShuffle(Sampler[int]):
    """A fresh permutation of the ``n`` indices each epoch, all drawn from one generator seeded once.

    Not torch's ``RandomSampler``: that draws one permutation more than it yields each epoch, so
    from the second epoch on its batches would differ from those of the published runs.
    """

    def __init__(self, n: int, seed: int):
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator).tolist())

    def __len__(self) -> int:
        return self.n


class ShardedShuffle(DistributedSampler):
    """This rank's share of :class:`SeededShuffle`'s order: every ``world_size``-th index from its
    rank's, so that consecutive local batches of ``B / world_size`` together make the global batch
    of ``B`` one process would read.  As ``DistributedSampler``, the order is padded with its first
    indices to a multiple of ``world_size`` (every rank takes as many steps)."""

    def __init__(self, data: Dataset[Any], seed: int, rank: int, world_size: int):
        super().__init__(data, num_replicas=world_size, rank=rank, shuffle=False, seed=seed)
        self.order = SeededShuffle(len(data), seed)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        indices = list(self.order)  # the next epoch's permutation (every rank draws the same)
        indices += indices[: self.total_size - len(indices)]
        return iter(indices[self.rank : self.total_size : self.num_replicas])


__all__ = ["SeededShuffle", "ShardedShuffle"]
