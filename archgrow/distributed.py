"""Growing under ``torch.distributed``: DDP that follows the model's growth.

DDP fixes the shapes of the gradients it reduces when it is built.  After growth those shapes
are stale: the next step would apply rank-local gradients silently, and the one after fails in
the reducer.  :class:`DistributedGrowingModel` therefore owns the DDP wrapper and builds it again
(same process group and options) after every ``grow_step`` that grew, while the wrapped
:class:`~archgrow.grower.GrowingModel` decides every growth together with the other ranks (see
:mod:`archgrow.growth.collective`).  Parameters grow in place, so the optimizer and LR schedulers
keep working and optimizer state is padded exactly as in one process.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from archgrow.errors import ArchgrowError
from archgrow.grower import GrowingModel, GrowthEvent
from archgrow.growth.collective import Collective, DivergenceError, ProcessGroupCollective


class DistributedGrowingModel(nn.Module):
    """A :class:`GrowingModel` trained with DDP: call it, then ``grow_step`` after each ``optimizer.step()``.

    ``ddp_options`` are DistributedDataParallel's keyword arguments (``device_ids``,
    ``process_group``, ``find_unused_parameters``, ...); they are kept and used again at every
    rebuild.  The grown model is :attr:`grown`; its plain module is ``grown.model``.
    """

    def __init__(self, grown: GrowingModel, **ddp_options: Any):
        super().__init__()
        if not isinstance(grown, GrowingModel):
            raise ArchgrowError(
                f"distribute() takes the GrowingModel that archgrow.wrap returned, got {type(grown).__name__}: "
                "grown = archgrow.wrap(model, spec, example_inputs); ddp = archgrow.distribute(grown)"
            )
        if grown.closed:
            raise ArchgrowError("distribute(): this GrowingModel was closed (unwrap() or close()); wrap the model again")
        grown.graph  # noqa: B018 - raises, saying what to do, if the model was never traced
        grown.synchronize(ProcessGroupCollective(ddp_options.get("process_group")))
        self._options = dict(ddp_options)
        self.ddp = DistributedDataParallel(grown, **self._options)
        self.rebuilds = 0

    @property
    def grown(self) -> GrowingModel:
        module = self.ddp.module
        assert isinstance(module, GrowingModel)
        return module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        grown = self.grown
        if grown.is_paused:  # candidates tried on the loss (Firefly, NeST) run locally, outside DDP's reducer
            return grown(*args, **kwargs)
        return self.ddp(*args, **kwargs)

    def grow_step(
        self,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        loss_fn: Callable[[], torch.Tensor] | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> list[GrowthEvent]:
        """Grow as every rank decides together, then rebuild DDP for the new shapes if anything grew.

        Call it on every rank, after ``optimizer.step()``, as ``GrowingModel.grow_step``.
        """
        events = self.grown.grow_step(optimizer, loss_fn=loss_fn, scaler=scaler)
        if events:
            self.rebuild()
        return events

    def rebuild(self) -> None:
        """Build DDP again over the current shapes (same process group and options).

        The old reducer must be gone before the new one hooks the same parameters, or both would
        reduce every gradient.  DDP's constructor checks that every rank has the same shapes and
        broadcasts rank 0's parameters and buffers.
        """
        grown = self.grown
        old = self.ddp
        del self.ddp
        old.module = nn.Identity()  # drop the old wrapper's hold on the model before it is collected
        alive = weakref.ref(old)
        del old
        if alive() is not None:  # held by a reference cycle: collect it now (costly, hence only then)
            gc.collect()
        self.ddp = DistributedDataParallel(grown, **self._options)
        self.rebuilds += 1

    # what a training loop reads from the grown model
    def widths(self) -> dict[str, int]:
        return self.grown.widths()

    @property
    def history(self) -> list[GrowthEvent]:
        return self.grown.history

    def prefill(self, inputs: Any) -> int:
        """Fill this rank's share of the activation buffer (see ``GrowingModel.prefill``): pass this
        rank's own samples (a DistributedSampler's shard)."""
        return self.grown.prefill(inputs)


def distribute(grown: GrowingModel, **ddp_options: Any) -> DistributedGrowingModel:
    """Train ``grown`` (from :func:`archgrow.wrap`) with DDP on the initialized default process group.

    ``torch.distributed.init_process_group`` must have run (torchrun sets its environment).  The
    order is ``wrap`` first, then ``distribute``; see ``docs/distributed.md``.
    """
    return DistributedGrowingModel(grown, **ddp_options)


__all__ = ["Collective", "DistributedGrowingModel", "DivergenceError", "distribute"]
