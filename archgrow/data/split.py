"""The train/test pair every dataset loader returns.

One small frozen container instead of loose 4-tuples, so experiments cannot swap the train and test
halves by position and the split carries a name that records how it was made.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset


@dataclass(frozen=True)
class DataSplit:
    """Features and integer labels of a train and a test half, plus a name saying how they were split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str

    def __post_init__(self) -> None:
        # A length mismatch would otherwise only surface inside a DataLoader, far from its cause.
        for half, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"DataSplit {self.name!r}: x_{half} has {x.shape[0]} samples but y_{half} has {y.shape[0]}; "
                    "features and labels must have the same first dimension"
                )

    @property
    def n_features(self) -> int:
        """Input width of a model for this data (the product of the non-batch dimensions)."""
        return int(torch.tensor(self.x_train.shape[1:]).prod().item())

    @property
    def num_classes(self) -> int:
        """Output width of a classifier for this data, assuming labels 0..K-1."""
        return int(max(int(self.y_train.max()), int(self.y_test.max()))) + 1

    def train_dataset(self) -> TensorDataset:
        return TensorDataset(self.x_train, self.y_train)

    def test_dataset(self) -> TensorDataset:
        return TensorDataset(self.x_test, self.y_test)


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


def permutation_split(x: torch.Tensor, y: torch.Tensor, *, test_frac: float, seed: int, name: str) -> DataSplit:
    """Shuffle with a private seeded generator, then cut: reproducible without touching the global RNG."""
    n_test = n_test_samples(x.shape[0], test_frac, what=name)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=generator)
    test_idx, train_idx = order[:n_test], order[n_test:]
    return DataSplit(x[train_idx], y[train_idx], x[test_idx], y[test_idx], name)
