"""Hooks archgrow puts on a user's modules, owned so they can all be taken off again.

A wrapped model hooks some of the user's own modules (the auxiliary gradient's producers and
consumers, ``source: step`` probes).  Those modules outlive the wrapper, so every handle is kept
here and :meth:`HookSet.remove` (run by ``GrowingModel.unwrap`` / ``close``) leaves them exactly as
they were given.

Under ``torch.compile`` the hooks run as plain Python (:meth:`HookSet.keep_out_of_compile`):
dynamo would otherwise trace them into the user's graph, and break it inside archgrow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

Hook = Callable[[nn.Module, tuple[Any, ...], Any], Any]


class HookSet:
    """Removable forward hooks, registered through :meth:`forward`."""

    def __init__(self) -> None:
        self._hooks: list[tuple[nn.Module, RemovableHandle, Hook]] = []
        self._outside_compile = False

    def forward(self, module: nn.Module, fn: Hook) -> RemovableHandle:
        handle = module.register_forward_hook(torch.compiler.disable(fn) if self._outside_compile else fn)
        self._hooks.append((module, handle, fn))
        return handle

    def keep_out_of_compile(self) -> None:
        """Replace every hook by ``torch.compiler.disable(hook)`` where it is (same order, same
        handle), and register later ones that way.  Called once dynamo is imported, not before:
        nothing can be compiled until then, and importing it costs about a second."""
        if self._outside_compile:
            return
        self._outside_compile = True
        for module, handle, fn in self._hooks:
            if handle.id in module._forward_hooks:
                module._forward_hooks[handle.id] = torch.compiler.disable(fn)

    def remove(self) -> None:
        for _, handle, _ in self._hooks:
            handle.remove()
        self._hooks.clear()

    def __len__(self) -> int:
        return len(self._hooks)


__all__ = ["HookSet"]
