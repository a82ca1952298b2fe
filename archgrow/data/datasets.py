"""Datasets that read one sample at a time, so a split never has to fit in memory as float tensors.

Image files are kept as the bytes they are stored as (memory-mapped where the file format allows)
and each sample is converted to float when a batch asks for it; the conversion is the same
element-wise operation the in-memory loaders applied to the whole array, so the values are equal.

Reading a batch one ``__getitem__`` at a time and stacking costs as much as a small model's
training step, so the datasets here also take a list of indices and return the whole batch
(:func:`indexable_by_batch` says which datasets do; the runner then reads a batch in one call).
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset
from torch.utils.data.dataloader import default_collate

__all__ = ["ByteImages", "MapInputs", "as_tensors", "indexable_by_batch", "labels_of"]

Index = int | list[int]


class ByteImages(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Unsigned-byte images scaled to [0, 1] float32 per sample, with int64 labels.

    ``pixels`` is ``(N, ...)`` uint8 (any tensor view: a memory-mapped file, a decompressed buffer,
    a permuted array); ``shape`` reshapes each sample (``None``: as indexed). ``targets`` follows
    torchvision's convention, so class counts need no pass over the images. A list of indices
    gives a batch.
    """

    batch_indexing = True

    def __init__(self, pixels: torch.Tensor, targets: torch.Tensor, shape: tuple[int, ...] | None = None):
        if pixels.dtype != torch.uint8 or pixels.shape[0] != targets.shape[0]:
            raise ValueError(
                f"ByteImages: pixels must be uint8 with one image per label, got {pixels.dtype} "
                f"{tuple(pixels.shape)} for {targets.shape[0]} labels"
            )
        self.pixels, self.targets, self.shape = pixels, targets, shape

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, index: Index) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pixels[index].to(torch.float32).div_(255.0)
        if self.shape is not None:
            x = x.reshape(self.shape) if x.dim() < self.pixels.dim() else x.reshape(-1, *self.shape)
        return x, self.targets[index]


class MapInputs(Dataset[tuple[Any, Any]]):
    """``dataset`` with ``transform`` applied to each input (labels unchanged), e.g. reshaping
    flat pixels to padded images. Use a picklable ``transform`` (a module-level function or a
    ``functools.partial`` of one) so worker processes started by spawn can receive it.

    ``batched``: ``transform`` maps a batch of inputs as well as one input, so a list of indices
    gives a batch where ``dataset`` does.
    """

    def __init__(self, dataset: Dataset[Any], transform: Callable[[Any], Any], *, batched: bool = False):
        self.dataset, self.transform, self.batched = dataset, transform, batched

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: Index) -> tuple[Any, Any]:
        x, y = self.dataset[index]
        return self.transform(x), y

    @property
    def batch_indexing(self) -> bool:
        return self.batched and indexable_by_batch(self.dataset)

    @property
    def targets(self) -> torch.Tensor:
        return labels_of(self.dataset)


def labels_of(dataset: Dataset[Any]) -> torch.Tensor:
    """Every label of ``dataset`` as one tensor, without reading the inputs where the dataset
    says what its labels are (a ``TensorDataset``, a ``targets`` attribute, a ``Subset`` of
    those); otherwise by reading every sample once."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets)
    return torch.as_tensor([int(dataset[i][1]) for i in range(_length(dataset))])


def indexable_by_batch(dataset: Dataset[Any]) -> bool:
    """Whether ``dataset[list_of_indices]`` returns the batch (inputs, labels) in one call: a
    ``TensorDataset``, a dataset whose ``batch_indexing`` is true, or a ``Subset`` of either."""
    if isinstance(dataset, Subset):
        return indexable_by_batch(dataset.dataset)
    return isinstance(dataset, TensorDataset) or bool(getattr(dataset, "batch_indexing", False))


def as_tensors(dataset: Dataset[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """All inputs and all labels stacked, for small data and tests (training reads batches)."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    indices = list(range(_length(dataset)))
    if indexable_by_batch(dataset):
        x, y = dataset[indices]  # type: ignore[index]
    else:
        x, y = default_collate([dataset[i] for i in indices])
    return x, y


def _length(dataset: Dataset[Any]) -> int:
    if not isinstance(dataset, Sized):
        raise TypeError(f"{type(dataset).__name__} has no len(): archgrow needs map-style datasets with a length")
    return len(dataset)
