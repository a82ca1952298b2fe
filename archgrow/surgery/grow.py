"""``grow``: widen one width group of a traced model, in place and consistently.

The graph already knows, for every tensor dimension tied to the group, its layout and the role
of new entries (see ``archgrow.ops`` and ``archgrow.passes``).  Growing is therefore mechanical: plan the index
expansion of each bound dimension, fill new entries by role, swap the tensors in, update module
attributes and optimizer state, and bump the group's width in the graph.

Default init is function-preserving (paper B.1): new fan-in Xavier-uniform rescaled to the mean
fan-in norm of the existing units, new fan-out zero, new bias zero, norm layers at identity
(weight 1, bias 0, running mean 0, running var 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from archgrow.errors import GrowthError
from archgrow.graph.widthgraph import BoundTensor, WidthGraph, WidthGroup
from archgrow.ir.roles import FAN_IN, FAN_OUT, MEAN, ONE, ZERO
from archgrow.surgery.optim import check_state, pad_state, warn_zero_filled
from archgrow.surgery.tensors import Expansion, expand, mean_units, new_shape, plan, random_units

TensorOrMap = torch.Tensor | Mapping[str, torch.Tensor] | None


def grow(
    graph: WidthGraph,
    group: str | WidthGroup,
    k: int,
    *,
    fan_in: TensorOrMap = None,
    fan_out: TensorOrMap = None,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> WidthGroup:
    """Add ``k`` units to every member of ``group``, after the existing ones.

    ``fan_in``: new incoming weights, one tensor (group with a single producer) or a mapping from
    producer name to tensor; each is the producer's weight with its output dim replaced by ``k``.
    ``fan_out``: new outgoing weights, likewise keyed by consumer, with the consumer's input dim
    replaced by the number of new input positions (``k`` times the flatten block, per slot).
    ``optimizer``: its state for the grown parameters is padded, new entries where the optimizer
    starts a new parameter's state (see :func:`archgrow.register_optimizer_state`).
    ``generator``: seeds the default random fan-in.
    """
    g = graph.group(group) if isinstance(group, str) else group
    if g.graph is not graph:
        raise GrowthError(f"group '{g.name}' belongs to another WidthGraph")
    if not g.growable:
        raise GrowthError(f"group '{g.name}' is frozen: {g.reason}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise GrowthError(f"k must be a positive int, got {k!r} for group '{g.name}'")
    if k % g.step:
        raise GrowthError(f"group '{g.name}' grows in multiples of {g.step}; got k={k}")
    explicit_in = _by_member(fan_in, "fan_in", [m.name for m in g.producers], g)
    explicit_out = _by_member(fan_out, "fan_out", [m.name for m in g.consumers], g)

    # Plan every bound dimension with the widths before growth, fan-in dims last so that new
    # units' incoming weights span inputs that grew in the same event.
    per_tensor: dict[tuple[str, str], list[tuple[BoundTensor, Expansion]]] = {}
    for b in g.bindings():
        per_tensor.setdefault((b.module_name, b.tensor), []).append((b, plan(g.segments(b.layout), k, b.dim)))
    for steps in per_tensor.values():
        steps.sort(key=lambda be: be[0].role == FAN_IN)

    _validate(per_tensor, explicit_in, explicit_out)
    if optimizer is not None:
        tensors = [getattr(steps[0][0].module, tensor_name) for (_, tensor_name), steps in per_tensor.items()]
        check_state(optimizer, [t for t in tensors if isinstance(t, nn.Parameter)])
    zero_filled: set[str] = set()
    for (module_name, tensor_name), steps in per_tensor.items():
        module = steps[0][0].module
        current = getattr(module, tensor_name)
        old_shape = current.shape
        data = current.detach()
        for b, e in steps:
            fill = _fill(b, data, e, module, module_name, explicit_in, explicit_out, generator)
            data = expand(data, e, fill)
        zero_filled.update(_assign(module, tensor_name, current, data, [e for _, e in steps], optimizer, old_shape))
    graph.commit_growth(g, k)
    if optimizer is not None:
        warn_zero_filled(optimizer, zero_filled)
    return g


def _validate(
    per_tensor: dict[tuple[str, str], list[tuple[BoundTensor, Expansion]]],
    explicit_in: dict[str, torch.Tensor],
    explicit_out: dict[str, torch.Tensor],
) -> None:
    """Check every shape before touching anything, so a rejected request leaves the model intact."""
    for (module_name, tensor_name), steps in per_tensor.items():
        shape = list(getattr(steps[0][0].module, tensor_name).shape)
        for b, e in steps:
            if shape[b.dim] != len(e.old_pos):
                raise GrowthError(
                    f"'{module_name}.{tensor_name}' has size {shape[b.dim]} along dim {b.dim} but the "
                    f"graph expects {len(e.old_pos)}: the model changed outside archgrow; trace it again"
                )
            given = {FAN_IN: explicit_in, FAN_OUT: explicit_out}.get(b.role, {}).get(module_name)
            expected = shape[: b.dim] + [len(e.new_pos)] + shape[b.dim + 1 :]
            if given is not None and tensor_name == "weight" and list(given.shape) != expected:
                raise GrowthError(
                    f"{b.role} for '{module_name}' has shape {tuple(given.shape)}, expected {tuple(expected)} "
                    f"(its weight with dim {b.dim} replaced by the {len(e.new_pos)} new positions)"
                )
            shape[b.dim] = e.size


def _by_member(value: TensorOrMap, what: str, names: list[str], g: WidthGroup) -> dict[str, torch.Tensor]:
    if value is None:
        return {}
    if isinstance(value, torch.Tensor):
        if len(names) != 1:
            raise GrowthError(
                f"{what} for group '{g.name}' must be a mapping, since it has {len(names)} "
                f"{'producers' if what == 'fan_in' else 'consumers'}: {', '.join(names) or '(none)'}"
            )
        value = {names[0]: value}
    if not isinstance(value, Mapping):
        raise GrowthError(
            f"{what} for group '{g.name}' must be a tensor or a mapping from module name to tensor, "
            f"got {type(value).__name__}"
        )
    unknown = [n for n in value if n not in names]
    if unknown:
        raise GrowthError(
            f"{what} names {', '.join(unknown)}, not among group '{g.name}' "
            f"{'producers' if what == 'fan_in' else 'consumers'}: {', '.join(names) or '(none)'}"
        )
    for name, t in value.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            kind = f"a {t.dtype} tensor" if isinstance(t, torch.Tensor) else type(t).__name__
            raise GrowthError(f"{what} for '{name}' in group '{g.name}' must be a floating-point tensor, got {kind}")
        if not bool(torch.isfinite(t).all()):
            raise GrowthError(f"{what} for '{name}' in group '{g.name}' has NaN or infinite entries")
    return dict(value)


def _fill(
    b: BoundTensor,
    data: torch.Tensor,
    e: Expansion,
    module: nn.Module,
    module_name: str,
    explicit_in: dict[str, torch.Tensor],
    explicit_out: dict[str, torch.Tensor],
    generator: torch.Generator | None,
) -> torch.Tensor:
    n = len(e.new_pos)
    shape = new_shape(data, b.dim, n)
    given = {FAN_IN: explicit_in, FAN_OUT: explicit_out}.get(b.role, {}).get(module_name)
    if given is not None and b.tensor == "weight":
        return given.detach()
    if b.role == FAN_IN:
        units = random_units(data, b.dim, n, generator)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            units[module.padding_idx] = 0  # the padding row stays zero (it never gets a gradient)
        return units
    if b.role == MEAN:
        return mean_units(data, b.dim, n)
    if b.role == ONE:
        return data.new_ones(shape)
    if b.role in (FAN_OUT, ZERO):
        return data.new_zeros(shape)
    raise AssertionError(f"unknown role {b.role}")


def _assign(
    module: nn.Module,
    name: str,
    current: torch.Tensor,
    data: torch.Tensor,
    expansions: list[Expansion],
    optimizer: torch.optim.Optimizer | None,
    old_shape: torch.Size,
) -> list[str]:
    """Swap grown data in, keeping the Parameter object (and so optimizer references) alive.

    Returns the optimizer state keys padded with zeros for want of a fill (see ``pad_state``).
    """
    if isinstance(current, nn.Parameter):
        reset_grad_accumulator(current, data)
        current.data = data
        if current.grad is not None:
            grad = current.grad
            sparse = grad.is_sparse  # nn.Embedding(sparse=True): pad the dense form, keep the layout
            if sparse:
                grad = grad.to_dense()
            for e in expansions:
                grad = expand(grad, e, grad.new_zeros(new_shape(grad, e.dim, len(e.new_pos))))
            current.grad = grad.to_sparse() if sparse else grad
        if optimizer is not None:
            return pad_state(optimizer, current, old_shape, expansions)
    elif name in module._buffers:
        module._buffers[name] = data
    else:
        setattr(module, name, data)
    return []


def reset_grad_accumulator(param: nn.Parameter, data: torch.Tensor) -> None:
    """Drop the parameter's cached gradient accumulator before its shape changes.

    autograd caches a leaf's AccumulateGrad node (with the leaf's shape) while any graph that used
    the leaf is alive, e.g. last step's ``loss``; ``.data =`` only resets that cache on a dtype or
    device change, so a new forward would reuse the stale node and backward would fail with a
    shape mismatch.  Assigning an empty tensor of another dtype first triggers the reset.
    """
    other = torch.float16 if data.dtype != torch.float16 else torch.float32
    param.data = torch.empty(0, dtype=other, device=data.device)
