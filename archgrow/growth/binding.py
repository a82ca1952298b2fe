"""A spec bound to one width group: the resolved settings and everything a trigger or initializer reads.

Binding happens once, in :func:`archgrow.wrap`; model-dependent defaults (``gamma``, caps given
as multiples, candidate counts) are resolved here so the rest of the code sees plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from archgrow.errors import ArchgrowError
from archgrow.graph.widthgraph import WidthGroup
from archgrow.growth.auxgrad import Bridge
from archgrow.growth.measure import Measurement
from archgrow.growth.probes import Probe
from archgrow.spec.schema import Settings

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class GroupBinding:
    """One growing group, bound once and never changed: its settings, where they came from, what
    it is measured with, and its trigger and initializer (which own their running state).

    Rule constructors receive the binding before their own rule objects are set; the grower then
    binds the final one with :func:`dataclasses.replace`.
    """

    group: WidthGroup
    settings: Settings
    origin: dict[str, str]  # settings field -> "rules[i]" or "defaults", for error messages
    initial_width: int
    max_width: int
    producer: nn.Module  # the first producer (measured, and given the initializer's fan-in)
    producer_name: str
    conv_model: bool  # the model has convolutions: the paper's CNN defaults apply
    probe: Probe | None = None
    bridge: Bridge | None = None  # auxiliary gradient, for T_grad and the gradient-based initializers
    trigger: Any = None  # a rule object from archgrow.triggers
    initializer: Any = None  # a rule object from archgrow.initializers

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def width(self) -> int:
        return self.group.width

    @property
    def conv(self) -> bool:
        """The group's channels are conv channels (its measured tensor has positions)."""
        return isinstance(self.producer, nn.modules.conv._ConvNd)


class InitContext:
    """What an initializer may use: the seeded generator, (lazily re-measured) activations, and
    the step's loss for initializers that try candidates on the model (Firefly, conv NeST)."""

    def __init__(
        self,
        model: nn.Module,
        generator: torch.Generator,
        measure_fn: Any,
        loss_fn: Any = None,
        trial_fn: Any = None,
        mean_fn: Any = None,
    ):
        self.model = model
        self.generator = generator
        self._measure_fn = measure_fn
        self._loss_fn = loss_fn
        self._trial_fn = trial_fn
        self._mean_fn = mean_fn

    def across_ranks(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of ``t`` over data-parallel ranks (``t`` itself in one process).

        Losses and gradients of candidates are computed on each rank's own batch: an initializer
        that ranks candidates by them must rank the mean, as DDP averages gradients, or ranks would
        keep different candidates."""
        return t if self._mean_fn is None else self._mean_fn(t)

    def measurement(self, binding: GroupBinding) -> Measurement:
        return self._measure_fn(binding)

    def loss(self, binding: GroupBinding, *, grad: bool) -> torch.Tensor:
        """The user's ``loss_fn`` on the current model state (inputs are not buffered, norm statistics
        and the RNG are left as they were)."""
        if self._loss_fn is None:
            raise ArchgrowError(
                f"group '{binding.name}': the '{binding.settings.initializer.kind}' initializer evaluates candidates "
                "on the loss: pass grow_step(optimizer, loss_fn=lambda: criterion(grown(x), y)) with the step's batch"
            )
        return self._trial_fn(self._loss_fn, grad)
