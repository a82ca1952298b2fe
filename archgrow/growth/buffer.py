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

    def push(self, inputs: Sequence[torch.Tensor]) -> None:
        batch = tuple(t.detach()[: self.capacity].clone() for t in inputs)
        n = batch[0].shape[0]
        if any(t.shape[0] != n for t in batch):
            raise ArgumentError("all buffered inputs must share the batch dimension")
        if self.capacity is None:
            self._chunks, self.size = [batch], n
            return
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
