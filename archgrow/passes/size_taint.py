"""Sizes read from a growing dim must follow growth wherever they are used.

``x.size(1)`` or ``x.shape[1]`` on a growing dim is a *tainted* int: fine when a rule used it as
"this dim follows growth" (``x.view(x.size(0), -1)``), or in int arithmetic that itself stays
tainted, but a width that some other op receives as a plain number (a hard-coded
``nn.Linear(x.size(1), ...)``-style use) would be stale after growth, so that width freezes.
Run after each node's layout rule, which says which tainted inputs it consumed.
"""

from __future__ import annotations

from archgrow.ops.context import RuleContext, is_tensor


def check_size_uses(ctx: RuleContext) -> None:
    state, node = ctx.state, ctx.node
    inputs = [a for a in node.all_input_nodes if a in state.taint]
    if not inputs:
        return
    out = state.values.get(node)
    if node.op == "call_function" and not ctx.tensors(node.args, node.kwargs) and not is_tensor(out):
        # int arithmetic on sizes (a rule may already have said exactly which dim it reads)
        state.taint.setdefault(node, [lay for a in inputs for lay in state.taint[a]])
        return
    if node.op == "output":
        return
    for a in inputs:
        if a not in ctx.consumed:
            for lay in state.taint[a]:
                ctx.freeze(
                    lay,
                    f"the size of a growing dim, read at node '{a.name}', is used by node '{node.name}' as a fixed number",
                )


__all__ = ["check_size_uses"]
