"""CIFAR-10/100 through torchvision, for users who have the files or a network.

Nothing is downloaded unless asked (``download=True``); a missing directory, missing files or a
failed download raise an error that says where the files were looked for and what to do.
Images become float tensors in [0, 1], shape ``(3, 32, 32)``, one sample at a time (the bytes stay
as torchvision read them: a quarter of the float size); the official train/test split is kept
(``limit`` takes the first samples of each half, for quick runs).
"""

from __future__ import annotations

from pathlib import Path

import torch

from archgrow.data.datasets import ByteImages
from archgrow.data.split import DataSplit
from archgrow.errors import ArchgrowError

_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def cifar(root: str | Path, name: str = "cifar10", *, download: bool = False, limit: int | None = None) -> DataSplit:
    """Load CIFAR-10 or CIFAR-100 (``name``) from ``root`` (torchvision's layout)."""
    if name not in _FOLDERS:
        raise ValueError(f"unknown CIFAR variant {name!r}; accepted: {', '.join(_FOLDERS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of samples per half, got {limit!r}")
    try:
        from torchvision import datasets
    except ImportError:
        raise ArchgrowError(f"{name} is read through torchvision, which is not installed: pip install 'archgrow[vision]'") from None
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = Path(root)
    halves = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=download)
        except RuntimeError as exc:
            raise ArchgrowError(
                f"{name} not found (or corrupted) in {root}: torchvision expects {root / _FOLDERS[name]}; copy the "
                f"official python-version files there, or pass download=True where a network is available ({exc})"
            ) from None
        except OSError as exc:
            raise ArchgrowError(f"{name}: download into {root} failed ({exc}); copy the files there instead") from None
        pixels = torch.from_numpy(ds.data[:limit]).permute(0, 3, 1, 2)
        halves.append(ByteImages(pixels, torch.tensor(ds.targets[:limit], dtype=torch.long)))
    return DataSplit(*halves, name=f"{name} official train/test" + (f", first {limit} of each" if limit else ""))
