"""Fashion-MNIST (Xiao et al., 2017) from its IDX files: the paper's MNIST setup on a harder task.

MNIST-format files (60,000 train and 10,000 test 28x28 images, 10 classes), so the MNIST reader is
reused. Debian's ``dataset-fashion-mnist`` package installs them in :data:`DEBIAN_ROOT`, the default
``root``; any folder holding ``train-*`` and ``t10k-*`` IDX files (gzipped or not) works. Unlike
:func:`archgrow.data.mnist_split`, the official split is kept: train on the 60,000, test on the
10,000.
"""

from __future__ import annotations

import os
from pathlib import Path

from archgrow.data.mnist import has_split, read_idx_split
from archgrow.data.split import DataSplit

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def fashion_mnist(
    root: str | os.PathLike = DEBIAN_ROOT, *, limit: int | None = None, test_limit: int | None = None
) -> DataSplit:
    """The official Fashion-MNIST split as flat 784 features in [0, 1] (no normalisation), converted
    per sample as batches read them (:func:`archgrow.data.mnist.read_idx_split`).

    ``limit`` / ``test_limit`` keep the first images of each split (the files' own order), for
    reduced runs. A missing folder says how to get the files.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST directory {root} does not exist: install Debian's package "
            f"(apt-get install dataset-fashion-mnist, files in {DEBIAN_ROOT}) or point root at a folder with "
            "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and "
            "t10k-labels-idx1-ubyte[.gz]"
        )
    common = {"flatten": True, "dataset": "Fashion-MNIST", "caller": "fashion_mnist()"}
    train = read_idx_split(root, split="train", limit=limit, **common)
    test = read_idx_split(root, split="test", limit=test_limit, **common)
    return DataSplit(train, test, f"fashion_mnist(official split, {len(train)} train / {len(test)} test)")


def available(root: str | os.PathLike = DEBIAN_ROOT) -> bool:
    """Whether ``root`` holds all four IDX files (for tests and examples that skip without them)."""
    return has_split(root, "train") and has_split(root, "test")


__all__ = ["CLASSES", "DEBIAN_ROOT", "available", "fashion_mnist"]
