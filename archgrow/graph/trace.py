"""Trace a model with torch.fx and record the shape of every value on real example inputs.

The trace is for analysis only: the user's ``nn.Module`` stays the thing that trains.  fx bakes
Python ints read from module attributes into the graph, so a GraphModule built here would be stale
after the first growth event; archgrow never runs it after growing.

Tracing happens in training mode (growth happens during training, and several torchvision models
only call their auxiliary heads in training mode), shape recording in eval mode under ``no_grad``
(BatchNorm statistics stay untouched, batch-1 inputs work).  A function called inside a module
traced in training mode keeps its training-mode arguments in the graph (a timm ``BatchNormAct2d``
traced into calls ``F.batch_norm(..., training=True)``): the recorder calls such an op as it runs
in eval mode (the op registry's ``in_eval``), so the analysis never depends on batch statistics of
the example input.  Both restore every module's own ``training`` flag, its buffers (a forward traced in
training mode may count batches in place) and the global RNG state afterwards.  The recorder skips
the arithmetic of plain convolutions and linear layers where no shape depends on a value
(:mod:`archgrow.graph.leaf_shapes`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import nn

from archgrow.errors import TraceError
from archgrow.graph.fx_patching import scoped_to
from archgrow.graph.leaf_shapes import layer_output, shapes_follow_values, sized_by_a_tensor
from archgrow.ir.attribute_sizes import STRUCTURAL_ATTRIBUTES, attribute_ints
from archgrow.ir.captured import CapturedGraph

if TYPE_CHECKING:
    from archgrow.ops.registry import OpTable

LeafSpec = type | nn.Module | str


_PLAIN_ARGUMENTS = frozenset({int, float, bool, complex, str, type(None), type(...)})


class _Tracer(fx.Tracer):
    """fx tracer that knows which module it is inside when something fails."""

    def __init__(
        self,
        leaf_modules: Sequence[LeafSpec],
        autowrap_functions: Sequence[Any],
        is_leaf: Callable[[nn.Module], bool] | None = None,
    ):
        super().__init__(autowrap_functions=tuple(autowrap_functions))
        self._is_leaf = is_leaf
        self._leaf_types = tuple(x for x in leaf_modules if isinstance(x, type))
        self._leaf_ids = {id(x) for x in leaf_modules if isinstance(x, nn.Module)}
        self._leaf_names = {x for x in leaf_modules if isinstance(x, str)}
        self._archgrow_stack: list[str] = []
        self._archgrow_names: dict[tuple[str, int], tuple[str, torch.Tensor]] = {}
        self.failed_in: str | None = None
        self.constants: dict[str, torch.Tensor] = {}

    def trace(self, root: nn.Module | Callable[..., Any], concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        # fx finds the name of each module tensor read in the forward by scanning the root's
        # named_parameters() / named_buffers() from the start, per read: quadratic in the
        # layers of models that call layer functions on their own tensors (timm's norms).
        self._archgrow_names = {}
        if isinstance(root, nn.Module):
            for kind, items in (("p", root.named_parameters()), ("b", root.named_buffers())):
                for n, t in items:
                    self._archgrow_names.setdefault((kind, id(t)), (n, t))
        return super().trace(root, concrete_args)

    def _archgrow_name(self, t: torch.Tensor, kind: str) -> str | None:
        found = self._archgrow_names.get((kind, id(t)))
        return found[0] if found is not None and found[1] is t else None

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        """fx's lookup through the index built in ``trace``; anything else as fx does it."""
        if isinstance(attr_val, torch.Tensor) and not self.param_shapes_constant:
            name = self._archgrow_name(attr_val, "p") if isinstance(attr_val, nn.Parameter) else None
            if name is None and self.proxy_buffer_attributes:
                name = self._archgrow_name(attr_val, "b")
            if name is not None:
                if name not in parameter_proxy_cache:
                    parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
                return parameter_proxy_cache[name]
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_arg(self, a: Any) -> Any:
        """A module's tensor passed as an argument: its ``get_attr`` found through the index.  A
        tensor the forward makes from constants (``torch.tensor([...])``) is kept in
        :attr:`constants`: fx would store it as ``_tensor_constant0`` on the user's model, one more
        attribute per trace.

        Plain numbers, proxies, tuples and lists (most arguments) skip fx's checks for parameters,
        buffers, modules and registered constant types, none of which they can be: fx walks
        those checks for every argument of every node."""
        kind = type(a)
        if kind in _PLAIN_ARGUMENTS:
            return a
        if kind is fx.Proxy:
            return a.node
        if kind is tuple:
            return tuple(self.create_arg(e) for e in a)
        if kind is list:
            return [self.create_arg(e) for e in a]
        if isinstance(a, torch.Tensor):
            name = self._archgrow_name(a, "p" if isinstance(a, nn.Parameter) else "b")
            if name is None and not isinstance(a, nn.Parameter) and a not in self.tensor_attrs:
                name = f"_archgrow_constant{len(self.constants)}"
                while hasattr(self.root, name):
                    name += "_"
                self.constants[name] = a
                self.tensor_attrs[a] = name
            if name is not None:
                return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if id(m) in self._leaf_ids or qualname in self._leaf_names:
            return True
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        if self._is_leaf is not None and self._is_leaf(m):
            return True  # a layer type registered whole (register_layer)
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        qualname = self.path_of_module(m)
        self._archgrow_stack.append(qualname)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = qualname
            raise
        finally:
            self._archgrow_stack.pop()


@contextlib.contextmanager
def kept_buffers(model: nn.Module) -> Iterator[None]:
    """Every buffer's values restored on exit: running code of the user's modules in training mode
    (fx runs the Python of a traced forward; ``num_batches_tracked.add_(1)``) must leave no trace."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                if b.shape == value.shape:
                    b.copy_(value)


@contextlib.contextmanager
def _modes(model: nn.Module, training: bool) -> Iterator[None]:
    """Temporarily set every module's training flag, restoring each one's own flag after.

    Where a module keeps ``nn.Module.__setattr__``, the flag is written with ``object.__setattr__``,
    skipping its checks for parameters, buffers and submodules (a bool is none of them): 4x faster,
    and this runs twice per trace over every module.  A module with its own ``__setattr__`` (a
    TorchScript module keeps the flag in C++) is set through it."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in saved:
            _set_training(m, training)
        yield
    finally:
        for m, flag in saved:
            _set_training(m, flag)


def _set_training(module: nn.Module, flag: bool) -> None:
    if type(module).__setattr__ is nn.Module.__setattr__:
        object.__setattr__(module, "training", flag)
    else:
        module.training = flag


def symbolic_trace(
    model: nn.Module,
    *,
    leaf_modules: Sequence[LeafSpec] = (),
    autowrap_functions: Sequence[Any] = (),
    concrete_args: dict[str, Any] | None = None,
    is_leaf: Callable[[nn.Module], bool] | None = None,
) -> CapturedGraph:
    """fx-trace ``model`` in training mode; failures name the module and the way out."""
    tracer = _Tracer(leaf_modules, autowrap_functions, is_leaf)
    try:
        traced = lambda m, path: path == "" or not tracer.is_leaf_module(m, path)  # noqa: E731
        with _modes(model, True), kept_buffers(model), attribute_ints(model, traced) as uses, scoped_to(model):
            graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as exc:  # fx raises many types; all are reported the same way
        where = tracer.failed_in
        cls_name = type(model).__name__
        if where:
            mod = model.get_submodule(where)
            where_txt = f"inside submodule '{where}' ({type(mod).__name__})"
            fix = (
                f"mark it as a leaf: archgrow.trace(model, x, leaf_modules=[{type(mod).__name__}]) "
                f"or leaf_modules=['{where}'] (its widths are then frozen), or make its forward "
                "traceable (no Python control flow on tensor values)"
            )
        else:
            where_txt = f"in the forward of {cls_name}"
            fix = (
                "make the forward traceable (no Python control flow on tensor values, no int() of "
                "tensor sizes), pass concrete_args for flags, or wrap helpers with autowrap_functions"
            )
        raise TraceError(
            f"torch.fx could not trace {cls_name} {where_txt}: {type(exc).__name__}: {exc}. To fix: {fix}."
        ) from exc
    return CapturedGraph(graph, model, {STRUCTURAL_ATTRIBUTES: dict(uses.found)}, tracer.constants)


def leaf_test(
    leaf_modules: Sequence[LeafSpec] = (), is_leaf: Callable[[nn.Module], bool] | None = None
) -> Callable[[nn.Module, str], bool]:
    """``(module, qualified name) -> bool``: would fx keep this module a leaf (not trace into it)?

    The torch.export front-end (:mod:`archgrow.graph.export`) collapses the ops of exactly these
    modules back into one module call, so both front-ends hand the same modules to layer rules.
    """
    return _Tracer(leaf_modules, (), is_leaf).is_leaf_module


def training_flags(model: nn.Module, training: bool) -> contextlib.AbstractContextManager[None]:
    """Every module's ``training`` flag set for the duration, each one's own flag restored after."""
    return _modes(model, training)


def skeleton(value: Any) -> Any:
    """What the analysis keeps of a runtime (or fake) value: shapes of tensors, small values as is."""
    return _skeleton(value)


def _skeleton(value: Any) -> Any:
    """What the analysis needs of a runtime value: shapes of tensors, small Python values as is."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    if isinstance(value, torch.Size):
        return tuple(int(v) for v in value)
    if isinstance(value, (tuple, list)):
        return (
            type(value)(_skeleton(v) for v in value)
            if not hasattr(value, "_fields")
            else tuple(_skeleton(v) for v in value)
        )
    if isinstance(value, dict):
        return {k: _skeleton(v) for k, v in value.items()}
    if isinstance(value, (int, float, bool, str, type(None), slice, torch.dtype, torch.device)):
        return value
    return ("opaque", type(value).__name__)


class _ValuesNeeded(Exception):
    """A shape depends on a value the recorder did not compute: run every layer."""


def _run(
    captured: CapturedGraph, inputs: tuple[Any, ...], ops: OpTable | None, *, compute_layers: bool = True
) -> dict[fx.Node, Any]:
    """Run the graph node by node on ``inputs`` and keep a shape skeleton of every node's value.

    A loop of its own rather than ``fx.Interpreter``, whose per-node dispatch cost about 3x the
    forward itself on small inputs; each value is dropped after its last use, as there.
    ``compute_layers=False``: plain convs and linear layers give zeros of their output's shape
    (:mod:`archgrow.graph.leaf_shapes`); raises :class:`_ValuesNeeded` where a size then depends
    on a value.
    """
    nodes = list(captured.graph.nodes)
    last_use: dict[fx.Node, list[fx.Node]] = {}
    seen: set[fx.Node] = set()
    for node in reversed(nodes):
        for used in node.all_input_nodes:
            if used not in seen:
                seen.add(used)
                last_use.setdefault(node, []).append(used)
    env: dict[fx.Node, Any] = {}
    values: dict[fx.Node, Any] = {}
    remaining = iter(inputs)
    load = env.__getitem__
    for node in nodes:
        op, target = node.op, node.target
        try:
            if op == "placeholder":
                if str(target).startswith("*"):
                    value = list(remaining)
                else:
                    value = next(remaining, _MISSING)
                    if value is _MISSING:
                        value = node.args[0]  # the default (the input count was checked before)
            elif op == "get_attr":
                value = captured.fetch(str(target))
            else:
                args = fx.node.map_arg(node.args, load)
                kwargs = fx.node.map_arg(node.kwargs, load)
                if not compute_layers and op != "output" and sized_by_a_tensor(target, args, kwargs, op == "call_method"):
                    raise _ValuesNeeded
                if op == "call_function":
                    info = ops.function(target) if ops is not None else None
                    if info is not None and info.in_eval is not None:
                        args, kwargs = info.in_eval(args, kwargs)
                    value = target(*args, **kwargs)
                elif op == "call_method":
                    value = getattr(args[0], target)(*args[1:], **kwargs)
                elif op == "call_module":
                    module = captured.get_submodule(str(target))
                    value = None if compute_layers else layer_output(module, args, kwargs)
                    if value is None:
                        value = module(*args, **kwargs)
                else:  # output
                    value = args[0]
        except _ValuesNeeded:
            raise
        except Exception as exc:
            raise TraceError(
                f"running the traced graph failed at node '{node.name}' ({op} {target!r}): "
                f"{type(exc).__name__}: {exc}. Check that example_inputs match what the model "
                "expects (shape, dtype, device)."
            ) from exc
        env[node] = value
        values[node] = _skeleton(value)
        for used in last_use.get(node, ()):
            del env[used]
    return values


_MISSING = object()


def forked_rng(model: nn.Module) -> Any:
    """``torch.random.fork_rng`` over the CPU and every CUDA device ``model`` lives on."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    return torch.random.fork_rng(devices=devices)


def record_shapes(
    captured: CapturedGraph, model: nn.Module, example_inputs: tuple[Any, ...], ops: OpTable | None = None
) -> dict[fx.Node, Any]:
    """Run ``captured`` on ``example_inputs`` in eval mode, without autograd, RNG or statistics side effects.

    ``ops``: the op registry whose ``in_eval`` rewrites give the eval-mode call of ops traced with
    training-mode arguments (without it, the graph runs as traced).
    """
    placeholders = [n for n in captured.graph.nodes if n.op == "placeholder"]
    required = sum(1 for n in placeholders if not n.args and not str(n.target).startswith("*"))
    starred = any(str(n.target).startswith("*") for n in placeholders)
    if len(example_inputs) < required or (len(example_inputs) > len(placeholders) and not starred):
        raise TraceError(
            f"the traced forward takes {required} to {len(placeholders)} input(s) but "
            f"example_inputs has {len(example_inputs)}; pass a tuple with one example per "
            "forward argument"
        )
    with _modes(model, False), torch.no_grad(), forked_rng(model), kept_buffers(model):
        if not shapes_follow_values(captured.graph):
            try:  # convs and linear layers as zeros of their output shape: shapes come out the same
                return _run(captured, example_inputs, ops, compute_layers=False)
            except (_ValuesNeeded, TraceError):
                pass  # a size depends on a value, or an op failed on the zeros: the real forward's errors are the user's
        return _run(captured, example_inputs, ops)
