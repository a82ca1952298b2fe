"""The FIFO of raw training inputs that activations are measured on (paper §2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from archgrow.errors import ArgumentError


class InputBuffer:
    """A FIFO of raw inputs, newest first, holding at most ``capacity`` samples (paper §2).

    ``capacity=None`` keeps the latest batch only (what ``source: step`` groups re-measure on).
    Stores detached copies, so the training graph is never retained and memory is bounded.
    """

    def __init__(self, capacity: int | None):
        if capacity is not None and capacity < 1:
            raise ArgumentError(f"buffer capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._chunks: list[tuple[torch.Tensor, ...]] = []
        self.size = 0

    def push(self, inputs: Sequence[torch.Tensor]) -> int:
        """Buffer the samples of ``inputs`` whose values are all finite; return how many were not.

        One NaN row would otherwise sit in every measurement until it leaves the FIFO: it sets a
        baseline wrong or depresses later scores (an SVD of rows with NaN is meaningless)."""
        n = inputs[0].shape[0]
        if any(t.shape[0] != n for t in inputs):
            raise ArgumentError("all buffered inputs must share the batch dimension")
        finite = torch.ones(n, dtype=torch.bool, device=inputs[0].device)
        for t in inputs:
            if (t.is_floating_point() or t.is_complex()) and t.numel():
                finite &= torch.isfinite(t.detach().reshape(n, -1)).all(dim=1).to(finite.device)
        dropped = n - int(finite.sum())
        if dropped:
            inputs = [t[finite.to(t.device)] for t in inputs]
            if dropped == n:
                return dropped
        batch = tuple(t.detach()[: self.capacity].clone() for t in inputs)
        n = batch[0].shape[0]
        if self.capacity is None:
            self._chunks, self.size = [batch], n
            return dropped
        self._chunks.insert(0, batch)
        self.size += n
        while self.size > self.capacity:
            last = self._chunks[-1]
            excess = self.size - self.capacity
            if last[0].shape[0] <= excess:
                self._chunks.pop()
                self.size -= last[0].shape[0]
            else:
                self._chunks[-1] = tuple(t[: t.shape[0] - excess] for t in last)
                self.size -= excess
        return dropped

    def shard(self, rank: int, world_size: int) -> None:
        """Keep this rank's share of the buffer: capacity and contents split into ``world_size``
        contiguous parts, so the parts gathered in rank order are the buffer again."""
        if self.capacity is not None:
            self.capacity = -(-self.capacity // world_size)
        inputs = self.tensors()
        if not inputs:
            return
        per = -(-inputs[0].shape[0] // world_size)
        part = tuple(t[rank * per : (rank + 1) * per] for t in inputs)
        self._chunks = [part] if part[0].shape[0] else []
        self.size = part[0].shape[0]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        if not self._chunks:
            return ()
        return tuple(torch.cat(parts) for parts in zip(*self._chunks, strict=True))

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "inputs": list(self.tensors())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = state["capacity"]
        inputs = tuple(state["inputs"])
        self._chunks = [inputs] if inputs else []
        self.size = inputs[0].shape[0] if inputs else 0


__all__ = ["InputBuffer"]
