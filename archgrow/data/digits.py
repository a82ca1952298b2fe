"""scikit-learn's bundled 8x8 handwritten digits.

A real (not generated) ten-class image task that ships inside scikit-learn, so it needs no download
and trains in seconds on a CPU: a quick stand-in for MNIST where MNIST files are absent.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from archgrow.data.split import DataSplit, permutation_split

__all__ = ["digits"]


def digits(*, test_frac: float = 0.2, seed: int = 0) -> DataSplit:
    """Load the 1,797 digits as 64 features in [0, 1] (raw 0..16 counts divided by 16), split by a seeded permutation."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "digits() needs scikit-learn, which is not installed; run `pip install scikit-learn` "
            "(or `pip install archgrow[data]`)"
        ) from err
    features, labels = load_digits(return_X_y=True)
    x = torch.as_tensor(features, dtype=torch.float32) / 16.0
    y = torch.as_tensor(labels, dtype=torch.long)
    name = f"digits(sklearn 8x8, test_frac={test_frac}, seed={seed})"
    return permutation_split(TensorDataset(x, y), test_frac=test_frac, seed=seed, name=name)
