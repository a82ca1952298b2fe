"""Parameters outside layers: used directly in the forward (layer scales, class tokens,
position embeddings), or owned by two modules (tied embeddings)."""

from __future__ import annotations

from torch import nn

from archgrow.ir.bindings import MemberRecord
from archgrow.ir.layout import Layout, Seg
from archgrow.ir.roles import MEAN, ZERO
from archgrow.ops.context import LayoutState, bind_tensor, freeze_layout


def bind_direct_parameters(state: LayoutState) -> None:
    """Bind each directly used parameter's dims to the widths the layout pass gave them.

    A parameter of a module that is also called as a layer gets a second, direct use that surgery
    could not keep in step: everything it touches freezes.  One that a rule bound itself (the
    weight of ``F.linear(x, self.weight)``, see ``RuleContext.tie_parameter``) is that rule's.
    """
    for target, var_of in state.param_vars.items():
        owner, _, tensor = target.rpartition(".")
        if owner in state.called:
            reason = f"parameter '{target}' is also used directly by node '{state.direct_params.get(target, '?')}'"
            first_in, first_out = state.called[owner]
            freeze_layout(state.vars, first_in[0], reason)
            freeze_layout(state.vars, first_out, reason)
            for v in var_of.values():
                state.vars.freeze(v, reason)
            continue
        if target in state.bound_params:
            continue
        scaled = any((info := state.ops.user_info(u)) is not None and info.multiplicative for u in state.param_users.get(target, ()))
        role = state.param_roles.get(target) or (MEAN if scaled else ZERO)
        mod = state.model.get_submodule(owner) if owner else state.model
        for d, v in var_of.items():
            lay = (Seg(v),)
            state.members.append(MemberRecord(target, "Parameter", "follower", lay, target))
            bind_tensor(state, owner, mod, tensor, d, lay, role)


def freeze_shared_parameters(state: LayoutState) -> None:
    """A Parameter owned by two modules (tied embeddings) would be grown twice: freeze it."""
    owners: dict[int, set[str]] = {}
    layouts: dict[int, list[Layout]] = {}
    for b in state.tensor_bindings:
        # the pass's module index first: get_submodule walks the path again for every binding
        mod = state.modules.get(b.module)
        t = getattr(mod if mod is not None else state.model.get_submodule(b.module), b.tensor, None)
        if isinstance(t, nn.Parameter):
            owners.setdefault(id(t), set()).add(f"{b.module}.{b.tensor}" if b.module else b.tensor)
            layouts.setdefault(id(t), []).append(b.layout)
    for key, names in owners.items():
        if len(names) > 1:
            reason = f"one Parameter is shared by {' and '.join(sorted(names))} (tied weights)"
            for lay in layouts[key]:
                freeze_layout(state.vars, lay, reason)


__all__ = ["bind_direct_parameters", "freeze_shared_parameters"]
