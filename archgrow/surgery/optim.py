"""Keep an optimizer's per-parameter state aligned with parameters that just grew.

Parameters grow in place (the same ``nn.Parameter`` object gets new ``.data``), so
``param_groups`` keep pointing at the live tensors and LR schedulers are unaffected.  What must
change is the state: every per-element state tensor gets entries at the new positions, and those
start where the optimizer itself starts a new parameter's state (read from torch.optim's
``_init_group`` methods), because zero is not always a neutral start:

* Rprop's ``step_size`` starts at the group's ``lr`` (``full_like(grad, lr)``).  At zero the new
  units' steps would stay ``0 * etaplus**n``: after 10 steps their fan-out barely moved.
* Adagrad's ``sum`` starts at the group's ``initial_accumulator_value`` (it damps the first steps).
* The rest start at zero, as torch starts them: momentum buffers (SGD, RMSprop, Muon), first and
  second moments (Adam, AdamW, NAdam, RAdam, SparseAdam, ``max_exp_avg_sq``), Adamax's
  ``exp_inf``, Adadelta's ``square_avg``/``acc_delta``, RMSprop's ``square_avg``/``grad_avg``,
  Rprop's ``prev``, ASGD's average ``ax``.
* Adafactor factors the second moment of a parameter with 2+ dims into ``row_var`` (last dim
  averaged away, size 1) and ``col_var`` (second to last).  They grow, with zeros, along the
  parameter's other dims; along the averaged dim they are means and keep their size 1.

Scalar state (``step``, NAdam's ``mu_product``, ASGD's ``eta``/``mu``) is kept, as the authors'
code does (algorithms.md §6.6).

The fills form a registry looked up along the optimizer's MRO (a subclass of Adam inherits Adam's),
extended with :func:`register_optimizer_state`.  A key without a fill (an optimizer archgrow does not
know, or a key a newer torch added) is padded with zeros and named in a warning, since zero may be
wrong for it.  A per-parameter tensor of any other shape cannot be aligned and is refused before
the model changes; so is LBFGS, whose state is flattened across all parameters.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from archgrow.errors import GrowthError, RegistrationError
from archgrow.surgery.tensors import Expansion, expand, new_shape

Fill = float | Callable[[Mapping[str, Any]], float]
"""A new entry's value: a constant, or a function of the parameter's param group (``group["lr"]``...)."""


@dataclass(frozen=True)
class _Rule:
    fill: Fill
    reduced: int | None = None  # a factored statistic's averaged dim (from the end): it stays size 1


_RULES: dict[type[torch.optim.Optimizer], dict[str, _Rule]] = {}


def register_optimizer_state(optimizer_cls: type[torch.optim.Optimizer], fills: Mapping[str, Fill]) -> None:
    """Say what a grown parameter's new state entries start at, per state key, for an optimizer.

    ``fills`` maps a key of ``optimizer.state[param]`` to a constant or to ``fn(param_group) ->
    float``: the value your optimizer gives that state for a parameter it has not seen yet.
    Subclasses inherit it; registering a key again replaces its fill.  Keys of state tensors shaped
    like the parameter that have no fill are padded with zeros, with a warning.
    """
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        raise RegistrationError(f"register_optimizer_state: {optimizer_cls!r} is not a torch.optim.Optimizer subclass")
    if not isinstance(fills, Mapping):
        raise RegistrationError(
            f"register_optimizer_state({optimizer_cls.__name__}): fills must map state keys to fills"
        )
    for key, fill in fills.items():
        if not isinstance(key, str) or isinstance(fill, bool) or not (isinstance(fill, numbers.Real) or callable(fill)):
            raise RegistrationError(
                f"register_optimizer_state({optimizer_cls.__name__}): {key!r}: {fill!r} must be a state key (str) "
                "mapped to a number or a function of the param group returning one"
            )
    _register(optimizer_cls, {key: _Rule(fill) for key, fill in fills.items()})


def _register(cls: type[torch.optim.Optimizer], rules: Mapping[str, _Rule]) -> None:
    _RULES.setdefault(cls, {}).update(rules)


def _rules(cls: type) -> dict[str, _Rule]:
    """The fills ``cls`` has, its own over its bases'."""
    out: dict[str, _Rule] = {}
    for base in reversed(cls.__mro__):
        out.update(_RULES.get(base, {}))
    return out


def _lr(group: Mapping[str, Any]) -> float:
    return float(group["lr"])


def _initial_accumulator(group: Mapping[str, Any]) -> float:
    # torch reads the constructor's value (defaults); a group's own value is what it meant to use
    return float(group["initial_accumulator_value"])


_ZERO = _Rule(0.0)
for _name, _fills in {
    "SGD": {"momentum_buffer": _ZERO},
    "Adam": {"exp_avg": _ZERO, "exp_avg_sq": _ZERO, "max_exp_avg_sq": _ZERO},
    "AdamW": {"exp_avg": _ZERO, "exp_avg_sq": _ZERO, "max_exp_avg_sq": _ZERO},  # older torch: not an Adam
    "Adamax": {"exp_avg": _ZERO, "exp_inf": _ZERO},
    "NAdam": {"exp_avg": _ZERO, "exp_avg_sq": _ZERO},
    "RAdam": {"exp_avg": _ZERO, "exp_avg_sq": _ZERO},
    "SparseAdam": {"exp_avg": _ZERO, "exp_avg_sq": _ZERO},
    "Adagrad": {"sum": _Rule(_initial_accumulator)},
    "Adadelta": {"square_avg": _ZERO, "acc_delta": _ZERO},
    "RMSprop": {"square_avg": _ZERO, "momentum_buffer": _ZERO, "grad_avg": _ZERO},
    "Rprop": {"prev": _ZERO, "step_size": _Rule(_lr)},
    "ASGD": {"ax": _ZERO},
    "Adafactor": {"row_var": _Rule(0.0, reduced=-1), "col_var": _Rule(0.0, reduced=-2), "variance": _ZERO},
    "Muon": {"momentum_buffer": _ZERO},
}.items():
    if isinstance(getattr(torch.optim, _name, None), type):  # Adafactor, Muon: recent torch only
        _register(getattr(torch.optim, _name), _fills)
del _name, _fills


def check_state(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor]) -> None:
    """Refuse, before anything changes, an optimizer whose state for ``params`` cannot follow growth."""
    _refuse_lbfgs(optimizer)
    rules = _rules(type(optimizer))
    for param in params:
        for key, value in optimizer.state.get(param, {}).items():
            _fixed_dims(optimizer, key, value, param.shape, rules.get(key))


def _refuse_lbfgs(optimizer: torch.optim.Optimizer) -> None:
    if isinstance(optimizer, torch.optim.LBFGS):
        raise GrowthError(
            "torch.optim.LBFGS keeps flattened state across all parameters and cannot follow growth; "
            "use a per-parameter optimizer (SGD, Adam, AdamW, RMSprop, Adagrad, ...)"
        )


def _fixed_dims(
    optimizer: torch.optim.Optimizer, key: str, value: Any, old_shape: torch.Size, rule: _Rule | None
) -> tuple[int, ...] | None:
    """The dims of state ``key`` that do not grow with the parameter; None: not per element, kept."""
    if not isinstance(value, torch.Tensor):
        return None
    shape, fixed = list(old_shape), ()
    if rule is not None and rule.reduced is not None and len(shape) >= 2:
        fixed = (rule.reduced % len(shape),)
        shape[fixed[0]] = 1
    if value.ndim > 0 and list(value.shape) == shape:
        return fixed
    if value.numel() == 1:
        return None
    raise GrowthError(
        f"{type(optimizer).__name__}.state[{key!r}] has shape {tuple(value.shape)} for a parameter of shape "
        f"{tuple(old_shape)}: archgrow grows per-parameter state shaped like its parameter (or a scalar), so it "
        "cannot tell which entries belong to the new units"
    )


def pad_state(
    optimizer: torch.optim.Optimizer,
    param: torch.Tensor,
    old_shape: torch.Size,
    expansions: Sequence[Expansion],
) -> list[str]:
    """Grow each per-element state tensor of ``param`` along ``expansions``, new entries at their fill.

    Returns the keys padded with zeros for want of a fill, for the caller to warn about once.
    """
    _refuse_lbfgs(optimizer)
    state = optimizer.state.get(param)
    if not state:
        return []
    rules = _rules(type(optimizer))
    zero_filled = []
    for key, value in list(state.items()):
        rule = rules.get(key)
        fixed = _fixed_dims(optimizer, key, value, old_shape, rule)
        if fixed is None:
            continue
        if rule is None:
            zero_filled.append(key)
        fill: complex = _value(rule.fill, optimizer, param) if rule is not None else 0.0
        if value.is_complex():  # as torch does: real and imaginary parts are two real numbers
            fill = complex(fill, fill)
        for e in expansions:
            if e.dim % value.ndim not in fixed:
                value = expand(value, e, value.new_full(new_shape(value, e.dim, len(e.new_pos)), fill))
        state[key] = value
    return zero_filled


def _value(fill: Fill, optimizer: torch.optim.Optimizer, param: torch.Tensor) -> float:
    if not callable(fill):
        return float(fill)
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    return float(fill(group))


def warn_zero_filled(optimizer: torch.optim.Optimizer, keys: Collection[str], stacklevel: int = 3) -> None:
    """One warning per grow call (and, under Python's default filter, per message and call site)."""
    if not keys:
        return
    cls = type(optimizer)
    names = ", ".join(repr(k) for k in sorted(keys))
    warnings.warn(
        f"{cls.__module__}.{cls.__qualname__}: archgrow has no fill for state {names}, so the grown entries "
        f"were set to 0. If a fresh {cls.__name__} starts that state elsewhere, register its value: "
        f"archgrow.register_optimizer_state({cls.__name__}, {{{sorted(keys)[0]!r}: value_or_fn_of_param_group}})",
        stacklevel=stacklevel,
    )


__all__ = ["Fill", "check_state", "pad_state", "register_optimizer_state", "warn_zero_filled"]
