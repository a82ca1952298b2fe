"""torch.compile and growth: archgrow's own Python stays out of dynamo, growing widths compile as
dynamic sizes.

Why each piece exists (measured on torch 2.14, CPU):

* dynamo traces whatever runs inside a compiled forward, archgrow's forward hooks included, and
  they keep tensors in Python objects or register tensor hooks: the graph broke inside archgrow.
  Once the model is compiled, the hooks run as plain Python (``torch.compiler.disable``), so the
  graph breaks where torch calls them instead;
* archgrow's own forwards (measurement, which stops early by raising from a hook; trials of
  candidates) run in eval mode without autograd, some at trial widths: compiled, each would add a
  graph that training never reuses, and the early stop made dynamo give up on the model's frame
  for good, so the compiled model silently ran eagerly from the first measurement on.  They run
  under :func:`eager`;
* parameters and buffers compile with static shapes, so each growth recompiled, and after
  ``recompile_limit`` (8) growths dynamo ran the model eagerly.  During the wrapper's forward
  (:meth:`CompileSupport.scope`) they are sized like inputs and every dim a growing group widens
  is marked dynamic, so the first compile serves every later width.

Nothing here imports dynamo (about a second) for a model that is not compiled.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from archgrow.growth.hooks import HookSet

# What makes dynamo size parameters and buffers like inputs (both default to True).
_SIZED_LIKE_INPUTS = {"force_parameter_static_shapes": False, "force_nn_module_property_static_shapes": False}

TRACED_WRAPPER = (
    "archgrow: torch.compile(grown) would trace the wrapper's per-step bookkeeping (input buffer, "
    "hooks, step counters) into the graph; compile the wrapped model instead: grown.compile(...) "
    "(it takes torch.compile's arguments)"
)


def dynamo_loaded() -> bool:
    return "torch._dynamo" in sys.modules


def traced() -> bool:
    """Dynamo (or export) is tracing the caller right now."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Forwards inside run uncompiled, a compiled model included (see the module docstring)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if not dynamo_loaded() or set_stance is None:
        yield
        return
    with set_stance("force_eager"):
        yield


class CompileSupport:
    """What a wrapped model does around each forward once its model is compiled, so that it grows.

    ``growing`` lists every (tensor, dim) that a growing group widens.  They are marked on every
    forward, not once: growth and trials replace buffers by new, unmarked tensors (marking a
    hundred costs about 80 us, the config patch 50 us; neither happens for an uncompiled model).

    Dynamic sizes spare dense layers any recompile, but inductor fixes convolution channel counts
    (``guard_int_seq`` in its conv lowering), so each growth of a conv group recompiles; that is
    why :meth:`options` raises the model's recompile limit and :meth:`scope` counts growths.
    """

    def __init__(self, model: nn.Module, hooks: HookSet, growing: Callable[[], Iterable[tuple[torch.Tensor, int]]]):
        self._model = model
        self._hooks = hooks
        self._growing = growing
        self._static = False
        self._limit: int | None = None
        self._version: Any = None  # the growth the last forward ran after
        self._growths = 0  # growths since the model was compiled

    @property
    def active(self) -> bool:
        """The model was compiled in place (``nn.Module.compile``, which ``grown.compile`` calls)."""
        return getattr(self._model, "_compiled_call_impl", None) is not None

    def options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``grown.compile``'s arguments for ``torch.compile``: a recompile limit of dynamo's global
        cap for this model unless one is given (growth is a bounded, intended reason to recompile)."""
        import torch._dynamo

        self._static = kwargs.get("dynamic") is False
        if self._static:
            warnings.warn("grown.compile(dynamic=False): every growth recompiles the model", stacklevel=3)
        if "recompile_limit" in inspect.signature(torch.compile).parameters:
            kwargs = {"recompile_limit": torch._dynamo.config.accumulated_recompile_limit, **kwargs}
        self._limit = kwargs.get("recompile_limit", torch._dynamo.config.recompile_limit)
        self._version, self._growths = None, 0
        return kwargs

    def scope(self, version: Any) -> contextlib.AbstractContextManager[Any]:
        """Around a forward; ``version`` changes whenever a growth changed shapes since the last."""
        if not self.active:
            return contextlib.nullcontext()
        import torch._dynamo

        self._count(version)
        self._hooks.keep_out_of_compile()
        if self._static:
            return contextlib.nullcontext()
        for t, dim in self._growing():
            torch._dynamo.maybe_mark_dynamic(t, dim)
        flags = {k: v for k, v in _SIZED_LIKE_INPUTS.items() if hasattr(torch._dynamo.config, k)}
        return torch._dynamo.config.patch(**flags)

    def _count(self, version: Any) -> None:
        """Warn once growth may have used half the recompile limit: a growth can recompile once for
        training and once for evaluation forwards, and past the limit dynamo runs the model eagerly."""
        if self._version is not None and version != self._version:
            self._growths += 1
            limit = self._limit if self._limit is not None else torch._dynamo.config.recompile_limit
            if self._growths == max(1, limit // 2):
                warnings.warn(
                    f"the compiled model has grown {self._growths} times since it was compiled; if each "
                    f"growth recompiled it (inductor fixes convolution channel counts) for training and for "
                    f"evaluation, dynamo's recompile_limit ({limit}) is reached and it runs the model eagerly "
                    "from there: pass a larger grown.compile(recompile_limit=...)",
                    stacklevel=6,  # the caller of grown(x)
                )
        self._version = version


__all__ = ["CompileSupport", "TRACED_WRAPPER", "dynamo_loaded", "eager", "traced"]
