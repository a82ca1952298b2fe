"""One record per op and one rule object per layer type: everything archgrow knows about them.

An :class:`OpInfo` holds, for a function, a ``Tensor`` method or an operator, its layout rule and
the facts the other passes ask about (element-wise or not, random, identity in eval mode, gradient
zero at zero).  A :class:`LayerRule` does the same for a module type and also says which of the
module's tensors and attributes grow.  :class:`OpTable` looks them up: functions by object (or
qualified name, for functions libraries hide from fx with ``torch.fx.wrap``), methods by name
(an in-place ``add_`` falls back to ``add``), layers along the module type's MRO, so a subclass
inherits its base class's rule unless it registers its own.

The built-in knowledge (``archgrow.ops.tensor_ops``, ``archgrow.ops.layers``) is registered the
same way a user's is (:func:`archgrow.register_op`, :func:`archgrow.register_layer`); ``trace``
also takes per-call additions (``trace(..., rules=...)``) that apply to that trace only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from archgrow.errors import RegistrationError

if TYPE_CHECKING:
    from archgrow.ops.context import RuleContext

# Words in an op's name that mean it draws random numbers (for ops nobody described).
RANDOM_WORDS = ("rand", "dropout", "bernoulli", "rrelu", "normal", "uniform", "stochastic", "multinomial")


# (args, kwargs) of a traced call -> (args, kwargs) of the same call in eval mode (OpInfo.in_eval)
InEval = Callable[[tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]]]


@dataclass(frozen=True)
class OpInfo:
    """What archgrow knows about one function, method or operator.

    ``rule(ctx)`` returns the node's analysed output (``None``: no layout rule, widths reaching
    the op freeze).  The flags answer the other passes: ``elementwise`` (one output position per
    input position), ``random`` (draws random numbers), ``identity_in_eval`` (dropout-like: the
    input itself in eval mode), ``dead_at_zero`` (gradient 0 at input 0, like ReLU),
    ``multiplicative`` (scales its input: a parameter used through it is a scale, so its new
    entries take the mean of the old ones).  ``in_eval(args, kwargs)`` rewrites a traced call's
    arguments into what the op does in eval mode: fx records the training-mode arguments of a
    function called inside a module traced in training mode (``F.batch_norm(..., training=True)``
    in timm's ``BatchNormAct2d``), and shape recording and probe replays, which run in eval mode,
    must neither need a batch of two nor touch running statistics.  An op with ``in_eval``
    depends on the mode.
    """

    rule: Callable[[RuleContext], Any] | None = None
    elementwise: bool = False
    random: bool = False
    identity_in_eval: bool = False
    dead_at_zero: bool = False
    multiplicative: bool = False
    in_eval: InEval | None = None


class LayerRule:
    """How one module type changes layouts, and which of its tensors grow with which width.

    Subclass it and implement :meth:`apply`, using the context's calls: ``ctx.new_width`` for a
    width the layer creates, ``ctx.member`` to list the module in a group, ``ctx.bind`` /
    ``ctx.bind_attr`` for the tensor dims and attributes that must grow, ``ctx.unknown`` where the
    rule does not apply.  Class attributes answer the other passes: ``mode_free`` (the same output
    in training and eval mode, no randomness), ``dead_at_zero`` (gradient 0 at input 0),
    ``normalizes`` (a norm layer whose ``one``-role weights scale new channels).  A rule whose
    answer depends on the instance (a composite whose activation is a module of its own) overrides
    :meth:`is_mode_free` / :meth:`is_dead_at_zero`, which the passes ask, and :meth:`whole`.
    """

    mode_free = False
    dead_at_zero = False
    normalizes = False

    def apply(self, ctx: RuleContext, name: str, module: nn.Module) -> Any:
        raise NotImplementedError

    def whole(self, module: nn.Module, ops: OpTable) -> bool:
        """Whether this rule describes ``module`` as one leaf.  A leaf-registered composite says no
        for an instance holding a part it cannot describe, and fx then traces into that instance."""
        return True

    def is_mode_free(self, module: nn.Module, ops: OpTable) -> bool:
        return self.mode_free

    def is_dead_at_zero(self, module: nn.Module, ops: OpTable) -> bool:
        return self.dead_at_zero


OpTarget = Callable[..., Any] | str


class OpTable:
    """Op records and layer rules by target; see the module docstring."""

    def __init__(self) -> None:
        self._functions: dict[Any, OpInfo] = {}
        self._qualified: dict[str, OpInfo] = {}
        self._methods: dict[str, OpInfo] = {}
        self._layers: dict[type, LayerRule] = {}
        self._leaf_types: tuple[type, ...] = ()  # a tuple: isinstance runs on every module fx meets

    # ------------------------------------------------------------------ registering
    def add_op(self, target: OpTarget, info: OpInfo, *, method: bool = False, replace_existing: bool = True) -> None:
        """``target``: a function object; a qualified name ``"package.module.function"``; or, with
        ``method=True``, a ``Tensor`` method name.  ``replace_existing=False`` keeps an earlier entry."""
        if method:
            if not isinstance(target, str) or not target.isidentifier():
                raise RegistrationError(f"a Tensor method is registered by its name, like 'relu'; got {target!r}")
            table: dict[Any, OpInfo] = self._methods
        elif isinstance(target, str):
            if "." not in target:
                raise RegistrationError(
                    f"op {target!r}: give the function itself, its qualified name 'package.module.function', or a "
                    "Tensor method name with method=True"
                )
            table = self._qualified
        elif callable(target):
            try:
                hash(target)
            except TypeError:
                raise RegistrationError(f"op {target!r} is not hashable; register its qualified name instead") from None
            table = self._functions
        else:
            raise RegistrationError(f"op target must be a function, a qualified name or a method name; got {target!r}")
        if replace_existing or target not in table:
            table[target] = info

    def add_layer(self, module_type: type, rule: LayerRule, *, leaf: bool = False) -> None:
        """``leaf``: fx does not trace into modules of this type (the rule describes them whole)."""
        if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
            raise RegistrationError(f"register_layer: {module_type!r} is not an nn.Module subclass")
        if not isinstance(rule, LayerRule):
            raise RegistrationError(
                f"register_layer({module_type.__name__}): the rule must be a LayerRule instance "
                f"(archgrow.ops.LayerRule), got {rule!r}"
            )
        self._layers[module_type] = rule
        if leaf:
            self._add_leaf_type(module_type)

    def add_leaf(self, module_type: type) -> None:
        """fx does not trace into modules of ``module_type``; the layer rule of its nearest
        registered base describes them (timm's ``Conv2dSame`` is a conv whose padding fx cannot
        trace)."""
        if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
            raise RegistrationError(f"add_leaf: {module_type!r} is not an nn.Module subclass")
        if not any(klass in self._layers for klass in module_type.__mro__):
            raise RegistrationError(
                f"add_leaf({module_type.__name__}): no base class has a layer rule; register one with register_layer"
            )
        self._add_leaf_type(module_type)

    def _add_leaf_type(self, module_type: type) -> None:
        if module_type not in self._leaf_types:
            self._leaf_types += (module_type,)

    def remove_op(self, target: OpTarget, *, method: bool = False) -> None:
        """Forget an op (tests, or a plugin being unloaded); unknown targets are ignored."""
        if method:
            self._methods.pop(target, None)  # type: ignore[arg-type]
        elif isinstance(target, str):
            self._qualified.pop(target, None)
        else:
            self._functions.pop(target, None)

    def remove_layer(self, module_type: type) -> None:
        self._layers.pop(module_type, None)
        self._leaf_types = tuple(t for t in self._leaf_types if t is not module_type)

    def copy(self) -> OpTable:
        other = OpTable()
        other._functions = dict(self._functions)
        other._qualified = dict(self._qualified)
        other._methods = dict(self._methods)
        other._layers = dict(self._layers)
        other._leaf_types = self._leaf_types
        return other

    def with_rules(self, rules: Iterable[Registration]) -> OpTable:
        """A copy with per-call registrations added (``trace(..., rules=...)``)."""
        table = self.copy()
        for registration in rules:
            if not isinstance(registration, Registration):
                raise RegistrationError(
                    "trace(rules=...) takes registrations made with archgrow.ops.op(...) or archgrow.ops.layer(...); "
                    f"got {registration!r}"
                )
            registration.apply(table)
        return table

    # ------------------------------------------------------------------ lookup
    def function(self, fn: Any) -> OpInfo | None:
        try:
            found = self._functions.get(fn)
        except TypeError:  # unhashable target
            found = None
        if found is not None:
            return found
        return self._qualified.get(qualified_name(fn))

    def method(self, name: str) -> OpInfo | None:
        found = self._methods.get(name)
        if found is None and name.endswith("_") and not name.startswith("_"):
            found = self._methods.get(name[:-1])  # in-place variant
        return found

    def layer(self, module: nn.Module) -> LayerRule | None:
        return self.type_rule(type(module))

    def type_rule(self, module_type: type) -> LayerRule | None:
        """The rule describing modules of ``module_type``: its own, or its nearest base's."""
        for klass in module_type.__mro__:
            if klass in self._layers:
                return self._layers[klass]
        return None

    def rule_type(self, module: nn.Module) -> type | None:
        """The class along ``module``'s MRO whose layer rule describes it (its own, or a base's)."""
        for klass in type(module).__mro__:
            if klass in self._layers:
                return klass
        return None

    def is_leaf(self, module: nn.Module) -> bool:
        """fx does not trace into ``module``: its type was registered as a leaf and its rule can
        describe this instance whole (:meth:`LayerRule.whole`)."""
        if not self._leaf_types or not isinstance(module, self._leaf_types):
            return False
        rule = self.layer(module)
        return rule is None or rule.whole(module, self)

    # ------------------------------------------------------------------ facts for other passes
    def info(self, op: str, target: Any) -> OpInfo | None:
        """The record of an fx node's target (``op`` is the node's ``call_function`` / ``call_method``)."""
        if op == "call_function":
            return self.function(target)
        if op == "call_method":
            return self.method(str(target))
        return None

    def user_info(self, used_by: Any) -> OpInfo | None:
        """The record of what used a parameter: a function object, or a method's name."""
        return self.method(used_by) if isinstance(used_by, str) else self.function(used_by)

    def is_random(self, op: str, target: Any, name: str) -> bool:
        """Draws random numbers: as recorded, or, for ops nobody described, by its name."""
        info = self.info(op, target)
        if info is not None and info.random:
            return True
        return any(word in name.lower() for word in RANDOM_WORDS)


def qualified_name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__name__', '')}"


@dataclass(frozen=True)
class Registration:
    """One op or layer description, to register globally or to pass to ``trace(rules=...)``."""

    target: Any
    info: OpInfo | None = None
    layer_rule: LayerRule | None = None
    method: bool = False
    leaf: bool = True

    def apply(self, table: OpTable) -> None:
        if self.layer_rule is not None:
            table.add_layer(self.target, self.layer_rule, leaf=self.leaf)
        else:
            table.add_op(self.target, self.info or OpInfo(), method=self.method)


def op(
    target: OpTarget,
    rule: Callable[[RuleContext], Any] | None = None,
    *,
    elementwise: bool = False,
    random: bool = False,
    identity_in_eval: bool = False,
    dead_at_zero: bool = False,
    multiplicative: bool = False,
    method: bool = False,
    in_eval: InEval | None = None,
) -> Registration:
    """Describe an op (see :func:`register_op`) without registering it, e.g. for ``trace(rules=...)``."""
    from archgrow.ops.tensor_ops import elementwise_rule

    if rule is None and elementwise:
        rule = elementwise_rule
    info = OpInfo(rule, elementwise, random, identity_in_eval, dead_at_zero, multiplicative, in_eval)
    return Registration(target, info=info, method=method)


def layer(module_type: type, rule: LayerRule, *, leaf: bool = True) -> Registration:
    """Describe a layer type (see :func:`register_layer`) without registering it."""
    return Registration(module_type, layer_rule=rule, leaf=leaf)


OPS = OpTable()  # what every trace starts from


def register_op(target: OpTarget, rule: Callable[[RuleContext], Any] | None = None, **facts: Any) -> None:
    """Tell archgrow how a function (or ``Tensor`` method, with ``method=True``) treats widths.

    ``elementwise=True`` is enough for an activation: one output position per input position,
    with broadcasting.  Otherwise give ``rule(ctx)`` returning the node's analysed output (see
    :mod:`archgrow.ops.context`).  The other facts, as for :func:`op`: ``random``,
    ``identity_in_eval``, ``dead_at_zero``, ``multiplicative``, ``in_eval`` (see :class:`OpInfo`).
    Functions that fx does not trace into are those wrapped with ``torch.fx.wrap`` or passed as
    ``trace(..., autowrap_functions=...)``.
    """
    op(target, rule, **facts).apply(OPS)


def register_layer(module_type: type, rule: LayerRule, *, leaf: bool = True) -> None:
    """Tell archgrow how modules of ``module_type`` (and its subclasses) treat widths.

    ``leaf=True`` (default) keeps fx from tracing into them, so the rule sees the whole module.
    """
    layer(module_type, rule, leaf=leaf).apply(OPS)


__all__ = [
    "OPS",
    "InEval",
    "LayerRule",
    "OpInfo",
    "OpTable",
    "Registration",
    "layer",
    "op",
    "qualified_name",
    "register_layer",
    "register_op",
]
