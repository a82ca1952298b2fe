"""The train/test pair every dataset loader returns.

One small frozen container instead of loose 4-tuples, so experiments cannot swap the train and test
halves by position and the split carries a name that records how it was made. The halves are
``torch.utils.data.Dataset``s rather than tensors so that data larger than memory can be trained
from (a ``DataLoader`` reads the batches); in-memory data is a ``TensorDataset``
(:meth:`DataSplit.from_tensors`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from archgrow.data.datasets import as_tensors, labels_of


@dataclass(frozen=True)
class DataSplit:
    """A train and a test dataset of (input, integer label) samples, plus a name saying how they were split.

    ``x_train``, ``y_train``, ``x_test`` and ``y_test`` stack a whole half into tensors on first use,
    for small data, tests and scripts written against the tensors; the runner never calls them.
    """

    train: Dataset[Any]
    test: Dataset[Any]
    name: str

    def __post_init__(self) -> None:
        # A bad half would otherwise only surface inside a DataLoader, far from its cause.
        for half in ("train", "test"):
            dataset = getattr(self, half)
            if isinstance(dataset, torch.Tensor) or not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
                raise TypeError(
                    f"DataSplit {self.name!r}: {half} is a {type(dataset).__name__}; it must be a map-style "
                    "torch.utils.data.Dataset (with __getitem__ and __len__); use DataSplit.from_tensors for tensors"
                )
            if len(dataset) == 0:
                raise ValueError(f"DataSplit {self.name!r}: the {half} half is empty; both halves need samples")

    @classmethod
    def from_tensors(
        cls, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, name: str
    ) -> DataSplit:
        """In-memory halves: features and labels with the same first dimension."""
        for half, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"DataSplit {name!r}: x_{half} has {x.shape[0]} samples but y_{half} has {y.shape[0]}; "
                    "features and labels must have the same first dimension"
                )
        return cls(TensorDataset(x_train, y_train), TensorDataset(x_test, y_test), name)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input (read from the first training sample)."""
        return tuple(torch.as_tensor(self.train[0][0]).shape)

    def example(self) -> torch.Tensor:
        """The first training input with a batch dimension of 1: what tracing a model needs."""
        return torch.as_tensor(self.train[0][0]).unsqueeze(0)

    @property
    def n_features(self) -> int:
        """Input width of a model for this data (the product of the non-batch dimensions)."""
        return math.prod(self.input_shape)

    @cached_property
    def num_classes(self) -> int:
        """Output width of a classifier for this data, assuming labels 0..K-1 (see :func:`labels_of`
        for what reading the labels costs)."""
        return int(max(int(labels_of(self.train).max()), int(labels_of(self.test).max()))) + 1

    def train_dataset(self) -> Dataset[Any]:
        return self.train

    def test_dataset(self) -> Dataset[Any]:
        return self.test

    @cached_property
    def _train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return as_tensors(self.train)

    @cached_property
    def _test_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return as_tensors(self.test)

    @property
    def x_train(self) -> torch.Tensor:
        return self._train_tensors[0]

    @property
    def y_train(self) -> torch.Tensor:
        return self._train_tensors[1]

    @property
    def x_test(self) -> torch.Tensor:
        return self._test_tensors[0]

    @property
    def y_test(self) -> torch.Tensor:
        return self._test_tensors[1]


def n_test_samples(n_samples: int, test_frac: float, *, what: str) -> int:
    """Size of the test half, checked so neither half is empty (an empty half breaks training or evaluation silently)."""
    if isinstance(test_frac, bool) or not isinstance(test_frac, (int, float)) or not 0.0 < test_frac < 1.0:
        raise ValueError(f"{what}: test_frac={test_frac!r} is not accepted; it must be a number with 0 < test_frac < 1")
    n_test = round(n_samples * test_frac)
    if not 1 <= n_test <= n_samples - 1:
        raise ValueError(
            f"{what}: test_frac={test_frac!r} of {n_samples} samples gives {n_test} test and {n_samples - n_test} "
            "train samples; both halves must hold at least one sample"
        )
    return n_test


def permutation_split(dataset: Dataset[Any], *, test_frac: float, seed: int, name: str) -> DataSplit:
    """Shuffle with a private seeded generator, then cut: reproducible without touching the global RNG.

    The halves are views (``Subset``) of ``dataset``, so nothing is copied or read here.
    """
    n = len(dataset)  # type: ignore[arg-type]
    n_test = n_test_samples(n, test_frac, what=name)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).tolist()
    return DataSplit(Subset(dataset, order[n_test:]), Subset(dataset, order[:n_test]), name)
