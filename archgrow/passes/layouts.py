"""Layout propagation: one pass over the fx graph, each node handed to the rule registered for it.

Like ``torch.fx.passes.shape_prop.ShapeProp``, it walks the nodes in order and keeps each node's
result in ``node.meta`` (under :data:`LAYOUT_KEY`).  Rules come from the trace's
:class:`~archgrow.ops.registry.OpTable`: layers by module type, functions by object, methods by
name.  An op with no rule, or a rule that says it does not apply (``NoRule``), freezes every width
reaching the node with a reason naming it.  Any other exception inside a rule is a bug in that
rule and is raised as :class:`~archgrow.errors.RuleError` naming the node, never turned into a
frozen group that would look legitimate.
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx
from torch import nn

from archgrow.errors import ArchgrowError, RuleError
from archgrow.ir.captured import CapturedGraph
from archgrow.ir.layout import Seg, TensorMeta
from archgrow.ops.context import LayoutState, NoRule, RuleContext
from archgrow.ops.registry import OpTable
from archgrow.ops.tensor_ops import function_name
from archgrow.passes.size_taint import check_size_uses

LAYOUT_KEY = "archgrow_layout"


def propagate_layouts(gm: CapturedGraph, values: dict[fx.Node, Any], model: nn.Module, ops: OpTable) -> LayoutState:
    state = LayoutState(gm, values, model, ops, modules=dict(model.named_modules()))
    for node in gm.graph.nodes:
        ctx = RuleContext(state, node)
        try:
            value = _visit(ctx)
        except NoRule as exc:
            value = ctx.unknown(f"{exc.what}")
        except ArchgrowError:
            raise
        except Exception as exc:
            raise RuleError(
                f"the width rule for {_describe(node)} failed at node '{node.name}' ({type(exc).__name__}: {exc}). "
                "This is a bug in archgrow or in a rule registered with register_op/register_layer; as a way "
                "around it, trace with leaf_modules=[...] naming the module that contains the node"
            ) from exc
        state.meta[node] = value
        node.meta[LAYOUT_KEY] = value
        check_size_uses(ctx)
    return state


def _describe(node: fx.Node) -> str:
    if node.op == "call_function":
        return function_name(node.target)
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return f"{node.op} {node.target!r}"


def _visit(ctx: RuleContext) -> Any:
    node = ctx.node
    if node.op == "get_attr":
        return _parameter(ctx)
    if node.op == "call_module":
        return _call_module(ctx)
    if node.op == "call_function":
        return _call_function(ctx)
    if node.op == "call_method":
        return _call_method(ctx)
    if node.op == "output":
        ctx.freeze_all(ctx.tensors(node.args), f"reaches the model output ({ctx.where})")
        return None
    return ctx.fixed()  # placeholder


def _parameter(ctx: RuleContext) -> Any:
    """A parameter used directly: each dim larger than 1 is a width of its own (until tied)."""
    state, target = ctx.state, str(ctx.node.target)
    try:
        value = state.gm.get_parameter(target)
    except AttributeError:
        return ctx.fixed()
    state.param_users[target] = set()
    var_of = {}
    dims = []
    for d, size in enumerate(value.shape):
        if size > 1:
            var_of[d] = state.vars.new(size, f"{target}[dim {d}]")
            dims.append((Seg(var_of[d]),))
        else:
            dims.append(None)
    state.param_vars[target] = var_of
    return TensorMeta(tuple(value.shape), tuple(dims))


def _note_parameter_users(ctx: RuleContext, used_by: Any) -> None:
    state = ctx.state
    for a in ctx.node.all_input_nodes:
        if a.op == "get_attr" and str(a.target) in state.param_users:
            state.param_users[str(a.target)].add(used_by)
            state.direct_params.setdefault(str(a.target), ctx.node.name)


def _call_module(ctx: RuleContext) -> Any:
    name = str(ctx.node.target)
    module = ctx.module(name)
    rule = ctx.ops.layer(module)
    if rule is not None:
        return rule.apply(ctx, name, module)
    has_state = any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
    return ctx.unknown(f"{'layer' if has_state else 'module'} {type(module).__name__} '{name}'")


def _call_function(ctx: RuleContext) -> Any:
    fn = ctx.node.target
    _note_parameter_users(ctx, fn)
    info = ctx.ops.function(fn)
    if info is not None and info.rule is not None:
        return info.rule(ctx)
    if not ctx.tensors(ctx.node.args, ctx.node.kwargs):
        return ctx.fixed()  # arithmetic on sizes, constants...
    return ctx.unknown(function_name(fn))


def _call_method(ctx: RuleContext) -> Any:
    name = str(ctx.node.target)
    _note_parameter_users(ctx, name)
    if not isinstance(ctx.meta(ctx.node.args[0]), TensorMeta):
        return ctx.fixed()
    info = ctx.ops.method(name)
    if info is not None and info.rule is not None:
        return info.rule(ctx)
    return ctx.unknown(f"Tensor.{name}")


__all__ = ["LAYOUT_KEY", "propagate_layouts"]
