"""Base initialisation of a network's weights: the paper's (Xavier-uniform, zero bias) or PyTorch's.

The initialisation is part of the experiment, not a detail: the activation trigger's baseline
phi(f_0) counts singular values above an *absolute* epsilon, so it depends on the scale of the
activations at initialisation.  With PyTorch's default U(+-1/sqrt(fan_in)) weights and non-zero
biases, the second hidden layer of the MNIST MLP starts at phi(f_0) 0.69-0.73 instead of 0.98-1.0
under Xavier (``experiments/dead_units.py --data mnist --steps 0 --init torch``), every new unit
then adds ~1 to the count but only ~0.7 to the threshold, and growth runs to the cap
(docs/results.md).  The paper's Table 2 and the authors' code use Xavier-uniform
weights and zero biases; so do the built-in models by default.

Static baselines are widened by surgery and then re-initialised with the same scheme as the
growing runs' starting network (:func:`initialize`), so Small static is exactly that network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from archgrow.errors import ArgumentError

InitName = Literal["paper", "torch", "kaiming"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def paper_init(model: nn.Module) -> None:
    """Xavier-uniform weights for every ``Linear`` and ``ConvNd``, zero biases; norm layers at
    identity (weight 1, bias 0, running statistics reset)."""
    _weights_and_zero_biases(model, nn.init.xavier_uniform_)


def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal weights for a ReLU network (He et al.: variance 2 / fan_in), zero biases;
    not the paper's, offered because deep plain networks (VGG-11 without batch norm) learn much
    faster from it, which the results page shows next to the paper's init."""
    _weights_and_zero_biases(model, lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"))


def _weights_and_zero_biases(model: nn.Module, fill: Callable[[torch.Tensor], object]) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                fill(module.weight)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, _NORMS):
                _reset(module)


def torch_init(model: nn.Module) -> None:
    """Every layer's own ``reset_parameters`` (PyTorch's defaults: U(+-1/sqrt(fan_in)) weights and
    biases for Linear and ConvNd)."""
    for module in model.modules():
        _reset(module)


def _reset(module: nn.Module) -> None:
    reset = getattr(module, "reset_parameters", None)
    if callable(reset) and any(True for _ in module.parameters(recurse=False)):
        reset()
    running = getattr(module, "reset_running_stats", None)
    if callable(running):
        running()


INITS: dict[str, Callable[[nn.Module], None]] = {"paper": paper_init, "torch": torch_init, "kaiming": kaiming_init}


def initialize(model: nn.Module, scheme: str, *, seed: int | None = None) -> nn.Module:
    """Re-initialise ``model`` in place with ``scheme`` (``paper``, ``torch`` or ``kaiming``) and return it.

    With ``seed`` the draws come from a forked RNG seeded with it, leaving the global RNG as it was.
    """
    try:
        fn = INITS[scheme]
    except KeyError:
        raise ArgumentError(f"unknown init {scheme!r}; accepted: {', '.join(repr(k) for k in INITS)}") from None
    if seed is None:
        fn(model)
        return model
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"]
    with torch.random.fork_rng(devices=sorted({d.index or 0 for d in devices})):
        torch.manual_seed(seed)
        fn(model)
    return model


__all__ = ["INITS", "InitName", "initialize", "kaiming_init", "paper_init", "torch_init"]
