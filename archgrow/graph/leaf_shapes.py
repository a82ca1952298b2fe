"""Shape recording without the arithmetic of convolutions and linear layers.

Recording shapes runs the traced graph once on the example inputs, and on a CNN almost all of that
time is spent in convolutions whose outputs the analysis reads only the shape of.  The output
shape of a plain ``nn.Conv1d/2d/3d`` or ``nn.Linear`` follows from its input's shape and its own
settings, so :func:`layer_output` hands back zeros of that shape instead of computing it.

The values downstream are then not the model's, which is harmless exactly when no shape depends
on a value.  :func:`shapes_follow_values` finds the ops whose output shape does (``nonzero``,
``item()``...); the recorder computes every layer where the graph has one, and where, as it runs,
a tensor is made with a size given as a tensor or indexed by a boolean mask
(:func:`sized_by_a_tensor`).
An op that fails on the zeros (a Cholesky factorisation, a sampler) makes the recorder run the
whole graph again with every layer computed, so errors and shapes are those of the real forward.
Only these exact types qualify: a subclass may compute something else, and a module with hooks
would have its hooks skipped.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}

# Ops whose output shape depends on their input's values, by name (function, method or ATen op).
_VALUE_SHAPED = frozenset(
    "nonzero argwhere masked_select unique unique_consecutive bincount repeat_interleave item tolist "
    "where nonzero_static masked_scatter index_put histogramdd".split()
)


def _name(target: Any) -> str:
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    return str(name).split(".")[0]


def shapes_follow_values(graph: fx.Graph) -> bool:
    """Could a shape in ``graph`` depend on a tensor's values (so zeros would give other shapes)?

    ``where`` and ``repeat_interleave`` count, although only their one-argument and tensor-repeats
    forms do: telling them apart needs the argument values, and a false yes costs only speed.
    A boolean mask as index (``x[mask]``) is found as the recorder runs (:func:`sized_by_a_tensor`)."""
    return any(
        node.op in ("call_function", "call_method") and _name(node.target) in _VALUE_SHAPED for node in graph.nodes
    )


# Ops that make a tensor of a size given as arguments: a size passed as a tensor is a value.
_SIZED_BY_ARGUMENTS = frozenset(
    "zeros ones empty full rand randn randint arange linspace logspace eye new_zeros new_ones new_empty "
    "new_full tensor as_tensor scalar_tensor".split()
)


def _has_mask(index: Any) -> bool:
    if isinstance(index, torch.Tensor):
        return index.dtype == torch.bool
    return isinstance(index, (tuple, list)) and any(_has_mask(i) for i in index)


def sized_by_a_tensor(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], method: bool) -> bool:
    """Does this call make a tensor whose size is given by a tensor's value (``torch.arange(n)``
    with ``n`` a tensor, ``x[mask]`` with a boolean mask)?  Checked as the recorder runs, since
    only the values tell."""
    if target is operator.getitem:
        return len(args) > 1 and _has_mask(args[1])
    if _name(target) not in _SIZED_BY_ARGUMENTS:
        return False
    given = list(args[1:] if method else args) + list(kwargs.values())
    return any(isinstance(a, torch.Tensor) or (isinstance(a, (tuple, list)) and any(isinstance(e, torch.Tensor) for e in a)) for a in given)


def layer_output(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """Zeros shaped as ``module(*args)`` would return, for a plain conv or linear layer called on
    one floating-point tensor of its weight's dtype and device; None for anything else (then the
    layer must be run)."""
    kind = type(module)
    if kind is not nn.Linear and kind not in _CONVS:
        return None
    if kwargs or len(args) != 1 or module._forward_hooks or module._forward_pre_hooks:
        return None
    x = args[0]
    weight = module.weight
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dtype != weight.dtype or x.device != weight.device:
        return None
    if kind is nn.Linear:
        if x.ndim < 1 or x.shape[-1] != module.in_features:
            return None
        return x.new_zeros((*x.shape[:-1], module.out_features))
    return _conv_output(module, x, _CONVS[kind])


def _conv_output(module: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor | None:
    if x.ndim not in (n + 1, n + 2) or x.shape[-n - 1] != module.in_channels:
        return None
    padding = module.padding
    if isinstance(padding, str):
        if padding == "same":
            return x.new_zeros((*x.shape[: -n - 1], module.out_channels, *x.shape[-n:]))
        padding = (0,) * n
    spatial = []
    for size, k, s, p, d in zip(x.shape[-n:], module.kernel_size, module.stride, padding, module.dilation, strict=True):
        out = (size + 2 * p - d * (k - 1) - 1) // s + 1
        if out < 1:
            return None  # the layer raises on this input: let it
        spatial.append(out)
    return x.new_zeros((*x.shape[: -n - 1], module.out_channels, *spatial))


__all__ = ["layer_output", "shapes_follow_values", "sized_by_a_tensor"]
