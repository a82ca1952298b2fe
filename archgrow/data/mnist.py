"""MNIST read straight from the official IDX files.

Parsing the IDX format here, rather than going through torchvision, keeps the data path free of
downloads and of optional dependencies, so tests and experiments run offline from a directory of
the original files (gzipped or not). Uncompressed image files are memory-mapped, so a split is
read page by page as batches need it; gzipped ones are decompressed once and kept as bytes.
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import torch

from archgrow.data.datasets import ByteImages, as_tensors
from archgrow.data.split import DataSplit, permutation_split

__all__ = ["has_split", "mnist", "mnist_split", "read_idx_split"]

_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_SIDE = 28


def _find(root: Path, stem: str, dataset: str = "MNIST") -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{dataset} file {stem}.gz (or {stem}) not found in {root}")


def has_split(root: str | os.PathLike, split: str) -> bool:
    """Whether ``root`` holds the images and labels IDX files of ``split`` (gzipped or not)."""
    root = Path(root)
    stems = [f"{_PREFIX[split]}-{kind}" for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    return all((root / f"{s}.gz").is_file() or (root / s).is_file() for s in stems)


def _read_idx(path: Path, magic: int) -> tuple[list[int], torch.Tensor]:
    """Return the dimensions and the flat uint8 payload, after checking the header against the file size.

    An uncompressed payload is a memory-mapped view of the file (nothing is read until used).
    """
    gzipped = path.suffix == ".gz"
    try:
        if gzipped:
            raw = gzip.decompress(path.read_bytes())
            head, total = raw[: 4 + 4 * 3], len(raw)
        else:
            with path.open("rb") as f:
                head = f.read(4 + 4 * 3)
            total = path.stat().st_size
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot be read as {'gzip' if gzipped else 'IDX'} ({err})") from err
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if total < header:
        raise ValueError(f"{path}: {total} bytes is shorter than the {header}-byte IDX header expected")
    found = int.from_bytes(head[:4], "big")
    if found != magic:
        raise ValueError(
            f"{path}: IDX magic number 0x{found:08x}, expected 0x{magic:08x} (unsigned bytes, {ndim} dimension(s))"
        )
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    size = math.prod(dims)
    if total != header + size:
        raise ValueError(
            f"{path}: header declares dimensions {dims} ({header + size} bytes in all) but the file holds {total} bytes"
        )
    if size == 0:  # torch.frombuffer rejects an empty buffer
        return dims, torch.empty(0, dtype=torch.uint8)
    if gzipped:
        return dims, torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8)
    return dims, torch.from_file(str(path), shared=False, size=total, dtype=torch.uint8)[header:]


def mnist(
    root: str | os.PathLike, *, split: str = "test", flatten: bool = True, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one official MNIST split from ``root`` as ``(images, labels)``.

    Pixels are scaled to [0, 1] float32 without mean/std normalisation, as the NORTH* authors' code
    does, so results stay comparable with theirs. ``flatten`` gives ``(N, 784)`` for MLPs, otherwise
    ``(N, 1, 28, 28)``; labels are int64. ``limit`` keeps the first ``limit`` samples, for fast tests.
    For data that need not fit in memory, :func:`read_idx_split` gives the same samples as a Dataset.
    """
    return as_tensors(read_idx_split(root, split=split, flatten=flatten, limit=limit, dataset="MNIST", caller="mnist()"))


def read_idx_split(
    root: str | os.PathLike, *, split: str, flatten: bool, limit: int | None, dataset: str, caller: str
) -> ByteImages:
    """One split of an MNIST-format dataset (28x28 unsigned-byte images, labels 0..9) from IDX files
    named ``train-*`` / ``t10k-*``, as MNIST and Fashion-MNIST ship them: samples are ``(784,)``
    (``flatten``) or ``(1, 28, 28)`` float32 in [0, 1], converted as they are read."""
    if split not in _PREFIX:
        raise ValueError(f"{caller}: split={split!r} is not accepted; it must be one of {sorted(_PREFIX)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"{caller}: limit={limit!r} is not accepted; it must be None or an integer >= 1")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset} directory {root} does not exist")
    prefix = _PREFIX[split]
    images_path = _find(root, f"{prefix}-images-idx3-ubyte", dataset)
    labels_path = _find(root, f"{prefix}-labels-idx1-ubyte", dataset)

    dims, pixels = _read_idx(images_path, _IMAGES_MAGIC)
    if dims[1:] != [_SIDE, _SIDE]:
        raise ValueError(f"{images_path}: images are {dims[1]}x{dims[2]}, expected {_SIDE}x{_SIDE}")
    (n_labels,), labels = _read_idx(labels_path, _LABELS_MAGIC)
    if n_labels != dims[0]:
        raise ValueError(f"{labels_path}: {n_labels} labels but {images_path} holds {dims[0]} images")
    if n_labels and int(labels.max()) > 9:
        raise ValueError(f"{labels_path}: label {int(labels.max())} found, expected classes 0..9")

    n = dims[0] if limit is None else min(limit, dims[0])
    shape = (_SIDE * _SIDE,) if flatten else (1, _SIDE, _SIDE)
    return ByteImages(pixels[: n * _SIDE * _SIDE].reshape(n, _SIDE, _SIDE), labels[:n].long(), shape)


def mnist_split(
    root: str | os.PathLike, *, test_frac: float = 0.2, seed: int = 0, limit: int | None = None
) -> DataSplit:
    """Split one MNIST split into train and test halves with a seeded permutation (flattened images).

    The official train split is used when its files are in ``root``, otherwise the official test
    split. With only the test split available (as in the offline environment), both halves come from
    those 10,000 test images, so results are not comparable to numbers on the official test set; the
    split's name records which source was used. ``limit`` is applied before shuffling.
    """
    root = Path(root)
    source = "train" if has_split(root, "train") else "test"
    images = read_idx_split(root, split=source, flatten=True, limit=limit, dataset="MNIST", caller="mnist_split()")
    name = f"mnist({source} split, {len(images)} samples, test_frac={test_frac}, seed={seed})"
    return permutation_split(images, test_frac=test_frac, seed=seed, name=name)
