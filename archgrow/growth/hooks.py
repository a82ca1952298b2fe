"""Hooks archgrow puts on a user's modules, owned so they can all be taken off again.

A wrapped model hooks some of the user's own modules (the auxiliary gradient's producers and
consumers, ``source: step`` probes).  Those modules outlive the wrapper, so every handle is kept
here and :meth:`HookSet.remove` (run by ``GrowingModel.unwrap`` / ``close``) leaves them exactly as
they were given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle


class HookSet:
    """Removable forward hooks, registered through :meth:`forward`."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def forward(self, module: nn.Module, fn: Callable[[nn.Module, tuple[Any, ...], Any], Any]) -> RemovableHandle:
        handle = module.register_forward_hook(fn)
        self._handles.append(handle)
        return handle

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __len__(self) -> int:
        return len(self._handles)


__all__ = ["HookSet"]
