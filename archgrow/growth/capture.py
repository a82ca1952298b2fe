"""``source: step``: probe values taken from the training forward itself, with no extra forward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from archgrow.growth.compiled import eager
from archgrow.growth.hooks import HookSet
from archgrow.growth.measure import Measurement, measuring, replay
from archgrow.growth.probes import Probe


class StepCapture:
    """Probe values taken from the training forward itself (``source: step``): no extra forward.

    Forward hooks keep each probed producer's input and (a copy of its) output, and the probe's
    value where its chain ends in a hookable module (see :func:`_hookable_end`); otherwise the
    chain is replayed on the output: under ``no_grad`` alone when it is stateless (element-wise
    functions, :func:`_stateless`), else in eval mode, as :func:`measure` does.  Values come from the
    latest training forward (pre-update weights, the step's batch); only armed steps keep any.
    The producer's input needs no copy: autograd saved it for the weight gradient, so an in-place
    edit would have failed the backward.  Its output may legally be edited in place (an
    ``inplace=True`` ReLU), hence the copy.
    """

    def __init__(self, model: nn.Module, probes: Sequence[Probe], hooks: HookSet):
        self.model = model
        self.probes = list(probes)
        self.armed = False
        self._values: dict[tuple[str, str], tuple[torch.Tensor | None, torch.Tensor]] = {}
        for name in sorted({p.producer for p in self.probes}):
            hooks.forward(model.get_submodule(name), self._hook("producer", name))
        for name in sorted({p.end_module for p in self.probes if p.end_module}):
            hooks.forward(model.get_submodule(name), self._hook("end", name))

    def _hook(self, role: str, name: str):
        def fn(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            key = (role, name)
            if not self.armed or not module.training or not torch.is_grad_enabled() or key in self._values:
                return
            if role == "producer":
                self._values[key] = (args[0].detach() if args else None, output.detach().clone())
            else:
                self._values[key] = (None, output.detach())

        return fn

    def begin(self) -> None:
        """A new training forward: forget the last one's values."""
        self._values = {}

    def measurement(self, probe: Probe) -> Measurement | None:
        """The probe's values from the latest armed training forward, or ``None`` if it did not run."""
        produced = self._values.get(("producer", probe.producer))
        if produced is None:
            return None
        x, z = produced
        end = self._values.get(("end", probe.end_module)) if probe.end_module else None
        if end is not None:
            return Measurement(x, z, end[1])
        if probe.stateless:  # element-wise functions only: no need to switch every module's mode
            with torch.no_grad(), eager():
                return Measurement(x, z, replay(self.model, probe, z))
        with measuring(self.model):
            return Measurement(x, z, replay(self.model, probe, z))


__all__ = ["StepCapture"]
