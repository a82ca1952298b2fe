"""A captured forward: the fx graph a front-end produced and the module its targets name.

The fx front-end's targets are qualified names in the user's model itself, so the model is the
root: no ``GraphModule`` is built (copying each called module and tensor into one cost 5-15 ms
per trace, for a module nobody runs: fx bakes sizes into it that growth makes stale).  The
torch.export front-end's targets include constants of the exported program, so its root is a
``GraphModule`` holding them beside the user's modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn


@dataclass(frozen=True, eq=False)
class CapturedGraph:
    """``graph``'s ``call_module`` and ``get_attr`` targets are qualified names in ``root``;
    ``meta`` holds what the front-end learned beside the graph (structural attribute uses);
    ``constants`` the tensors the forward made from constants, by the ``get_attr`` target that
    reads them (kept here rather than on the user's model)."""

    graph: fx.Graph
    root: nn.Module
    meta: dict[str, Any] = field(default_factory=dict)
    constants: dict[str, torch.Tensor] = field(default_factory=dict)

    def get_submodule(self, target: str) -> nn.Module:
        return self.root.get_submodule(target)

    def get_parameter(self, target: str) -> nn.Parameter:
        return self.root.get_parameter(target)

    def fetch(self, target: str) -> Any:
        """The value a ``get_attr`` node reads: any attribute path, as fx's interpreter reads it."""
        if target in self.constants:
            return self.constants[target]
        value: Any = self.root
        for i, atom in enumerate(target.split(".")):
            if not hasattr(value, atom):
                raise AttributeError(f"the graph reads '{target}' but '{'.'.join(target.split('.')[: i + 1])}' does not exist")
            value = getattr(value, atom)
        return value


# CapturedGraph.meta key, True where the front-end records every size the forward read from a
# tensor (``x.shape[1]``) as a plain number (torch.export with static shapes): a number in such a
# graph may have been read from a tensor, or written in the code, and the graph cannot tell which.
SIZES_AS_NUMBERS = "archgrow_sizes_as_numbers"


def as_captured(gm: fx.GraphModule) -> CapturedGraph:
    return CapturedGraph(gm.graph, gm, gm.meta)


__all__ = ["SIZES_AS_NUMBERS", "CapturedGraph", "as_captured"]
