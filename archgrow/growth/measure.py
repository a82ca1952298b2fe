"""Running probes: a group's activations on the input buffer, or replayed from a captured value.

Measurement runs the real model (never a GraphModule, which fx may have baked stale sizes into)
in eval mode, without autograd and with the RNG forked, on a FIFO buffer of raw training inputs.
Forward hooks capture each probed producer's input and output on its first call; the rest of the
probe is replayed from the traced nodes on the live modules.  The forward stops as soon as every
probe has its capture.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from archgrow.errors import MeasurementError
from archgrow.graph.trace import forked_rng
from archgrow.growth.compiled import eager
from archgrow.growth.probes import Probe
from archgrow.ops.tensor_ops import function_name


@dataclass
class Measurement:
    """A probe's values on the buffer: producer input ``x``, producer output ``z``, measured ``h``."""

    x: torch.Tensor
    z: torch.Tensor
    h: torch.Tensor


@contextlib.contextmanager
def measuring(model: nn.Module) -> Iterator[None]:
    """Eval mode, no autograd, forked RNG, uncompiled (see :func:`eager`); every module's own
    training flag restored after."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in saved:
            m.training = False
        with torch.no_grad(), forked_rng(model), eager():
            yield
    finally:
        for m, flag in saved:
            m.training = flag


class _Done(Exception):
    pass


def measure(
    model: nn.Module, probes: Sequence[Probe], inputs: Sequence[torch.Tensor], *, chunk: int = 512
) -> dict[str, Measurement]:
    """Run ``model`` on ``inputs`` (chunked along the batch) and return each probe's values.

    Call inside :func:`measuring`.
    """
    producers = sorted({p.producer for p in probes})
    captured: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in producers}
    seen: set[str] = set()

    def hook(name: str):
        def fn(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if name in seen:
                return
            seen.add(name)
            # a copy: an in-place op right after the producer (ReLU(inplace=True)) would edit it
            captured[name].append((args[0].detach() if args else None, output.detach().clone()))
            if len(seen) == len(producers):
                raise _Done

        return fn

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in producers]
    try:
        n = inputs[0].shape[0]
        for start in range(0, n, chunk):
            seen.clear()
            try:
                model(*(t[start : start + chunk] for t in inputs))
            except _Done:
                pass
            missing = [p for p in producers if p not in seen]
            if missing:
                raise MeasurementError(f"the forward pass never called {', '.join(missing)}; cannot measure it")
    finally:
        for h in handles:
            h.remove()
    out = {}
    for p in probes:
        xs, zs = zip(*captured[p.producer], strict=True)
        x = torch.cat(xs) if xs[0] is not None else None
        z = torch.cat(zs)
        out[p.group] = Measurement(x, z, replay(model, p, z))
    return out


def replay(model: nn.Module, probe: Probe, z: torch.Tensor, *, candidates: bool = False) -> torch.Tensor:
    """Apply the probe's chain to a producer output ``z``.

    With ``candidates``, ``z`` holds only new channels: modules with parameters (norm layers,
    per-channel affine) act as the identity, which is what a new channel's reset state does
    (weight 1, bias 0, running mean 0, running variance 1, up to ``1/sqrt(1 + eps)``); so do
    calls on a module's own tensors (``F.batch_norm(z, self.running_mean, ...)``).  Ops traced
    with training-mode arguments are called as in eval mode (``Probe.in_eval``).
    """
    if not probe.chain:
        return z
    if any(_in_place(model, n) for n in probe.chain):  # keep the caller's z (Measurement.z) intact
        z = z.clone()
    env: dict[fx.Node, Any] = {_chain_input(probe): z}

    def value(n: fx.Node) -> Any:
        if n in env:
            return env[n]
        if n.op == "get_attr":
            return operator.attrgetter(str(n.target))(model)
        raise MeasurementError(f"probe of '{probe.group}' reads node '{n.name}' outside its chain")

    in_eval = dict(probe.in_eval)
    out = z
    for node in probe.chain:
        args = fx.node.map_arg(node.args, value)
        kwargs = fx.node.map_arg(node.kwargs, value)
        if node.name in in_eval:
            args, kwargs = in_eval[node.name](args, kwargs)
        if node.op == "call_module":
            mod = model.get_submodule(str(node.target))
            if candidates and any(True for _ in mod.parameters(recurse=False)):
                out = args[0]
            else:
                out = mod(*args, **kwargs)
        elif candidates and any(a.op == "get_attr" for a in node.all_input_nodes):
            out = args[0]  # a module's own tensors, sized for the old channels: a new channel's identity
        elif node.op == "call_function":
            out = args[0] if node.name in probe.skipped_in_eval else node.target(*args, **kwargs)
        else:
            out = getattr(args[0], str(node.target))(*args[1:], **kwargs)
        env[node] = out
    return out


def _in_place(model: nn.Module, node: fx.Node) -> bool:
    """The op may overwrite its input: ``ReLU(inplace=True)``, ``F.relu(x, inplace=True)``, ``x.relu_()``."""
    if node.op == "call_module":
        return bool(getattr(model.get_submodule(str(node.target)), "inplace", False))
    name = function_name(node.target) if node.op == "call_function" else str(node.target)
    return bool(node.kwargs.get("inplace")) or (name.endswith("_") and not name.endswith("__"))


def _chain_input(probe: Probe) -> fx.Node:
    first = probe.chain[0]
    inside = set(probe.chain)
    return next(a for a in first.all_input_nodes if a not in inside and a.op != "get_attr")


def producer_forward(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The producer's output for other output units (``weight``), without bias."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module._conv_forward(x, weight, None)
    raise TypeError(f"no candidate forward for {type(module).__name__}")


def supports_candidates(module: nn.Module) -> bool:
    """Initializers that score candidates need a producer whose units are independent filters."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups == 1
