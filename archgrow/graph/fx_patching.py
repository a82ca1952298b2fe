"""fx's module interception, scoped to the classes of the traced model.

While it traces, torch.fx replaces ``nn.Module.__getattr__`` and ``nn.Module.__call__`` on the
base class and puts them back afterwards.  Assigning a special method on a class makes CPython
update that slot on every subclass and drop their attribute caches: with timm (about 1,300
module classes) imported, the four assignments took 8-23 ms per trace, a quarter of tracing a
small timm CNN, and every class's cached lookups are rebuilt afterwards.

Only the modules of the traced model need intercepting, so :func:`scoped_to` patches each of
their classes instead (a handful, with few subclasses) and deletes the patches after, so that
the classes inherit from ``nn.Module`` again.  Where a class defines its own ``__getattr__`` or
``__call__`` (which then calls ``nn.Module``'s through ``super()``), or where this torch's fx
has no patcher to hand over, fx patches the base class as it always does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

try:
    import torch.fx._symbolic_trace

    _SUPPORTED = all(hasattr(torch.fx._symbolic_trace, n) for n in ("_Patcher", "_PatchedFn", "_new_patcher"))
except ImportError:  # pragma: no cover - torch without fx internals
    _SUPPORTED = False

_INTERCEPTED = ("__getattr__", "__call__")


def _classes_to_patch(model: nn.Module) -> list[type] | None:
    """The model's module classes, or None where one resolves an intercepted method elsewhere."""
    classes = list(dict.fromkeys(type(m) for m in model.modules()))
    for cls in classes:
        for name in _INTERCEPTED:
            if getattr(cls, name) is not getattr(nn.Module, name) or (cls is not nn.Module and name in vars(cls)):
                return None
    return classes


if _SUPPORTED:

    class _DeletedOnRevert(torch.fx._symbolic_trace._PatchedFn):
        """A method set on a class that had none of its own: reverting deletes it."""

        def revert(self) -> None:
            delattr(self.frame_dict, self.fn_name)

        def patch(self) -> None:
            setattr(self.frame_dict, self.fn_name, self.new_fn)

    def _scoped_patcher(classes: list[type]) -> type:
        class ScopedPatcher(torch.fx._symbolic_trace._Patcher):
            def patch_method(self, cls: type, name: str, new_fn: Any, deduplicate: bool = True) -> None:
                if cls is not nn.Module or name not in _INTERCEPTED:
                    super().patch_method(cls, name, new_fn, deduplicate)
                    return
                new_fn.__fx_already_patched = deduplicate
                for target in classes:
                    self.patches_made.append(_DeletedOnRevert(target, name, None, new_fn))
                    self.patches_made[-1].patch()

        return ScopedPatcher


@contextlib.contextmanager
def scoped_to(model: nn.Module) -> Iterator[bool]:
    """fx traces within this block patch ``model``'s module classes instead of ``nn.Module``;
    yields whether it could."""
    classes = _classes_to_patch(model) if _SUPPORTED else None
    if classes is None:
        yield False
        return
    original = torch.fx._symbolic_trace._Patcher
    torch.fx._symbolic_trace._Patcher = _scoped_patcher(classes)
    try:
        yield True
    finally:
        torch.fx._symbolic_trace._Patcher = original


__all__ = ["scoped_to"]
