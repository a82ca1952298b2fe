"""What an op or layer rule works with: the layout state of the graph so far and one node.

Rules never keep state of their own.  The layout pass hands each rule a :class:`RuleContext` for
the node being analysed: the analysed values of earlier nodes (``ctx.meta``), the node's recorded
runtime value (``ctx.out``), the width variables, and the calls that record what growth must
change (``ctx.new_width``, ``ctx.member``, ``ctx.bind``, ``ctx.bind_attr``).  A rule that meets a
case it does not describe returns ``ctx.unknown(what)`` (or raises :class:`NoRule`): every width
reaching the node is then frozen with that reason, never guessed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import nn

from archgrow.errors import RegistrationError
from archgrow.ir.attribute_sizes import STRUCTURAL_ATTRIBUTES, SizeSource, size_source
from archgrow.ir.bindings import AttrBinding, MemberRecord, TensorBinding
from archgrow.ir.captured import SIZES_AS_NUMBERS, CapturedGraph
from archgrow.ir.layout import Layout, Seg, TensorMeta, WidthVars

if TYPE_CHECKING:
    from archgrow.ops.registry import OpTable


# Module attributes whose int value a forward passes as a size (``x.reshape(B, N, self.num_heads,
# self.head_dim)``): fx bakes them into the graph as numbers, so a size written as a number equal
# to one of these attributes of the module running the code is taken to be that attribute, and
# growth updates it.  Each name says what it counts ("heads", "head_dim", "width": a whole
# width, or "part": one part of an equal split, as GPT-2's ``qkv.split(self.split_size, dim)``),
# so that equal values of different kinds (4 heads of 4 channels) are told apart by where the size
# stands.  Extend with :func:`register_size_attribute`.
SIZE_ATTRIBUTES: dict[str, str] = {
    **dict.fromkeys("num_heads heads n_head n_heads num_attention_heads num_kv_heads n_kv_heads num_key_value_heads".split(), "heads"),
    **dict.fromkeys("head_dim dim_head d_head head_size attention_head_size dim_head_qk dim_head_v".split(), "head_dim"),
    **dict.fromkeys("attn_dim all_head_size inner_dim hidden_dim hidden_size embed_dim".split(), "width"),
    "split_size": "part",
}
SIZE_KINDS = ("heads", "head_dim", "width", "part")
RESHAPE_KINDS = ("heads", "head_dim", "width")  # what a reshape's sizes can stand for


def register_size_attribute(name: str, kind: str = "width") -> None:
    """Module attributes named ``name`` hold a size a forward passes to ``reshape`` / ``view``
    (``kind``: "heads", "head_dim", "width", or "part" for a ``split`` size): a number equal to one,
    in the module that runs the reshape or split and where that kind of size stands, follows growth
    through it."""
    if kind not in SIZE_KINDS:
        raise RegistrationError(f"register_size_attribute({name!r}): kind must be one of {SIZE_KINDS}, not {kind!r}")
    SIZE_ATTRIBUTES[name] = kind


@dataclass(frozen=True)
class TensorDim:
    """One element of a shape the code built from a tensor's shape (``x.shape[:-1] + (-1,)``):
    that dim's size, following its layout (None: a dim that never grows)."""

    layout: Layout | None
    size: int

    def __repr__(self) -> str:
        return f"{self.size} (read from a tensor)"


class NoRule(Exception):
    """A rule does not describe this call (an unusual argument, an unsupported variant); the widths
    reaching the node freeze with ``what`` as the reason.  Any other exception in a rule is a bug."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def is_tensor(skel: Any) -> bool:
    """A recorded runtime value that is a tensor: ``("tensor", shape, dtype)``."""
    return isinstance(skel, tuple) and len(skel) == 3 and skel[0] == "tensor"


def fixed(skel: Any) -> Any:
    """Analysed value for a runtime value that carries no width."""
    if is_tensor(skel):
        return TensorMeta(skel[1], (None,) * len(skel[1]))
    if isinstance(skel, (tuple, list)):
        return type(skel)(fixed(s) for s in skel)
    if isinstance(skel, dict):
        return {k: fixed(v) for k, v in skel.items()}
    return skel


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def arg(node: fx.Node, pos: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of a call, given by position ``pos`` or by keyword."""
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


@dataclass
class LayoutState:
    """Everything the layout pass learns, shared by all rules and read by the passes after it."""

    gm: CapturedGraph
    values: dict[fx.Node, Any]
    model: nn.Module
    ops: OpTable
    modules: dict[str, nn.Module] = field(default_factory=dict)
    vars: WidthVars = field(default_factory=WidthVars)
    meta: dict[fx.Node, Any] = field(default_factory=dict)
    tensor_bindings: list[TensorBinding] = field(default_factory=list)
    attr_bindings: list[AttrBinding] = field(default_factory=list)
    members: list[MemberRecord] = field(default_factory=list)
    called: dict[str, tuple[list[Layout | None], Any]] = field(default_factory=dict)  # layer -> first call
    size_layout: dict[fx.Node, Layout | None] = field(default_factory=dict)  # int nodes = size of a dim
    shape_of: dict[fx.Node, TensorMeta] = field(default_factory=dict)  # torch.Size nodes = shape of a tensor
    taint: dict[fx.Node, list[Layout | None]] = field(default_factory=dict)  # ints derived from sizes
    param_vars: dict[str, dict[int, int]] = field(default_factory=dict)  # get_attr parameter -> dim -> var
    param_users: dict[str, set[Any]] = field(default_factory=dict)
    direct_params: dict[str, str] = field(default_factory=dict)  # parameter path -> node using it directly
    param_roles: dict[str, str] = field(default_factory=dict)  # parameter path -> role, when a rule knows it
    bound_params: dict[str, str] = field(default_factory=dict)  # parameter path -> node whose rule bound it
    sourced_at: dict[tuple[str, str, int | None], set[str]] = field(default_factory=dict)  # attribute -> nodes binding it

    @functools.cached_property
    def sizes_as_numbers(self) -> bool:
        """Does the front-end record sizes read from tensors as plain numbers (see ``SIZES_AS_NUMBERS``)?"""
        return bool(self.gm.meta.get(SIZES_AS_NUMBERS))


def bind_tensor(state: LayoutState, name: str, module: nn.Module, tensor: str, dim: int, layout: Layout | None, role: str) -> None:
    """Dimension ``dim`` of ``module.<tensor>`` grows with ``layout``; new entries play ``role``."""
    if layout is None:
        return
    t = getattr(module, tensor, None)
    if isinstance(t, torch.Tensor):
        is_buffer = any(n == tensor for n, _ in module.named_buffers(recurse=False))
        state.tensor_bindings.append(TensorBinding(name, tensor, dim, layout, role, is_buffer))


def freeze_layout(vars_: WidthVars, layout: Layout | None, reason: str) -> None:
    for v in vars_.layout_vars(layout):
        vars_.freeze(v, reason)


class RuleContext:
    """The state plus the node a rule is analysing (see the module docstring)."""

    def __init__(self, state: LayoutState, node: fx.Node):
        self.state = state
        self.node = node
        self.vars = state.vars
        self.consumed: set[fx.Node] = set()  # size ints this node used as "follows growth"

    # ------------------------------------------------------------------ reading
    @property
    def out(self) -> Any:
        """The node's recorded runtime value (``("tensor", shape, dtype)`` for a tensor)."""
        return self.state.values.get(self.node)

    @property
    def where(self) -> str:
        return f"node '{self.node.name}'"

    @property
    def ops(self) -> OpTable:
        return self.state.ops

    def meta(self, a: Any) -> Any:
        """The analysed value of an argument (a node's layout meta; constants as they are)."""
        return self.state.meta.get(a) if isinstance(a, fx.Node) else a

    def module(self, name: str) -> nn.Module:
        return self.state.modules[name]

    def tensors(self, *args: Any) -> list[TensorMeta]:
        """Every analysed tensor among ``args`` (nested in tuples, lists, dicts and slices)."""
        found: list[TensorMeta] = []

        def walk(a: Any) -> None:
            if isinstance(a, fx.Node):
                walk(self.state.meta.get(a))
            elif isinstance(a, TensorMeta):
                found.append(a)
            elif isinstance(a, (tuple, list)):
                for x in a:
                    walk(x)
            elif isinstance(a, dict):
                for x in a.values():
                    walk(x)
            elif isinstance(a, slice):
                walk((a.start, a.stop, a.step))

        walk(args)
        return found

    def fixed(self) -> Any:
        """This node's value as carrying no width."""
        return fixed(self.out)

    # ------------------------------------------------------------------ constraints
    def freeze(self, layout: Layout | None, reason: str) -> None:
        freeze_layout(self.vars, layout, reason)

    def freeze_all(self, metas: list[TensorMeta], reason: str) -> None:
        for t in metas:
            for lay in t.dims:
                self.freeze(lay, reason)

    def not_preserving(self, layout: Layout | None, reason: str) -> None:
        for v in self.vars.layout_vars(layout):
            self.vars.mark_not_preserving(v, reason)

    def same_structure(self, a: Layout, b: Layout) -> bool:
        return len(a) == len(b) and all(
            (x.var is None) == (y.var is None) and x.inner == y.inner and self.vars.seg_size(x) == self.vars.seg_size(y)
            for x, y in zip(a, b, strict=True)
        )

    def unify(self, a: Layout | None, b: Layout | None) -> Layout | None:
        """Two dimensions that must stay equal: tie their widths (or freeze what cannot be tied)."""
        if a is None and b is None:
            return None
        if a is None or b is None:
            self.freeze(a or b, f"tied to a fixed-size dimension at {self.where}")
            return a or b
        if a == b:
            return a
        if not self.same_structure(a, b):
            # A width refined by an equal split after this layout was recorded: compare its parts.
            ra, rb = self.vars.resolve(a), self.vars.resolve(b)
            ra = self._split_like(ra, rb)
            rb = self._split_like(rb, ra)
            ra = self._blocks_like(ra, rb)
            rb = self._blocks_like(rb, ra)
            if (ra != a or rb != b) and self.same_structure(ra, rb):
                a, b = ra, rb
        if not self.same_structure(a, b):
            reason = (
                f"{self.where} ties '{self.vars.describe(a)}' to '{self.vars.describe(b)}', "
                "which are laid out differently"
            )
            self.freeze(a, reason)
            self.freeze(b, reason)
            return a
        for x, y in zip(a, b, strict=True):
            if x.var is not None:
                self.vars.union(x.var, y.var, self.where)
        return a

    def _split_like(self, whole: Layout, parts: Layout) -> Layout:
        """``whole``, one width, refined into equal parts when it is tied to the equal parts of
        another width (``cat(x.chunk(2)) + conv(y)``): the same positions must grow."""
        vars_ = self.vars
        if len(whole) != 1 or whole[0].var is None or len(parts) < 2:
            return whole
        seg = whole[0]
        roots = {vars_.find(p.var) for p in parts if p.var is not None}
        if len(roots) > 1:
            return self._cut_like(whole, parts, roots)
        if (
            len(roots) != 1
            or vars_.find(seg.var) in roots
            or vars_.find(seg.var) in vars_.parts  # only on a width tied to its own part (frozen)
            or any(p.var is None or p.inner != seg.inner for p in parts)
            or vars_.seg_size(seg) != vars_.layout_size(parts)
        ):
            return whole
        return tuple(Seg(p.var, p.inner * seg.inner) for p in vars_.refine(seg.var, len(parts)))

    def _cut_like(self, whole: Layout, parts: Layout, roots: set[int]) -> Layout:
        """``whole``, one width, cut where ``parts``, distinct widths laid end to end, meet (a
        squeeze-excitation gate multiplied with the concatenated outputs of MixNet's mixed convs):
        each run of the gate grows with the width it is tied to."""
        vars_ = self.vars
        seg = whole[0]
        if (
            vars_.find(seg.var) in roots  # type: ignore[arg-type]
            or vars_.find(seg.var) in vars_.parts  # type: ignore[arg-type]
            or any(p.var is None or p.inner != seg.inner for p in parts)
            or vars_.seg_size(seg) != vars_.layout_size(parts)
        ):
            return whole
        offset = 0
        for p in parts[:-1]:
            offset += vars_.seg_size(p) // seg.inner
            if not vars_.cut(seg.var, offset):  # type: ignore[arg-type]
                return whole
        return vars_.resolve(whole)

    def _blocks_like(self, whole: Layout, blocks: Layout) -> Layout:
        """``whole``, one width, counted in blocks when it is tied to a width counted in blocks
        (a residual stream added to an ``nn.MultiheadAttention`` output, grown by whole heads)."""
        vars_ = self.vars
        if len(whole) != 1 or len(blocks) != 1 or whole[0].var is None or blocks[0].var is None:
            return whole
        seg, other = whole[0], blocks[0]
        if (
            other.inner <= seg.inner
            or other.inner % seg.inner
            or vars_.find(seg.var) in vars_.parts
            or vars_.seg_size(seg) != vars_.seg_size(other)
            or vars_.width[vars_.find(seg.var)] % (other.inner // seg.inner)
        ):
            return whole
        unit = vars_.coarsen(seg.var, other.inner // seg.inner)[0]
        return (Seg(unit.var, other.inner),)

    def unify_all(self, layouts: list[Layout | None]) -> Layout | None:
        if not layouts:
            return None
        result = layouts[0]
        for lay in layouts[1:]:
            result = self.unify(result, lay)
        return result

    def unknown(self, what: str) -> Any:
        """No rule for this call: freeze every width reaching it; its outputs carry none."""
        hint = self.leaf_hint()
        if not hint:  # the way out is a rule of the user's own
            how = "archgrow.register_layer for its type" if self.node.op == "call_module" else "archgrow.register_op"
            hint = f" (to grow the widths reaching it, describe it with {how}: docs/extending.md)"
        reason = f"{what} at {self.where}: no width rule{hint}"
        self.freeze_all(self.tensors(self.node.args, self.node.kwargs), reason)
        return self.fixed()

    def leaf_hint(self) -> str:
        """The way out when the call sits inside a module a layer rule could describe whole.

        fx traces into subclasses of torch layers that compute their own forward; where their ops
        have no rule, tracing the module as a leaf hands it to the layer rule of its type or of a
        base class.  A base's rule is right only if the subclass computes what the base does with
        the same tensors (a weight-standardised conv does not), which the hint says.
        """
        node = self.node
        if node.op not in ("call_function", "call_method"):
            return ""
        stack = node.meta.get("nn_module_stack") or {}
        for path, _ in reversed(list(stack.values())):
            module = self.state.modules.get(path)
            rule = self.ops.layer(module) if module is not None else None
            if rule is None or not rule.whole(module, self.ops):
                continue  # no rule, or one that cannot describe this instance whole
            base = self.ops.rule_type(module)
            kind = type(module).__name__
            if base is type(module):
                return f" (inside '{path}': trace with leaf_modules=[{kind}] so that its layer rule describes it whole)"
            return (
                f" (inside '{path}', a {kind}: trace with leaf_modules=[{kind}] to describe it by the layer rule of "
                f"{base.__name__}, if it computes what {base.__name__} does with the same tensors; otherwise "
                f"describe {kind} with archgrow.register_layer)"
            )
        return ""

    def tie_parameter(self, node: fx.Node, bound: dict[int, Layout], what: str) -> None:
        """A parameter read through ``get_attr`` whose dims this node's rule bound (a functional
        layer's weight, see :mod:`archgrow.ops.functional`).

        Its own width variables (one per dim, from the ``get_attr``) follow the layouts they were
        bound to, so any other use of the same parameter grows with them; a dim that cannot
        follow one width whole freezes, which matters only if something else reads it.  The
        parameters pass then leaves the parameter to this rule instead of binding it again.
        """
        target = str(node.target)
        var_of = self.state.param_vars.get(target)
        if var_of is None:
            return  # a buffer: the layout pass gives buffers no width of their own
        for d, v in var_of.items():
            lay = bound.get(d)
            if lay is not None and len(lay) == 1 and lay[0].var is not None and lay[0].inner == 1:
                self.vars.union(v, lay[0].var, self.where)
            else:
                self.vars.freeze(v, f"dim {d} of '{target}' does not follow one width of {what} at {self.where}")
        self.state.bound_params.setdefault(target, self.node.name)

    def adaptive(self, size: Any, layout: Layout) -> bool:
        """Does a size argument follow growth (-1, or read from a tensor with the same width)?"""
        if isinstance(size, TensorDim):
            if size.layout is None:
                return False
            self.unify(layout, size.layout)
            return True
        if isinstance(size, int) and not isinstance(size, bool):
            return size == -1
        state = self.state
        if isinstance(size, fx.Node) and size in state.size_layout and state.size_layout[size] is not None:
            self.unify(layout, state.size_layout[size])
            self.consumed.add(size)
            return True
        repeated = self._repeated_size(size)
        if repeated is not None and self._same_widths(repeated, layout):
            self.consumed.add(size)
            return True
        return False

    def _repeated_size(self, size: Any) -> Layout | None:
        """``C * n``, a size read from a tensor times a number (grouped-query attention's k heads
        times the query heads per k head, merged back into one dim): the layout of a dim holding
        each channel of ``C`` ``n`` times in a row, or None for any other size.  Only checked
        against the dim it sizes, never tied to it: the number may count something else that grows
        (MobileNetV4's value dim times ``self.num_heads``)."""
        if not (isinstance(size, fx.Node) and size.op == "call_function" and size.target is operator.mul):
            return None
        if len(size.args) != 2 or size.kwargs:
            return None
        read, times = size.args if isinstance(size.args[0], fx.Node) else size.args[::-1]
        found = self.state.size_layout.get(read) if isinstance(read, fx.Node) else None
        if found is None or type(times) is bool or not isinstance(times, int) or times < 1:
            return None
        return tuple(Seg(s.var, s.inner * times, s.fixed * times) for s in found)

    def _same_widths(self, a: Layout, b: Layout) -> bool:
        """Do two layouts lay out the same widths alike (channel for channel)?"""
        vars_ = self.vars
        ra, rb = vars_.resolve(a), vars_.resolve(b)
        return len(ra) == len(rb) and all(
            x.inner == y.inner and x.fixed == y.fixed
            and (vars_.find(x.var) == vars_.find(y.var) if x.var is not None and y.var is not None else x.var == y.var)
            for x, y in zip(ra, rb, strict=True)
        )  # fmt: skip

    def size_attributes(self, value: Any, kind: str = "width") -> tuple[str, list[str]]:
        """The module running this node (its path) and its attributes of ``kind`` in
        :data:`SIZE_ATTRIBUTES` equal to ``value``: a size the code wrote as ``self.<attr>``,
        baked into a number by fx."""
        if not isinstance(value, int) or isinstance(value, bool):
            return "", []
        stack = self.node.meta.get("nn_module_stack") or {}
        path = next(iter(reversed(list(stack.values()))), ("", None))[0] if stack else ""
        module = self.state.modules.get(path, self.state.model) if path else self.state.model
        found = [
            a for a, k in sorted(SIZE_ATTRIBUTES.items())
            if k == kind and isinstance(getattr(module, a, None), int) and not isinstance(getattr(module, a), bool)
            and getattr(module, a) == value
        ]  # fmt: skip
        return path, found

    def number_as_read(self, size: Any, layout: Layout) -> bool:
        """Is ``size`` a number that may have been read from this dim: where the front-end records
        sizes read from tensors as numbers (torch.export), one equal to the dim's current size.

        The graph cannot tell it from a number written in the code; every group of such a
        capture is grown once on the model's own forward before it is called growable
        (:mod:`archgrow.surgery.check`), which freezes the group where growth then breaks the
        forward or changes its output's shape.  Callers where a stale number could keep both
        (a reshape with a ``-1``) do not ask."""
        return (
            self.state.sizes_as_numbers and isinstance(size, int) and not isinstance(size, bool)
            and size == self.vars.layout_size(layout)
        )  # fmt: skip

    def follows(self, size: Any, layout: Layout, kind: str | None = None, *, numbers_read: bool = True) -> bool:
        """Does a size argument follow growth of ``layout``: -1, read from a tensor with the same
        width, or one module attribute of ``kind`` (bound here, so growth updates it)?  Without a
        kind, the first kind with exactly one attribute of that value ("width" first); failing all
        of these, a number that may have been read from the dim (:meth:`number_as_read`), unless
        ``numbers_read`` is False."""
        if self.adaptive(size, layout):
            return True
        if self.sourced(size, kind):
            return self.bind_source(size_source(size), layout, f"a size at {self.where}")  # type: ignore[arg-type]
        scaled = self._scaled_source(size, kind)
        if scaled is not None:
            if not self.bind_source(scaled, layout, f"a size at {self.where}"):
                return False
            self.state.sourced_at[scaled.key].add(size.name)
            self.consumed.add(size)
            return True
        for k in RESHAPE_KINDS if kind is None else (kind,):
            path, attrs = self.size_attributes(size, k)
            if len(attrs) == 1:
                self.bind_attr(path, attrs[0], layout)
                return True
            if attrs:
                return False
        return numbers_read and self.number_as_read(size, layout)

    def _scaled_source(self, size: Any, kind: str | None) -> SizeSource | None:
        """``size`` computed at run time as an attribute times a size that never grows
        (multi-query attention's ``x.shape[-1] * self.num_heads``): the attribute, scaled by it."""
        if not (isinstance(size, fx.Node) and size.op == "call_function" and size.target is operator.mul):
            return None
        if len(size.args) != 2 or size.kwargs:
            return None
        if kind not in (None, "heads"):
            return None
        for attribute, other in (size.args, size.args[::-1]):
            if not self.sourced(attribute, "heads"):
                continue
            if isinstance(other, fx.Node):
                if other not in self.state.size_layout or not self._never_grows(self.state.size_layout[other]):
                    continue  # not a size read from a tensor, or one that grows
                factor = self.state.values.get(other)
            else:
                factor = other
            if isinstance(factor, int) and not isinstance(factor, bool) and factor > 0:
                source = size_source(attribute)
                assert source is not None
                return dataclasses.replace(source, scale=source.scale * factor)
        return None

    def _never_grows(self, layout: Layout | None) -> bool:
        """A fixed dim, or one of widths already frozen."""
        if layout is None:
            return True
        vars_ = self.vars
        frozen = {vars_.find(v) for v in vars_.frozen}
        return all(s.var is None or vars_.find(s.var) in frozen for s in layout)

    def sourced(self, size: Any, kind: str | None) -> bool:
        """Was ``size`` read from a module attribute that can stand for ``kind``?  A whole width
        (``reshape(B, N, self.val_attn_dim)``) may come from any attribute; a head count or a head
        dim only from one named as such (:data:`SIZE_ATTRIBUTES`), since SKNet's ``self.radix``
        in the same place counts parts that never grow."""
        source = size_source(size)
        if source is None:
            return False
        return kind in (None, "width") or SIZE_ATTRIBUTES.get(source.attr) == kind

    def bind_source(self, source: SizeSource, layout: Layout, what: str) -> bool:
        """Bind the attribute a traced number came from (``source``) to the size of ``layout``,
        which the number equals, so growth rewrites it.  When it cannot be (the number shrinks as
        the attribute grows, or the forward also used the attribute as a loop count, an index or
        a condition), nothing is bound, ``layout`` freezes saying why, and the answer is False."""
        scale = source.scale
        structural = (self.state.gm.meta.get(STRUCTURAL_ATTRIBUTES) or {}).get(source.key)
        if scale <= 0 or structural is not None:
            why = f"as {structural}" if structural else "in a way that shrinks the size as it grows"
            self.freeze(
                layout,
                f"{what} is read from '{source.describe()}', which the forward also uses {why}; growth cannot "
                "rewrite it",
            )
            return False
        # the nodes this one consumed built the size from the attribute (x.shape[:-1] + (self.n,))
        self.state.sourced_at.setdefault(source.key, set()).update({self.node.name, *(n.name for n in self.consumed)})
        vars_ = self.vars
        size0 = vars_.layout_size(layout)
        p, q = scale.numerator, scale.denominator  # attr = attr0 + (size - size0) * q / p
        self.bind_attr(
            source.module, source.attr, layout, index=source.index, divisor=p, multiplier=q,
            offset=source.attr0 * p - size0 * q,
        )  # fmt: skip
        step = source.step()
        if step > 1:
            counts: Counter[int] = Counter()
            for s in layout:
                if s.var is not None:
                    counts[vars_.find(s.var)] += s.inner
            for root, c in counts.items():
                reason = f"{source.describe()} ({what}) moves in steps of {step}"
                vars_.require_step(root, step // math.gcd(step, c), reason)
        return True

    def shape_args(self, args: tuple, kw: Any) -> list[Any] | None:
        """Shape arguments as a list; None when they are another tensor's whole shape (every dim follows it)."""
        shape = kw if kw is not None else args
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        if len(shape) == 1 and isinstance(shape[0], fx.Node) and shape[0] in self.state.shape_of:
            self.consumed.add(shape[0])
            return None  # x.view(y.size()): every dim follows y
        if len(shape) == 1 and isinstance(shape[0], fx.Node):
            read: list[fx.Node] = []
            joined = self._joined_shape(shape[0], read)
            if joined is not None:  # x.reshape(x.shape[:-1] + (-1,)): element by element
                self.consumed.update(read)
                return joined
        return list(shape)

    def _joined_shape(self, node: Any, read: list[fx.Node]) -> list[Any] | None:
        """A shape the code built as one value (``x.shape[:-1] + (-1,)``, timm's MaxViT), element
        by element: numbers as written, a tensor's dims as :class:`TensorDim`; None when it is
        built any other way.  ``read`` collects the shape nodes it went through, which the caller
        consumes only when the whole shape was understood."""
        state = self.state
        if isinstance(node, (tuple, list)):
            found: list[Any] = []
            for x in node:
                if isinstance(x, fx.Node):
                    if state.size_layout.get(x, False) is False:
                        return None
                    found.append(x)
                elif isinstance(x, int) and not isinstance(x, bool):
                    found.append(x)
                else:
                    return None
            return found
        if not isinstance(node, fx.Node):
            return None
        if node in state.shape_of:
            read.append(node)
            meta = state.shape_of[node]
            return [TensorDim(lay, size) for lay, size in zip(meta.dims, meta.shape, strict=True)]
        if node.op == "call_function" and node.target is operator.add and len(node.args) == 2 and not node.kwargs:
            left, right = (self._joined_shape(a, read) for a in node.args)
            if left is None or right is None:
                return None
            read.append(node)
            return left + right
        return None

    # ------------------------------------------------------------------ what growth changes
    def new_width(self, size: int, origin: str) -> Layout:
        """A width born here (a layer's output features): a fresh one-segment layout."""
        return (Seg(self.vars.new(size, origin)),)

    def member(self, name: str, module: nn.Module, kind: str, layout: Layout) -> None:
        """``module`` takes part in the width of ``layout`` as ``producer``, ``consumer`` or ``follower``."""
        self.state.members.append(MemberRecord(name, type(module).__name__, kind, layout, self.node.name))

    def bind(self, name: str, module: nn.Module, tensor: str, dim: int, layout: Layout | None, role: str) -> None:
        """Dimension ``dim`` of ``module.<tensor>`` grows with ``layout``; new entries play ``role``."""
        bind_tensor(self.state, name, module, tensor, dim, layout, role)

    def bind_attr(
        self,
        name: str,
        attr: str,
        layout: Layout,
        *,
        index: int | None = None,
        divisor: int = 1,
        multiplier: int = 1,
        offset: int = 0,
    ) -> None:
        """Attribute ``attr`` of module ``name`` records the size of ``layout`` (times ``multiplier``,
        plus ``offset``, divided by ``divisor``)."""
        binding = AttrBinding(name, attr, layout, index=index, divisor=divisor, multiplier=multiplier, offset=offset)
        self.state.attr_bindings.append(binding)

    def first_call(self, name: str, layout: Layout | None) -> tuple[bool, Any]:
        """A layer with weights called again shares them: tie its inputs and reuse the first output."""
        if name in self.state.called:
            first_in, first_out = self.state.called[name]
            self.unify(first_in[0], layout)
            return True, first_out
        return False, None

    def remember_call(self, name: str, inputs: list[Layout | None], output: Any) -> None:
        self.state.called[name] = (inputs, output)


__all__ = ["SIZE_ATTRIBUTES", "LayoutState", "NoRule", "register_size_attribute", "RuleContext", "arg", "bind_tensor", "fixed", "freeze_layout", "is_tensor", "norm_dim"]
