"""The torch.export front-end: a model fx cannot trace, captured as ATen ops on the user's modules.

``torch.fx.symbolic_trace`` runs the forward on proxies and fails on Python control flow, item
assignment, iteration over proxies... (HuggingFace transformers).  ``torch.export.export(...,
strict=False)`` runs the forward on fake tensors instead and records ATen ops, which any forward
that runs in PyTorch survives.  The exported graph is turned into an fx graph of the form the
analysis passes already read, so the same passes and rules apply and surgery still edits the
user's modules in place:

- lifted parameters and buffers (placeholders named by ``ExportedProgram.graph_signature``)
  become ``get_attr`` nodes with the user's qualified name, so layer functions on a module's own
  tensors (``aten.linear(x, self.weight)``) get their layer's rule (:mod:`archgrow.ops.functional`);
- the ops of every module fx would keep a leaf (torch.nn layers, layer types registered whole,
  ``leaf_modules``), found through each node's ``nn_module_stack``, collapse back into one
  ``call_module`` node when they form one call with one tensor in and one out, so layer rules,
  probes and hooks see the module as after an fx trace;
- every other ATen op keeps its ATen target; :mod:`archgrow.ops.aten` gives each the rule of its
  torch-level spelling;
- shapes come from the export's fake values (``node.meta["val"]``): the graph is never run.

Export sizes are concrete: a size the code reads from a tensor (``x.size(1)``) is recorded as a
number, as one written in the code is.  A number equal to the size of the growing dim it sizes
(HuggingFace's ``repeat_kv`` expanding k and v to ``(B, kv_heads, n, T, D)``) is taken as read
from that dim (``SIZES_AS_NUMBERS``, ``RuleContext.number_as_read``); every group of an export
capture is then grown once on the model's own forward (:mod:`archgrow.surgery.check`), which
freezes it, saying so, where growth then breaks the forward or changes its output's shape.  In a
reshape with a ``-1`` no number is taken so: one the code wrote would send new channels to the
``-1``'s dim with the element count intact.  Other numbers (a split into heads with
neither size ``-1`` nor a module attribute) freeze with the reshape as the reason, where an fx
trace could follow them.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import operator
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from archgrow.errors import TraceError
from archgrow.graph.trace import LeafSpec, forked_rng, kept_buffers, leaf_test, skeleton, training_flags
from archgrow.ir.captured import SIZES_AS_NUMBERS

WRAPPED = "model"  # the user's model inside the exported wrapper: its qualified names start with this
CONSTANT = "archgrow_constant_"  # get_attr names of tensors the forward creates (export lifts them)
QUIET_LOGGERS = ("torch._export", "torch.export", "torch.fx.experimental.symbolic_shapes", "torch._dynamo", "torch._functorch")


class OutputTensors(nn.Module):
    """The user's model, returning the tensors of its output as a flat tuple.

    torch.export needs outputs it can flatten; a transformers ``DynamicCache`` (GPT-2's default
    ``use_cache``) is not one.  Tensors in pytree containers (tuples, dicts, ``ModelOutput``) stay
    outputs; other objects are state for a later call, not an output of this one, and are dropped.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        out = self.model(*args, **kwargs)
        return tuple(x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor))


@dataclass
class ExportedGraph:
    """The converted graph and each node's recorded value (a shape skeleton), as the fx front-end gives."""

    gm: fx.GraphModule
    values: dict[fx.Node, Any]


def export_program(model: nn.Module, inputs: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Any:
    """``torch.export.export`` of ``model`` (non-strict) in training mode, or in eval mode where training mode
    fails (batch statistics of a batch of one); parameters, buffers, flags and the RNG left as they were."""
    wrapper = OutputTensors(model)
    failures: list[str] = []
    for training in (True, False):
        printed = io.StringIO()
        with training_flags(model, training), kept_buffers(model), forked_rng(model), _quiet(printed):
            try:
                program = torch.export.export(wrapper, inputs, kwargs or {}, strict=False)
            except Exception as exc:  # export raises many types; all are reported the same way
                mode = "training" if training else "eval"
                failures.append(f"in {mode} mode: {type(exc).__name__}: {_first_line(exc)}")
                continue
        sys.stdout.write(printed.getvalue())  # what the forward itself printed
        return program
    raise TraceError(f"torch.export could not capture {type(model).__name__} " + "; ".join(failures))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return line[:400]


@contextlib.contextmanager
def _quiet(printed: io.StringIO) -> Iterator[None]:
    """torch.export logs a warning, and prints the graph so far, for every failure it meets; the user
    gets archgrow's error, which names both front-ends' failures, instead.  Standard output goes to
    ``printed`` (shown after a successful export: the forward's own prints)."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_graph(
    model: nn.Module,
    inputs: tuple[Any, ...],
    *,
    leaf_modules: Sequence[LeafSpec] = (),
    is_leaf: Callable[[nn.Module], bool] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> ExportedGraph:
    """Export ``model`` and convert the program into an fx graph on the user's modules (module docstring)."""
    program = export_program(model, inputs, kwargs)
    graph, constants = _convert(program)
    _drop_dead(graph)
    modules = dict(model.named_modules())
    _collapse_leaves(graph, modules, leaf_test(leaf_modules, is_leaf))
    _drop_dead(graph)
    root: dict[str, Any] = {}
    for node in graph.nodes:
        target = str(node.target)
        if node.op == "call_module":
            root[target] = modules[target]
        elif node.op == "get_attr":
            root[target] = constants[target] if target in constants else _tensor(model, target)
    gm = fx.GraphModule(root, graph, type(model).__name__)
    gm.meta[SIZES_AS_NUMBERS] = True
    values = {n: skeleton(n.meta["val"]) if "val" in n.meta else None for n in gm.graph.nodes}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            values[n] = skeleton(root[str(n.target)])
    return ExportedGraph(gm, values)


def _tensor(model: nn.Module, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(model.get_submodule(owner), name)


def _strip(path: str) -> str:
    """A qualified name in the wrapper -> the same name in the user's model."""
    if path == WRAPPED:
        return ""
    return path[len(WRAPPED) + 1 :] if path.startswith(WRAPPED + ".") else path


# Higher-order ops that only set a mode around a region of the forward (``torch.autocast``,
# ``torch.no_grad`` inside it, as EfficientViT's LiteMLA does): the region's ops are inlined.
MODE_REGIONS = ("wrap_with_autocast", "wrap_with_set_grad_enabled")


def _inline_mode_regions(gm: fx.GraphModule) -> None:
    """Replace each call of a mode-setting higher-order op by the ops of its region, so the rules
    see them; any other higher-order op (``cond``, ``map``: control flow) is refused by name."""
    graph = gm.graph
    while True:
        hops = [n for n in graph.nodes if n.op == "call_function" and isinstance(n.target, torch._ops.HigherOrderOperator)]
        if not hops:
            break
        node = hops[0]
        name = getattr(node.target, "__name__", str(node.target))
        subs = [
            i for i, a in enumerate(node.args)
            if isinstance(a, fx.Node) and a.op == "get_attr" and isinstance(getattr(gm, str(a.target), None), fx.GraphModule)
        ]  # fmt: skip
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        where = _strip(stack[-1][0]) if stack else ""
        if name not in MODE_REGIONS or len(subs) != 1:
            raise TraceError(
                f"torch.export captured the higher-order op '{name}' (control flow or a wrapped region) "
                f"{f'inside submodule {where!r}' if where else 'in the forward'}, which archgrow cannot analyse; "
                "mark that module as a leaf (leaf_modules=[...]: its widths are then frozen)"
            )
        region = getattr(gm, str(node.args[subs[0]].target))
        env: dict[fx.Node, Any] = dict(
            zip([n for n in region.graph.nodes if n.op == "placeholder"], node.args[subs[0] + 1 :], strict=False)
        )
        outputs: Any = ()
        with graph.inserting_before(node):
            for inner in region.graph.nodes:
                if inner.op == "placeholder":
                    continue
                if inner.op == "output":
                    outputs = fx.map_arg(inner.args[0], env.__getitem__)
                    continue
                if inner.op == "get_attr":  # a nested region or a constant of the region
                    target = f"_archgrow_region_{len(list(graph.nodes))}"
                    setattr(gm, target, getattr(region, str(inner.target)))
                    env[inner] = graph.get_attr(target)
                    env[inner].meta = dict(inner.meta)
                    continue
                env[inner] = graph.node_copy(inner, env.__getitem__)
        for user in list(node.users):
            if user.op == "call_function" and user.target is operator.getitem:
                user.replace_all_uses_with(outputs[user.args[1]])
                graph.erase_node(user)
        if node.users:
            node.replace_all_uses_with(outputs)  # type: ignore[arg-type]
        owner = node.args[subs[0]]
        graph.erase_node(node)
        if not owner.users:  # type: ignore[union-attr]
            graph.erase_node(owner)  # type: ignore[arg-type]


def _convert(program: Any) -> tuple[fx.Graph, dict[str, torch.Tensor]]:
    """The exported graph with lifted tensors as ``get_attr`` nodes and only the user's outputs."""
    _inline_mode_regions(program.graph_module)
    sig = program.graph_signature
    lifted = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    lifted_constants = sig.inputs_to_lifted_tensor_constants
    user_outputs = [i for i, spec in enumerate(sig.output_specs) if spec.kind.name == "USER_OUTPUT"]
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    constants: dict[str, torch.Tensor] = {}
    for node in program.graph.nodes:
        if node.op == "placeholder":
            if node.name in lifted:
                new = graph.get_attr(_strip(lifted[node.name]))
            elif node.name in lifted_constants:
                name = f"{CONSTANT}{len(constants)}"
                constants[name] = program.constants[lifted_constants[node.name]]
                new = graph.get_attr(name)
            else:
                new = graph.placeholder(node.name)
            new.meta = dict(node.meta)
        elif node.op == "output":
            outs = node.args[0]
            graph.output(tuple(env[outs[i]] if isinstance(outs[i], fx.Node) else outs[i] for i in user_outputs))
            continue
        else:
            new = graph.node_copy(node, lambda a: env[a])
            stack = node.meta.get("nn_module_stack")
            if stack:
                new.meta["nn_module_stack"] = {
                    key: (_strip(path), kind) for key, (path, kind) in stack.items() if path.startswith(WRAPPED)
                }
        env[node] = new
    return graph, constants


def _drop_dead(graph: fx.Graph) -> None:
    """Remove values nothing uses (buffer updates' inputs, assertions); in-place ops stay."""
    for node in reversed(list(graph.nodes)):
        if node.op in ("placeholder", "output") or node.users:
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if node.op == "call_function" and name.split(".")[0].endswith("_") and not name.startswith("_"):
            continue  # an in-place op: its effect is on its input
        graph.erase_node(node)


def _leaf_call(node: fx.Node, modules: dict[str, nn.Module], is_leaf: Callable[[nn.Module, str], bool]) -> Any:
    """(stack key, module path) of the outermost leaf module this op runs inside, or None."""
    for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
        module = modules.get(path)
        if path and module is not None and is_leaf(module, path):
            return key, path
    return None


def _collapse_leaves(graph: fx.Graph, modules: dict[str, nn.Module], is_leaf: Callable[[nn.Module, str], bool]) -> None:
    """Each run of ops from one call of a leaf module becomes one ``call_module`` node, when the call
    takes one tensor (besides the module's own tensors) and one of its values is used outside."""
    runs: list[tuple[str, list[fx.Node]]] = []
    current: Any = None
    for node in graph.nodes:
        call = _leaf_call(node, modules, is_leaf) if node.op == "call_function" else None
        if call is None:
            current = None
            continue
        if call != current:
            runs.append((call[1], []))
            current = call
        runs[-1][1].append(node)
    for path, region in runs:
        _collapse(graph, path, region, modules[path])


def _one_input_forward(module: nn.Module) -> bool:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in positional and p.default is inspect.Parameter.empty) == 1


def _collapse(graph: fx.Graph, path: str, region: list[fx.Node], module: nn.Module) -> None:
    inside = set(region)
    inputs: list[fx.Node] = []
    for node in region:
        for a in node.all_input_nodes:
            if a not in inside and a.op != "get_attr" and a not in inputs:
                inputs.append(a)
    outputs = [n for n in region if any(u not in inside for u in n.users)]
    if len(inputs) != 1 or len(outputs) != 1 or not _one_input_forward(module):
        return
    (x,), (out,) = inputs, outputs
    if not isinstance(x.meta.get("val"), torch.Tensor) or not isinstance(out.meta.get("val"), torch.Tensor):
        return
    with graph.inserting_before(region[0]):
        call = graph.call_module(path, (x,))
    call.meta = {"val": out.meta["val"]}
    stack = out.meta.get("nn_module_stack")
    if stack:
        keys = list(stack)
        last = next(i for i, k in enumerate(keys) if stack[k][0] == path)
        call.meta["nn_module_stack"] = {k: stack[k] for k in keys[: last + 1]}
    out.replace_all_uses_with(call)
    for node in reversed(region):
        graph.erase_node(node)


__all__ = ["WRAPPED", "ExportedGraph", "OutputTensors", "export_graph", "export_program"]
