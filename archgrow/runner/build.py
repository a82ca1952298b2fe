"""From experiment sections to objects: the data split, the model, and static baselines.

Static baselines are made by the same surgery that grows models: the seeded model is widened to
``factor`` times the initial width of the groups the strategies grow, then re-initialised with the
same scheme as the growing runs' starting network (:func:`base_init`). That works for any traced
model (torchvision ones have no width multiplier), and a baseline with factor 1 is exactly the
growing runs' initial model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from archgrow import models
from archgrow.data import DataSplit, MapInputs, cifar, digits, fashion_mnist, generated, mnist_split
from archgrow.errors import ArchgrowError
from archgrow.graph.widthgraph import WidthGraph
from archgrow.runner.experiment import (
    CifarData,
    DataConfig,
    DigitsData,
    FashionMnistData,
    GeneratedData,
    MnistData,
    ModelConfig,
)
from archgrow.surgery import grow


def load_data(cfg: DataConfig) -> DataSplit:
    """The train/test split an experiment's ``data`` section describes."""
    if isinstance(cfg, GeneratedData):
        return generated(
            cfg.n_independent,
            n_samples=cfg.n_samples,
            n_features=cfg.n_features,
            test_frac=cfg.test_frac,
            noise=cfg.noise,
            seed=cfg.seed,
        )
    if isinstance(cfg, DigitsData):
        split = digits(test_frac=cfg.test_frac, seed=cfg.seed)
        return _as_images(split, 8, None) if cfg.images else split
    if isinstance(cfg, MnistData):
        if not Path(cfg.root).is_dir():
            raise ArchgrowError(
                f"data.root: MNIST folder {cfg.root} does not exist; it must hold the IDX files "
                "(t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz], optionally the train-* pair)"
            )
        split = mnist_split(cfg.root, test_frac=cfg.test_frac, seed=cfg.seed, limit=cfg.limit)
        return _as_images(split, 28, cfg.pad_to) if cfg.images else split
    if isinstance(cfg, FashionMnistData):
        try:
            split = fashion_mnist(cfg.root, limit=cfg.limit, test_limit=cfg.test_limit)
        except FileNotFoundError as exc:
            raise ArchgrowError(f"data.root: {exc}") from None
        return _as_images(split, 28, cfg.pad_to) if cfg.images else split
    if isinstance(cfg, CifarData):
        return cifar(cfg.root, cfg.kind, download=cfg.download, limit=cfg.limit)
    raise TypeError(f"unknown data section {type(cfg).__name__}")


def _as_images(split: DataSplit, side: int, pad_to: int | None) -> DataSplit:
    image = partial(_image, side=side, pad_to=pad_to)  # picklable, for worker processes
    train, test = (MapInputs(half, image, batched=True) for half in (split.train, split.test))
    return DataSplit(train, test, split.name)


def _image(x: torch.Tensor, *, side: int, pad_to: int | None) -> torch.Tensor:
    """Flat samples (one, or a batch) as ``(1, side, side)`` images, zero-padded to ``pad_to`` (centred)."""
    x = x.reshape(*x.shape[:-1], 1, side, side)
    if pad_to is not None and pad_to > side:
        before = (pad_to - side) // 2
        after = pad_to - side - before
        x = nn.functional.pad(x, (before, after, before, after))
    return x


def base_init(cfg: ModelConfig) -> str:
    """The scheme that initialises the run's starting network and re-initialises widened baselines:
    the model section's ``init``; else ``paper`` for built-in models and ``torch`` (each layer's
    ``reset_parameters``) for a widened external model, whose own constructor's init cannot be
    replayed at another width."""
    if cfg.init is not None:
        return cfg.init
    return "paper" if cfg.name in models.MODELS else "torch"


def build_model(cfg: ModelConfig, data: DataSplit, seed: int) -> nn.Module:
    """The model, initialised from ``seed`` (the global RNG is left as it was).

    Built-in models take ``init`` (default ``paper``); other models keep their constructor's init
    unless the model section sets ``init``.
    """
    shape = data.input_shape
    builtin = models.MODELS.get(cfg.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if builtin is not None:
            options = {name: getattr(cfg, name) for name in builtin.options if getattr(cfg, name) is not None}
            kwargs = builtin.adapt(shape, data.num_classes, options)
            kwargs.update({"width_mult": cfg.width_mult, "init": base_init(cfg)})
            kwargs.update(cfg.kwargs)
            if cfg.activation is not None:
                kwargs["activation"] = cfg.activation
            return builtin.builder(**kwargs)
        kwargs = {"num_classes": data.num_classes, **cfg.kwargs}
        model = models.torchvision_model(cfg.name, **kwargs)
        return models.initialize(model, cfg.init) if cfg.init is not None else model


def scale_groups(
    graph: WidthGraph, factor: float, groups: Iterable[str], seed: int, *, init: str = "paper"
) -> dict[str, int]:
    """Widen ``groups`` to ``factor`` x their width (rounded up to each group's step), then
    re-initialise the whole model with ``init`` (see :mod:`archgrow.models.init`).

    Returns the new widths. Factors below 1 are refused: archgrow grows, it does not prune.
    """
    if factor < 1:
        raise ArchgrowError(f"static baseline factor {factor} < 1: baselines can only be wider than the initial model")
    targets: dict[str, int] = {}
    grew = False
    for name in groups:
        g = graph.group(name)
        target = max(g.width, math.ceil(round(g.width * factor, 6) / g.step) * g.step)
        if target > g.width:
            grow(graph, name, target - g.width)
            grew = True
        targets[name] = graph.group(name).width
    if not grew:
        return targets
    models.initialize(graph.model, init, seed=seed)
    return targets
