"""Layout propagation over a traced graph: which dimensions must grow together, and how.

One pass in topological order gives every tensor value a :class:`TensorMeta` (a layout per dim).
Width variables are born at producers (Linear/conv/embedding outputs, parameters used directly)
and merged by union-find where the graph ties two dimensions together.  Along the way each module
or parameter that touches a width records a *binding*: "dimension d of this tensor is laid out like
this", with the role its new entries play (fan-in, fan-out, norm statistics...).  Surgery later
replays these bindings; it never has to look at the graph again.
"""

from __future__ import annotations

import builtins
import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from archgrow.graph import rules
from archgrow.graph.layout import Layout, Seg, TensorMeta, WidthVars

# Roles of new entries along a grown dimension.
FAN_IN = "fan_in"  # a new unit's incoming weights (random, rescaled to the mean norm)
FAN_OUT = "fan_out"  # weights reading a new unit (zero: function-preserving)
ZERO = "zero"  # biases, BN shift and running mean, additive parameters
ONE = "one"  # norm scales, running variance
MEAN = "mean"  # multiplicative parameters (layer scale, PReLU slopes): mean of existing entries


@dataclass(frozen=True)
class TensorBinding:
    """Dimension ``dim`` of ``module.<tensor>`` is laid out as ``layout``."""

    module: str
    tensor: str
    dim: int
    layout: Layout
    role: str
    is_buffer: bool = False


@dataclass(frozen=True)
class AttrBinding:
    """Module attribute that must equal the size of ``layout`` divided by ``divisor``."""

    module: str
    attr: str
    layout: Layout
    index: int | None = None  # position inside a tuple attribute (LayerNorm.normalized_shape)
    divisor: int = 1


@dataclass(frozen=True)
class MemberRecord:
    """A module (or parameter) taking part in some width: what it does and along which layout."""

    module: str
    module_type: str
    kind: str  # "producer" | "consumer" | "follower"
    layout: Layout
    node: str


def _is_tensor(skel: Any) -> bool:
    return isinstance(skel, tuple) and len(skel) == 3 and skel[0] == "tensor"


def _fixed(skel: Any) -> Any:
    """Analysed value for a runtime value that carries no width."""
    if _is_tensor(skel):
        return TensorMeta(skel[1], (None,) * len(skel[1]))
    if isinstance(skel, (tuple, list)):
        return type(skel)(_fixed(s) for s in skel)
    if isinstance(skel, dict):
        return {k: _fixed(v) for k, v in skel.items()}
    return skel


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _arg(node: fx.Node, pos: int, name: str, default: Any = None) -> Any:
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


class Analysis:
    """Runs the layout rules over one traced graph.  Build it, then read the public fields."""

    def __init__(self, gm: fx.GraphModule, values: dict[fx.Node, Any], model: nn.Module):
        self.gm = gm
        self.values = values
        self.model = model
        self.modules = dict(model.named_modules())
        self.vars = WidthVars()
        self.meta: dict[fx.Node, Any] = {}
        self.tensor_bindings: list[TensorBinding] = []
        self.attr_bindings: list[AttrBinding] = []
        self.members: list[MemberRecord] = []
        self.called: dict[str, tuple[list[Layout | None], Any]] = {}  # parametric leaf -> first call
        self.size_layout: dict[fx.Node, Layout | None] = {}  # int nodes = size of a tensor dim
        self.shape_of: dict[fx.Node, TensorMeta] = {}  # torch.Size nodes = shape of a tensor
        self.param_vars: dict[str, dict[int, int]] = {}  # get_attr parameter -> dim -> var
        self.param_users: dict[str, set[Any]] = {}
        self.direct_params: dict[str, str] = {}  # parameter path -> node using it directly
        self.param_roles: dict[str, str] = {}  # parameter path -> role of new entries, when known
        self.taint: dict[fx.Node, list[Layout | None]] = {}  # ints derived from tensor sizes
        self.consumed: set[fx.Node] = set()  # size ints a rule used as "follows growth"
        for node in gm.graph.nodes:
            self.node = node
            self.consumed = set()
            try:
                self.meta[node] = self._visit(node)
            except Exception as exc:  # a rule tripped on an unusual call: fail safe, never crash
                self.meta[node] = self.unknown(f"{node.op} {node.target!r} ({type(exc).__name__}: {exc})")
            self._check_sizes(node)
        self._finish()

    def _check_sizes(self, node: fx.Node) -> None:
        """A size read from a growing dim and then used as a plain number freezes that width."""
        inputs = [a for a in node.all_input_nodes if a in self.taint]
        if not inputs:
            return
        out = self.values.get(node)
        if node.op == "call_function" and not self.tensors(node.args, node.kwargs) and not _is_tensor(out):
            # int arithmetic on sizes (a rule may already have said exactly which dim it reads)
            self.taint.setdefault(node, [lay for a in inputs for lay in self.taint[a]])
            return
        if node.op == "output":
            return
        for a in inputs:
            if a not in self.consumed:
                for lay in self.taint[a]:
                    self.freeze(
                        lay,
                        f"the size of a growing dim, read at node '{a.name}', is used by node "
                        f"'{node.name}' as a fixed number",
                    )

    # ------------------------------------------------------------------ helpers
    def where(self) -> str:
        return f"node '{self.node.name}'"

    def out(self) -> Any:
        return self.values.get(self.node)

    def m(self, a: Any) -> Any:
        return self.meta.get(a) if isinstance(a, fx.Node) else a

    def tensors(self, *args: Any) -> list[TensorMeta]:
        found: list[TensorMeta] = []

        def walk(a: Any) -> None:
            if isinstance(a, fx.Node):
                walk(self.meta.get(a))
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

    def freeze(self, layout: Layout | None, reason: str) -> None:
        for v in self.vars.layout_vars(layout):
            self.vars.freeze(v, reason)

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
        if a is None and b is None:
            return None
        if a is None or b is None:
            self.freeze(a or b, f"tied to a fixed-size dimension at {self.where()}")
            return a or b
        if a == b:
            return a
        if not self.same_structure(a, b):
            reason = (
                f"{self.where()} ties '{self.vars.describe(a)}' to '{self.vars.describe(b)}', "
                "which are laid out differently"
            )
            self.freeze(a, reason)
            self.freeze(b, reason)
            return a
        for x, y in zip(a, b, strict=True):
            if x.var is not None:
                self.vars.union(x.var, y.var, self.where())
        return a

    def unify_all(self, layouts: list[Layout | None]) -> Layout | None:
        if not layouts:
            return None
        result = layouts[0]
        for lay in layouts[1:]:
            result = self.unify(result, lay)
        return result

    def unknown(self, what: str) -> Any:
        """An op with no rule: freeze every width reaching it; its outputs carry none."""
        self.freeze_all(self.tensors(self.node.args, self.node.kwargs), f"{what} at {self.where()}: no width rule")
        return _fixed(self.out())

    def adaptive(self, arg: Any, layout: Layout) -> bool:
        """Does a size argument follow growth (-1, or read from a tensor with the same width)?"""
        if isinstance(arg, int) and not isinstance(arg, bool):
            return arg == -1
        if isinstance(arg, fx.Node) and arg in self.size_layout and self.size_layout[arg] is not None:
            self.unify(layout, self.size_layout[arg])
            self.consumed.add(arg)
            return True
        return False

    # ------------------------------------------------------------------ dispatch
    def _visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            return _fixed(self.out())
        if node.op == "get_attr":
            return self._get_attr(node)
        if node.op == "call_module":
            return self._call_module(node)
        if node.op == "call_function":
            return self._call_function(node)
        if node.op == "call_method":
            return self._call_method(node)
        if node.op == "output":
            self.freeze_all(self.tensors(node.args), f"reaches the model output ({self.where()})")
            return None
        return _fixed(self.out())

    def _get_attr(self, node: fx.Node) -> Any:
        target = str(node.target)
        try:
            value = self.gm.get_parameter(target)
        except AttributeError:
            return _fixed(self.out())
        self.param_users[target] = set()
        var_of = {}
        dims = []
        for d, size in enumerate(value.shape):
            if size > 1:
                var_of[d] = self.vars.new(size, f"{target}[dim {d}]")
                dims.append((Seg(var_of[d]),))
            else:
                dims.append(None)
        self.param_vars[target] = var_of
        return TensorMeta(tuple(value.shape), tuple(dims))

    # ------------------------------------------------------------------ functions
    def _call_function(self, node: fx.Node) -> Any:
        fn = node.target
        name = rules.function_name(fn)
        self._note_param_users(node, fn)
        out = self.out()
        qualified = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__name__', '')}"
        if fn in rules.ELEMENTWISE_FUNCTIONS or qualified in rules.ELEMENTWISE_FUNCTION_NAMES:
            return self.elementwise(self.tensors(node.args, node.kwargs)) if _is_tensor(out) else _fixed(out)
        if qualified in rules.PER_SAMPLE_FUNCTION_NAMES:
            return self.elementwise(self.tensors(node.args[0]))
        if fn in rules.LIKE_FUNCTIONS:
            src = self.m(node.args[0])
            return TensorMeta(src.shape, src.dims) if isinstance(src, TensorMeta) else _fixed(out)
        if fn in rules.MINMAX:
            if len(self.tensors(node.args[:2])) == 2:
                return self.elementwise(self.tensors(node.args[:2]))
            return self.reduction(self.m(node.args[0]), _arg(node, 1, "dim"), _arg(node, 2, "keepdim", False), name)
        if fn in rules.REDUCTIONS_FUNCTIONS:
            return self.reduction(self.m(node.args[0]), _arg(node, 1, "dim"), _arg(node, 2, "keepdim", False), name)
        if fn in rules.SOFTMAX_FUNCTIONS:
            default = 1 if fn is torch.nn.functional.normalize else None
            return self.softmax(self.m(node.args[0]), _arg(node, 1, "dim", default), name)
        if fn in rules.CAT_FUNCTIONS:
            return self.cat(_arg(node, 0, "tensors"), _arg(node, 1, "dim", node.kwargs.get("axis", 0)))
        if fn in rules.STACK_FUNCTIONS:
            return self.stack(_arg(node, 0, "tensors"), _arg(node, 1, "dim", node.kwargs.get("axis", 0)))
        if fn in rules.SPLIT_FUNCTIONS:
            default = 0
            dim_pos = 1 if fn is torch.unbind else 2
            return self.split(self.m(node.args[0]), _arg(node, dim_pos, "dim", default), name)
        if fn in rules.NARROW_FUNCTIONS:
            return self.split(self.m(node.args[0]), _arg(node, 1, "dim", 0), name)
        if fn in rules.FLATTEN_FUNCTIONS or fn in rules.RESHAPE_FUNCTIONS:
            src = self.m(node.args[0])
            adaptive = None
            if fn in rules.RESHAPE_FUNCTIONS:
                adaptive = self._shape_args(node.args[1:], node.kwargs.get("shape"))
            return self.reshape(src, adaptive, name)
        if fn in rules.PERMUTE_FUNCTIONS:
            return self.permute(self.m(node.args[0]), _arg(node, 1, "dims"))
        if fn in rules.TRANSPOSE_FUNCTIONS:
            return self.transpose(self.m(node.args[0]), _arg(node, 1, "dim0"), _arg(node, 2, "dim1"))
        if fn in rules.SPATIAL_FUNCTIONS:
            return self.spatial(self.m(node.args[0]), name)
        if fn in rules.PAD_FUNCTIONS:
            return self.pad(self.m(node.args[0]), _arg(node, 1, "pad"), name)
        if fn in rules.CREATION_FUNCTIONS:
            return self.creation(node)
        if fn in rules.SHUFFLE_FUNCTIONS:
            return self.unknown(f"{name} (mixes channels across positions)")
        if fn is operator.getitem:
            return self.getitem(node.args[0], node.args[1])
        if fn is builtins.getattr:
            return self.attribute(node.args[0], node.args[1])
        if fn is torch.nn.functional.layer_norm:
            return self.functional_layer_norm(node)
        if not self.tensors(node.args, node.kwargs):
            return _fixed(out)  # arithmetic on sizes, constants...
        return self.unknown(name)

    def _call_method(self, node: fx.Node) -> Any:
        name = str(node.target)
        self._note_param_users(node, name)
        self_arg = self.m(node.args[0])
        out = self.out()
        if not isinstance(self_arg, TensorMeta):
            return _fixed(out)
        if name == "size":
            dim = _arg(node, 1, "dim")
            if dim is None:
                self.shape_of[node] = self_arg
                self.taint[node] = list(self_arg.dims)
            else:
                self.size_layout[node] = self_arg.dims[_norm_dim(dim, self_arg.ndim)]
                self.taint[node] = [self.size_layout[node]]
            return out
        if name in ("dim", "numel", "nelement", "item", "tolist", "data_ptr", "element_size"):
            return out
        base = name[:-1] if name.endswith("_") and not name.startswith("_") else name
        if name in rules.RECEIVER_SHAPE_METHODS:
            return TensorMeta(self_arg.shape, self_arg.dims) if _is_tensor(out) else _fixed(out)
        if base in rules.ELEMENTWISE_METHODS:
            return self.elementwise(self.tensors(node.args, node.kwargs)) if _is_tensor(out) else _fixed(out)
        if base in ("max", "min"):
            if len(self.tensors(node.args[:2])) == 2:
                return self.elementwise(self.tensors(node.args[:2]))
            return self.reduction(self_arg, _arg(node, 1, "dim"), _arg(node, 2, "keepdim", False), f"Tensor.{name}")
        if base in rules.REDUCTION_METHODS:
            return self.reduction(self_arg, _arg(node, 1, "dim"), _arg(node, 2, "keepdim", False), f"Tensor.{name}")
        if base in rules.SOFTMAX_METHODS:
            return self.softmax(self_arg, _arg(node, 1, "dim"), f"Tensor.{name}")
        if name in ("view", "reshape"):
            if len(node.args) == 2 and isinstance(node.args[1], torch.dtype):
                return self.unknown(f"Tensor.{name}(dtype)")
            return self.reshape(self_arg, self._shape_args(node.args[1:], node.kwargs.get("shape")), f"Tensor.{name}")
        if name in ("flatten", "squeeze", "unsqueeze", "squeeze_", "unsqueeze_"):
            return self.reshape(self_arg, None, f"Tensor.{name}")
        if name in ("view_as", "reshape_as", "expand_as"):
            other = self.m(node.args[1])
            if name == "expand_as":
                return self.elementwise([self_arg, other])
            return self.reshape(
                self_arg, [-1] * other.ndim if self_arg.shape == other.shape else None, f"Tensor.{name}"
            )
        if name == "unflatten":
            return self.unflatten(self_arg, node.args[1], node.args[2])
        if name == "permute":
            dims = node.kwargs.get("dims", node.args[1:])
            if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                dims = dims[0]
            return self.permute(self_arg, dims)
        if name in ("transpose", "swapaxes", "swapdims"):
            return self.transpose(self_arg, _arg(node, 1, "dim0"), _arg(node, 2, "dim1"))
        if name in ("t", "T", "mT"):
            return self.transpose(self_arg, -2, -1) if self_arg.ndim >= 2 else self_arg
        if name == "expand":
            return self.expand(self_arg, self._shape_args(node.args[1:], node.kwargs.get("size")))
        if name in ("repeat", "tile"):
            return self.repeat(self_arg, self._shape_args(node.args[1:], None), f"Tensor.{name}")
        if name in rules.SPLIT_METHODS:
            dim = _arg(node, 1 if name == "unbind" else 2, "dim", 0)
            return self.split(self_arg, dim, f"Tensor.{name}")
        if name in rules.NARROW_METHODS:
            return self.split(self_arg, _arg(node, 1, "dim", 0), f"Tensor.{name}")
        if name in ("pixel_shuffle", "channel_shuffle"):
            return self.unknown(f"Tensor.{name} (mixes channels across positions)")
        return self.unknown(f"Tensor.{name}")

    def _note_param_users(self, node: fx.Node, fn: Any) -> None:
        for a in node.all_input_nodes:
            if a.op == "get_attr" and str(a.target) in self.param_users:
                self.param_users[str(a.target)].add(fn)
                self.direct_params.setdefault(str(a.target), node.name)

    def _shape_args(self, args: tuple, kw: Any) -> list[Any] | None:
        shape = kw if kw is not None else args
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        if len(shape) == 1 and isinstance(shape[0], fx.Node) and shape[0] in self.shape_of:
            self.consumed.add(shape[0])
            return None  # x.view(y.size()): every dim follows y
        return list(shape)

    # ------------------------------------------------------------------ rules
    def elementwise(self, metas: list[TensorMeta]) -> Any:
        out = self.out()
        if not _is_tensor(out):
            return _fixed(out)
        shape = out[1]
        nd = len(shape)
        dims = []
        for d in range(nd):
            cands: list[Layout | None] = []
            for t in metas:
                k = d - (nd - t.ndim)
                if k < 0:
                    continue
                if t.shape[k] == shape[d]:
                    cands.append(t.dims[k])
                elif t.dims[k] is not None:
                    self.freeze(
                        t.dims[k],
                        f"broadcast from size {t.shape[k]} to {shape[d]} at {self.where()}",
                    )
            dims.append(self.unify_all(cands))
        return TensorMeta(shape, tuple(dims))

    def reduction(self, src: Any, dim: Any, keepdim: bool, name: str) -> Any:
        out = self.out()
        if not isinstance(src, TensorMeta):
            return _fixed(out)
        if dim is None:
            reduced = set(range(src.ndim))
        else:
            dims = dim if isinstance(dim, (tuple, list)) else [dim]
            reduced = {_norm_dim(d, src.ndim) for d in dims}
        for d in reduced:
            self.not_preserving(src.dims[d], f"{name} reduces over it at {self.where()}")
        kept = [None if d in reduced else src.dims[d] for d in range(src.ndim) if keepdim or d not in reduced]
        if isinstance(out, tuple) and not _is_tensor(out):  # (values, indices)
            return tuple(TensorMeta(o[1], tuple(kept)) if _is_tensor(o) else o for o in out)
        if not _is_tensor(out) or len(out[1]) != len(kept):
            return _fixed(out)
        return TensorMeta(out[1], tuple(kept))

    def softmax(self, src: Any, dim: Any, name: str) -> Any:
        if not isinstance(src, TensorMeta):
            return _fixed(self.out())
        if dim is None:  # legacy implicit dim: be conservative
            for lay in src.dims:
                self.not_preserving(lay, f"{name} normalises over it at {self.where()}")
        else:
            self.not_preserving(src.dims[_norm_dim(dim, src.ndim)], f"{name} normalises over it at {self.where()}")
        return TensorMeta(src.shape, src.dims)

    def cat(self, tensors: Any, dim: int) -> Any:
        metas = [self.m(t) for t in tensors]
        out = self.out()
        if not all(isinstance(t, TensorMeta) for t in metas) or not _is_tensor(out):
            return self.unknown("torch.cat")
        shape = out[1]
        d = _norm_dim(dim, len(shape))
        dims = []
        for k in range(len(shape)):
            if k != d:
                dims.append(self.unify_all([t.dims[k] for t in metas]))
                continue
            if all(t.dims[d] is None for t in metas):
                dims.append(None)
                continue
            segs: list[Seg] = []
            for t in metas:
                part = t.dims[d] if t.dims[d] is not None else (Seg(None, fixed=t.shape[d]),)
                for s in part:
                    if s.var is None and segs and segs[-1].var is None:
                        segs[-1] = Seg(None, fixed=segs[-1].fixed + s.fixed)
                    elif s.var is not None or s.fixed:
                        segs.append(s)
            dims.append(tuple(segs))
        return TensorMeta(shape, tuple(dims))

    def stack(self, tensors: Any, dim: int) -> Any:
        metas = [self.m(t) for t in tensors]
        out = self.out()
        if not all(isinstance(t, TensorMeta) for t in metas) or not _is_tensor(out):
            return self.unknown("torch.stack")
        shape = out[1]
        d = _norm_dim(dim, len(shape))
        inner = [self.unify_all([t.dims[k] for t in metas]) for k in range(metas[0].ndim)]
        return TensorMeta(shape, tuple(inner[:d] + [None] + inner[d:]))

    def split(self, src: Any, dim: Any, name: str) -> Any:
        out = self.out()
        if not isinstance(src, TensorMeta) or not isinstance(dim, int):
            return self.unknown(name)
        d = _norm_dim(dim, src.ndim)
        self.freeze(
            src.dims[d],
            f"{name} along a width dim at {self.where()} (the split sizes are fixed in the code, so "
            "new channels would land in the wrong part)",
        )
        kept = tuple(None if k == d else src.dims[k] for k in range(src.ndim))

        def fit(o: Any) -> Any:
            if not _is_tensor(o):
                return _fixed(o)
            if len(o[1]) == src.ndim:
                return TensorMeta(o[1], kept)
            if len(o[1]) == src.ndim - 1:  # unbind / select drop the dim
                return TensorMeta(o[1], kept[:d] + kept[d + 1 :])
            return _fixed(o)

        if _is_tensor(out):
            return fit(out)
        return tuple(fit(o) for o in out) if isinstance(out, (tuple, list)) else _fixed(out)

    def reshape(self, src: Any, shape_args: list[Any] | None, name: str) -> Any:
        """view/reshape/flatten/squeeze: widths survive when kept whole or flattened channel-major."""
        out = self.out()
        if not isinstance(src, TensorMeta) or not _is_tensor(out):
            return _fixed(out)
        shape = out[1]
        dims: list[Layout | None] = [None] * len(shape)
        groups = _factor(src.shape, shape)
        if groups is None:
            return self.unknown(name)
        covered = {i for g in groups for i in g[0]}
        for i, lay in enumerate(src.dims):
            if lay is not None and i not in covered:
                self.freeze(lay, f"{name} drops or re-creates a width-1 dim at {self.where()}")
        for ins, outs in groups:
            carriers = [i for i in ins if src.dims[i] is not None]
            if not carriers:
                continue
            if len(carriers) > 1:
                for i in carriers:
                    self.freeze(src.dims[i], f"{name} merges two width dims at {self.where()}")
                continue
            i = carriers[0]
            lay = src.dims[i]
            if len(outs) != 1:
                self.freeze(lay, f"{name} splits a width dim into {[shape[o] for o in outs]} at {self.where()}")
                continue
            if ins[0] != i:
                self.freeze(
                    lay,
                    f"{name} flattens the width dim inside others (channels-last order) at {self.where()}",
                )
                continue
            o = outs[0]
            if shape_args is not None and (o >= len(shape_args) or not self.adaptive(shape_args[o], lay)):
                given = shape_args[o] if o < len(shape_args) else "?"
                self.freeze(
                    lay,
                    f"{name} at {self.where()} hard-codes size {given} for a dim that grows; write "
                    "x.flatten(1) or x.view(x.size(0), -1) so it follows growth",
                )
            after = math.prod(src.shape[j] for j in ins if j > i)
            dims[o] = lay if after == 1 else tuple(Seg(s.var, s.inner * after, s.fixed * after) for s in lay)
        return TensorMeta(shape, tuple(dims))

    def unflatten(self, src: TensorMeta, dim: int, sizes: Any) -> Any:
        d = _norm_dim(dim, src.ndim)
        args: list[Any] = [-1] * d + list(sizes) + [-1] * (src.ndim - d - 1)
        return self.reshape(src, args, "Tensor.unflatten")

    def permute(self, src: Any, perm: Any) -> Any:
        if not isinstance(src, TensorMeta):
            return _fixed(self.out())
        perm = [_norm_dim(p, src.ndim) for p in perm]
        return TensorMeta(tuple(src.shape[p] for p in perm), tuple(src.dims[p] for p in perm))

    def transpose(self, src: Any, a: int, b: int) -> Any:
        if not isinstance(src, TensorMeta):
            return _fixed(self.out())
        perm = list(range(src.ndim))
        a, b = _norm_dim(a, src.ndim), _norm_dim(b, src.ndim)
        perm[a], perm[b] = perm[b], perm[a]
        return self.permute(src, perm)

    def expand(self, src: TensorMeta, sizes: list[Any]) -> Any:
        out = self.out()
        shape = out[1]
        nd = len(shape)
        dims: list[Layout | None] = [None] * nd
        for d in range(nd):
            k = d - (nd - src.ndim)
            if k < 0:
                continue
            lay = src.dims[k]
            if lay is None:
                continue
            if src.shape[k] != shape[d]:
                self.freeze(lay, f"Tensor.expand broadcasts a width-{src.shape[k]} dim at {self.where()}")
            elif d < len(sizes) and self.adaptive(sizes[d], lay):
                dims[d] = lay
            else:
                self.freeze(
                    lay, f"Tensor.expand at {self.where()} hard-codes size {shape[d]} for a dim that grows; use -1"
                )
        return TensorMeta(shape, tuple(dims))

    def repeat(self, src: TensorMeta, reps: list[Any], name: str) -> Any:
        out = self.out()
        shape = out[1]
        nd = len(shape)
        dims: list[Layout | None] = [None] * nd
        for d in range(nd):
            k = d - (nd - src.ndim)
            if k < 0 or src.dims[k] is None:
                continue
            if src.shape[k] == shape[d]:
                dims[d] = src.dims[k]
            else:
                self.freeze(src.dims[k], f"{name} repeats a width dim at {self.where()}")
        return TensorMeta(shape, tuple(dims))

    def spatial(self, src: Any, name: str) -> Any:
        """Pooling, resizing and padding: batch and channel dims pass, the rest must carry no width."""
        out = self.out()
        if not isinstance(src, TensorMeta):
            return _fixed(out)
        for d in range(2, src.ndim):
            self.freeze(src.dims[d], f"{name} pools or resizes a width dim at {self.where()}")

        def fit(o: Any) -> Any:
            if not _is_tensor(o) or len(o[1]) != src.ndim or o[1][:2] != src.shape[:2]:
                return _fixed(o)
            return TensorMeta(o[1], tuple(src.dims[:2]) + (None,) * (src.ndim - 2))

        if _is_tensor(out):
            return fit(out)
        return tuple(fit(o) for o in out) if isinstance(out, (tuple, list)) else _fixed(out)

    def pad(self, src: Any, pad: Any, name: str) -> Any:
        if not isinstance(src, TensorMeta) or not isinstance(pad, (tuple, list)):
            return self.unknown(name)
        padded = len(pad) // 2
        for d in range(src.ndim - padded, src.ndim):
            self.freeze(src.dims[d], f"{name} pads a width dim at {self.where()}")
        shape = self.out()[1]
        return TensorMeta(shape, tuple(None if d >= src.ndim - padded else src.dims[d] for d in range(src.ndim)))

    def creation(self, node: fx.Node) -> Any:
        """torch.zeros(x.size(0), x.size(1)): a dim sized from a width follows that width."""
        out = self.out()
        if not _is_tensor(out):
            return _fixed(out)
        sizes = [a for a in node.args if not isinstance(a, (float, bool))]
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = list(sizes[0])
        if len(sizes) == 1 and isinstance(sizes[0], fx.Node) and sizes[0] in self.shape_of:
            self.consumed.add(sizes[0])
            return TensorMeta(out[1], self.shape_of[sizes[0]].dims)
        dims = [self.size_layout.get(a) if isinstance(a, fx.Node) else None for a in sizes[: len(out[1])]]
        self.consumed.update(a for a in sizes if isinstance(a, fx.Node) and a in self.size_layout)
        dims += [None] * (len(out[1]) - len(dims))
        return TensorMeta(out[1], tuple(dims))

    def getitem(self, obj: Any, idx: Any) -> Any:
        src = self.m(obj)
        out = self.out()
        if isinstance(obj, fx.Node) and obj in self.shape_of and isinstance(idx, int):
            meta = self.shape_of[obj]
            self.size_layout[self.node] = meta.dims[_norm_dim(idx, meta.ndim)]
            self.taint[self.node] = [self.size_layout[self.node]]
            self.consumed.add(obj)
            return out
        if isinstance(src, TensorMeta):
            return self.index(src, idx)
        if isinstance(src, (tuple, list)) and isinstance(idx, int):
            return src[idx]
        if isinstance(src, dict) and idx in src:
            return src[idx]
        if isinstance(src, (tuple, list)) and isinstance(idx, slice):
            return src[idx]
        return _fixed(out)

    def index(self, src: TensorMeta, idx: Any) -> Any:
        out = self.out()
        items = idx if isinstance(idx, tuple) else (idx,)
        consumed = sum(1 for e in items if e is not None and e is not Ellipsis)
        dims: list[Layout | None] = []
        d = 0
        for e in items:
            if e is None:
                dims.append(None)
            elif e is Ellipsis:
                k = src.ndim - consumed
                dims.extend(src.dims[d : d + k])
                d += k
            elif isinstance(e, slice):
                lay = src.dims[d]
                if e.start is None and e.stop is None and e.step is None:
                    dims.append(lay)
                else:
                    self.freeze(lay, f"slicing a width dim at {self.where()}")
                    dims.append(None)
                d += 1
            elif isinstance(e, int) or (isinstance(e, fx.Node) and isinstance(self.values.get(e), int)):
                self.freeze(src.dims[d], f"indexing a width dim at {self.where()}")
                d += 1
            else:
                return self.unknown("advanced indexing")
        dims.extend(src.dims[d:])
        if not _is_tensor(out) or len(dims) != len(out[1]):
            return self.unknown("indexing")
        return TensorMeta(out[1], tuple(dims))

    def attribute(self, obj: Any, attr: str) -> Any:
        src = self.m(obj)
        if isinstance(src, TensorMeta):
            if attr == "shape":
                self.shape_of[self.node] = src
                self.taint[self.node] = list(src.dims)
                return self.out()
            if attr in ("T", "mT"):
                return self.transpose(src, -2, -1)
            if attr in ("data",):
                return TensorMeta(src.shape, src.dims)
        return _fixed(self.out())

    def functional_layer_norm(self, node: fx.Node) -> Any:
        """F.layer_norm inside a traced-through LayerNorm subclass (torchvision's LayerNorm2d)."""
        src = self.m(node.args[0])
        weight = _arg(node, 2, "weight")
        owner = None
        if isinstance(weight, fx.Node) and weight.op == "get_attr":
            owner_name = str(weight.target).rpartition(".")[0]
            if isinstance(self.modules.get(owner_name), nn.LayerNorm):
                owner = owner_name
        shape = _arg(node, 1, "normalized_shape")
        if owner is None or not isinstance(src, TensorMeta) or len(shape) != 1:
            return self.unknown("F.layer_norm")
        lay = src.dims[-1]
        if lay is not None:
            self.not_preserving(lay, f"F.layer_norm normalises over it at {self.where()}")
            self.attr_bindings.append(AttrBinding(owner, "normalized_shape", lay, index=-1))
            self.param_roles[f"{owner}.weight"] = ONE
        return self.elementwise(self.tensors(node.args[0], weight, _arg(node, 3, "bias")))

    # ------------------------------------------------------------------ modules
    def _call_module(self, node: fx.Node) -> Any:
        name = str(node.target)
        mod = self.modules[name]
        tname = type(mod).__name__
        src = self.m(node.args[0]) if node.args else None
        out = self.out()
        has_state = any(True for _ in mod.parameters(recurse=False)) or any(True for _ in mod.buffers(recurse=False))
        if isinstance(mod, rules.ELEMENTWISE_MODULES) or (isinstance(mod, nn.PReLU) and mod.num_parameters == 1):
            return self.elementwise(self.tensors(node.args))
        if isinstance(mod, rules.SPATIAL_MODULES):
            return self.spatial(src, tname)
        if isinstance(mod, nn.Flatten):
            return self.reshape(src, None, f"nn.Flatten '{name}'")
        if isinstance(mod, nn.Unflatten):
            return self.unflatten(src, mod.dim, mod.unflattened_size)
        if isinstance(mod, rules.SOFTMAX_MODULES):
            dim = -3 if isinstance(mod, nn.Softmax2d) else mod.dim
            return self.softmax(src, dim, f"{tname} '{name}'")
        if isinstance(mod, nn.LocalResponseNorm) and isinstance(src, TensorMeta):
            self.not_preserving(src.dims[1], f"LocalResponseNorm '{name}' mixes neighbouring channels")
            return TensorMeta(src.shape, src.dims)
        if isinstance(mod, rules.SHUFFLE_MODULES):
            return self.unknown(f"{tname} '{name}' (mixes channels across positions)")
        if isinstance(mod, nn.MultiheadAttention):
            return self.unknown(
                f"nn.MultiheadAttention '{name}' (its embedding dim is packed into heads; growing it is not supported)"
            )
        if isinstance(mod, rules.RECURRENT_MODULES):
            return self.unknown(f"{tname} '{name}' (recurrent layers are not supported)")
        if not isinstance(src, TensorMeta) or not _is_tensor(out):
            return self.unknown(f"{tname} '{name}'")
        if isinstance(mod, nn.Linear):
            return self._linear(name, mod, src, out)
        if isinstance(mod, rules.CONV_MODULES):
            return self._conv(name, mod, src, out)
        if isinstance(mod, rules.CONV_TRANSPOSE_MODULES):
            return self._conv_transpose(name, mod, src, out)
        if isinstance(mod, nn.Embedding):
            return self._embedding(name, mod, src, out)
        if isinstance(mod, rules.BATCHNORM_MODULES):
            return self._channel_follower(
                name, mod, src, out, ("weight", "bias", "running_mean", "running_var"), "num_features"
            )
        if isinstance(mod, nn.PReLU):
            return self._channel_follower(name, mod, src, out, ("weight",), "num_parameters")
        if isinstance(mod, nn.GroupNorm):
            return self._group_norm(name, mod, src, out)
        if isinstance(mod, rules.LAYERNORM_MODULES):
            return self._layer_norm(name, mod, src, out)
        if has_state:
            return self.unknown(f"layer {tname} '{name}'")
        return self.unknown(f"module {tname} '{name}'")

    def _shared_input(self, name: str, layout: Layout | None) -> tuple[bool, Any]:
        """A parametric module called again shares its weights: tie the inputs, reuse the output."""
        if name in self.called:
            first_in, first_out = self.called[name]
            self.unify(first_in[0], layout)
            return True, first_out
        return False, None

    def _member(self, name: str, mod: nn.Module, kind: str, layout: Layout) -> None:
        self.members.append(MemberRecord(name, type(mod).__name__, kind, layout, self.node.name))

    def _bind(self, name: str, mod: nn.Module, tensor: str, dim: int, layout: Layout | None, role: str) -> None:
        if layout is None:
            return
        is_buffer = tensor in mod._buffers
        t = getattr(mod, tensor, None)
        if isinstance(t, torch.Tensor):
            self.tensor_bindings.append(TensorBinding(name, tensor, dim, layout, role, is_buffer))

    def _linear(self, name: str, mod: nn.Linear, src: TensorMeta, out: Any) -> TensorMeta:
        lay_in = src.dims[-1]
        shape = out[1]
        again, first_out = self._shared_input(name, lay_in)
        if again:
            lay_out = first_out
        else:
            lay_out = (Seg(self.vars.new(mod.out_features, name)),)
            self.called[name] = ([lay_in], lay_out)
            self._member(name, mod, "producer", lay_out)
            self._bind(name, mod, "weight", 0, lay_out, FAN_IN)
            self._bind(name, mod, "bias", 0, lay_out, ZERO)
            self.attr_bindings.append(AttrBinding(name, "out_features", lay_out))
            if lay_in is not None:
                self._member(name, mod, "consumer", lay_in)
                self._bind(name, mod, "weight", 1, lay_in, FAN_OUT)
                self.attr_bindings.append(AttrBinding(name, "in_features", lay_in))
        return TensorMeta(shape, src.dims[:-1] + (lay_out,))

    def _conv(self, name: str, mod: nn.Module, src: TensorMeta, out: Any) -> TensorMeta:
        lay_in = src.dims[1]
        shape = out[1]
        for d in range(2, src.ndim):
            self.freeze(src.dims[d], f"conv '{name}' slides over a width dim")
        cin_g = mod.in_channels // mod.groups
        cout_g = mod.out_channels // mod.groups
        again, first_out = self._shared_input(name, lay_in)
        if again:
            return TensorMeta(shape, (src.dims[0], first_out) + (None,) * (len(shape) - 2))
        if mod.groups > 1 and cin_g == cout_g and lay_in is not None:
            # Depthwise / grouped with equal in and out per group: channels pass through, and
            # growth adds whole groups at the end of each grown segment.
            bad = [s for s in lay_in if self.vars.seg_size(s) % cin_g or s.inner != 1]
            offsets_ok = all(sum(self.vars.seg_size(x) for x in lay_in[:i]) % cin_g == 0 for i in range(len(lay_in)))
            if bad or not offsets_ok:
                self.freeze(lay_in, f"grouped conv '{name}' (groups={mod.groups}) does not align with its input parts")
            for v in self.vars.layout_vars(lay_in):
                self.vars.require_step(v, cin_g, f"grouped conv '{name}' has {cin_g} channels per group")
            self.called[name] = ([lay_in], lay_in)
            self._member(name, mod, "follower", lay_in)
            self._bind(name, mod, "weight", 0, lay_in, FAN_IN)
            self._bind(name, mod, "bias", 0, lay_in, ZERO)
            for attr in ("in_channels", "out_channels"):
                self.attr_bindings.append(AttrBinding(name, attr, lay_in))
            self.attr_bindings.append(AttrBinding(name, "groups", lay_in, divisor=cin_g))
            return TensorMeta(shape, (src.dims[0], lay_in) + (None,) * (len(shape) - 2))
        lay_out = (Seg(self.vars.new(mod.out_channels, name)),)
        self.called[name] = ([lay_in], lay_out)
        if mod.groups > 1:
            reason = (
                f"grouped conv '{name}' (groups={mod.groups}, {cin_g} in / {cout_g} out per group) "
                "cannot add channels without changing its grouping"
            )
            self.freeze(lay_in, reason)
            self.freeze(lay_out, reason)
        self._member(name, mod, "producer", lay_out)
        self._bind(name, mod, "weight", 0, lay_out, FAN_IN)
        self._bind(name, mod, "bias", 0, lay_out, ZERO)
        self.attr_bindings.append(AttrBinding(name, "out_channels", lay_out))
        if lay_in is not None and mod.groups == 1:
            self._member(name, mod, "consumer", lay_in)
            self._bind(name, mod, "weight", 1, lay_in, FAN_OUT)
            self.attr_bindings.append(AttrBinding(name, "in_channels", lay_in))
        return TensorMeta(shape, (src.dims[0], lay_out) + (None,) * (len(shape) - 2))

    def _conv_transpose(self, name: str, mod: nn.Module, src: TensorMeta, out: Any) -> TensorMeta:
        lay_in = src.dims[1]
        shape = out[1]
        again, first_out = self._shared_input(name, lay_in)
        if again:
            return TensorMeta(shape, (src.dims[0], first_out) + (None,) * (len(shape) - 2))
        lay_out = (Seg(self.vars.new(mod.out_channels, name)),)
        self.called[name] = ([lay_in], lay_out)
        if mod.groups > 1:
            reason = f"grouped transposed conv '{name}' is not supported"
            self.freeze(lay_in, reason)
            self.freeze(lay_out, reason)
        self._member(name, mod, "producer", lay_out)
        self._bind(name, mod, "weight", 1, lay_out, FAN_IN)
        self._bind(name, mod, "bias", 0, lay_out, ZERO)
        self.attr_bindings.append(AttrBinding(name, "out_channels", lay_out))
        if lay_in is not None and mod.groups == 1:
            self._member(name, mod, "consumer", lay_in)
            self._bind(name, mod, "weight", 0, lay_in, FAN_OUT)
            self.attr_bindings.append(AttrBinding(name, "in_channels", lay_in))
        return TensorMeta(shape, (src.dims[0], lay_out) + (None,) * (len(shape) - 2))

    def _embedding(self, name: str, mod: nn.Embedding, src: TensorMeta, out: Any) -> TensorMeta:
        shape = out[1]
        again, first_out = self._shared_input(name, None)
        if again:
            lay_out = first_out
        else:
            lay_out = (Seg(self.vars.new(mod.embedding_dim, name)),)
            self.called[name] = ([None], lay_out)
            self._member(name, mod, "producer", lay_out)
            self._bind(name, mod, "weight", 1, lay_out, FAN_IN)
            self.attr_bindings.append(AttrBinding(name, "embedding_dim", lay_out))
        return TensorMeta(shape, src.dims + (lay_out,))

    def _channel_follower(
        self, name: str, mod: nn.Module, src: TensorMeta, out: Any, tensors: tuple[str, ...], attr: str
    ) -> TensorMeta:
        if src.ndim < 2:
            return self.unknown(f"{type(mod).__name__} '{name}' on a 1-d input")
        lay = src.dims[1]
        stateless = not any(True for _ in mod.parameters()) and not any(True for _ in mod.buffers())
        again, first_out = (False, None) if stateless else self._shared_input(name, lay)
        if stateless:
            return TensorMeta(out[1], src.dims)  # e.g. InstanceNorm without affine: per channel
        if not again:
            self.called[name] = ([lay], None)
            if lay is not None:
                self._member(name, mod, "follower", lay)
                roles = {"weight": ONE, "bias": ZERO, "running_mean": ZERO, "running_var": ONE}
                if isinstance(mod, nn.PReLU):
                    roles = {"weight": MEAN}
                for t in tensors:
                    self._bind(name, mod, t, 0, lay, roles[t])
                self.attr_bindings.append(AttrBinding(name, attr, lay))
        return TensorMeta(out[1], src.dims)

    def _group_norm(self, name: str, mod: nn.GroupNorm, src: TensorMeta, out: Any) -> TensorMeta:
        lay = src.dims[1]
        again, _ = self._shared_input(name, lay)
        if not again:
            self.called[name] = ([lay], None)
            if lay is not None:
                self._member(name, mod, "follower", lay)
                self._bind(name, mod, "weight", 0, lay, ONE)
                self._bind(name, mod, "bias", 0, lay, ZERO)
                self.attr_bindings.append(AttrBinding(name, "num_channels", lay))
                cpg = mod.num_channels // mod.num_groups
                if mod.num_groups == 1:
                    self.not_preserving(lay, f"GroupNorm '{name}' with one group normalises over it")
                else:
                    # New channels form new groups of the same size: old groups are untouched.
                    offsets = [sum(self.vars.seg_size(x) for x in lay[:i]) for i in range(len(lay) + 1)]
                    if any(o % cpg for o in offsets):
                        self.freeze(lay, f"GroupNorm '{name}' groups straddle its input parts")
                    for v in self.vars.layout_vars(lay):
                        self.vars.require_step(v, cpg, f"GroupNorm '{name}' has {cpg} channels per group")
                    self.attr_bindings.append(AttrBinding(name, "num_groups", lay, divisor=cpg))
        return TensorMeta(out[1], src.dims)

    def _layer_norm(self, name: str, mod: nn.Module, src: TensorMeta, out: Any) -> TensorMeta:
        n_norm = len(mod.normalized_shape)
        lay = src.dims[-1]
        for d in range(src.ndim - n_norm, src.ndim - 1):
            self.freeze(src.dims[d], f"{type(mod).__name__} '{name}' normalises over several dims including a width")
        again, _ = self._shared_input(name, lay)
        if not again:
            self.called[name] = ([lay], None)
            if lay is not None:
                if n_norm > 1:
                    self.freeze(lay, f"{type(mod).__name__} '{name}' normalises over several dims")
                self.not_preserving(lay, f"{type(mod).__name__} '{name}' normalises over it")
                self._member(name, mod, "follower", lay)
                self._bind(name, mod, "weight", n_norm - 1, lay, ONE)
                self._bind(name, mod, "bias", n_norm - 1, lay, ZERO)
                self.attr_bindings.append(AttrBinding(name, "normalized_shape", lay, index=-1))
        return TensorMeta(out[1], src.dims)

    # ------------------------------------------------------------------ finish
    def _freeze_shared_parameters(self) -> None:
        """A Parameter owned by two modules (tied embeddings) would be grown twice: freeze it."""
        owners: dict[int, set[str]] = {}
        layouts: dict[int, list[Layout]] = {}
        for b in self.tensor_bindings:
            t = getattr(self.model.get_submodule(b.module), b.tensor, None)
            if isinstance(t, nn.Parameter):
                owners.setdefault(id(t), set()).add(f"{b.module}.{b.tensor}" if b.module else b.tensor)
                layouts.setdefault(id(t), []).append(b.layout)
        for key, names in owners.items():
            if len(names) > 1:
                reason = f"one Parameter is shared by {' and '.join(sorted(names))} (tied weights)"
                for lay in layouts[key]:
                    self.freeze(lay, reason)

    def _finish(self) -> None:
        multiplicative = (
            rules.existing_attrs(torch, "mul multiply div divide true_divide")
            | rules.existing_attrs(operator, "mul truediv imul itruediv")
            | {"mul", "mul_", "div", "div_", "multiply", "divide"}
        )
        for target, var_of in self.param_vars.items():
            owner, _, tensor = target.rpartition(".")
            if owner in self.called:
                # The parameter of a module we also call as a layer: a second, direct use that
                # surgery could not keep in step.
                reason = f"parameter '{target}' is also used directly by node '{self.direct_params.get(target, '?')}'"
                first_in, first_out = self.called[owner]
                self.freeze(first_in[0], reason)
                self.freeze(first_out, reason)
                for v in var_of.values():
                    self.vars.freeze(v, reason)
                continue
            role = self.param_roles.get(target) or (
                MEAN if self.param_users.get(target, set()) & multiplicative else ZERO
            )
            mod = self.model.get_submodule(owner) if owner else self.model
            for d, v in var_of.items():
                lay = (Seg(v),)
                self.members.append(MemberRecord(target, "Parameter", "follower", lay, target))
                self._bind(owner, mod, tensor, d, lay, role)
        self._freeze_shared_parameters()


def _factor(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Split two shapes of equal numel into runs of dims with equal products (size-1 dims aside)."""
    ia = [i for i, s in enumerate(a) if s != 1]
    ib = [i for i, s in enumerate(b) if s != 1]
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    try:
        while i < len(ia) and j < len(ib):
            ga, gb = [ia[i]], [ib[j]]
            pa, pb = a[ia[i]], b[ib[j]]
            i += 1
            j += 1
            while pa != pb:
                if pa < pb:
                    ga.append(ia[i])
                    pa *= a[ia[i]]
                    i += 1
                else:
                    gb.append(ib[j])
                    pb *= b[ib[j]]
                    j += 1
            groups.append((ga, gb))
    except IndexError:
        return None
    if i != len(ia) or j != len(ib):
        return None
    return groups
