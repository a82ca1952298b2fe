"""The auxiliary gradient (§4.4, §6.2): what a new unit of a group could contribute.

A zero *bridge* from a group's layer input ``h_{l-1}`` to the next layer's output ``z_{l+1}``
skips layer ``l``.  Its gradient ``G`` has one row per fan-out weight a new unit would have and
one column per fan-in weight, and for a unit with zero fan-in and fan-out ``w``, ``G^T w`` is the
gradient of its fan-in (with sigma'(0) = 1 and the norm layer of layer ``l`` left out, as in the
paper).  GradMax picks ``w`` from ``G``'s left singular vectors; T_grad counts its large singular
values; NeST reads its large entries.

``G`` is taken from the training step's own forward and backward through hooks, with no extra
pass and no retained graph: a forward hook keeps each producer's (detached) input, a tensor hook
on each consumer's output keeps the incoming gradient ``delta``.  ``G`` is formed when first asked
for, from those pairs (summed over every backward since the last ``grow_step``, like ``.grad``).

Geometry (one formulation for every case):

* ``nn.Linear -> nn.Linear``: ``G = delta^T h`` over every sample (and token).
* ``nn.Conv2d -> nn.Conv2d``: the producer's input patches (unfolded with the producer's kernel,
  stride, padding, dilation) form an image with ``C_in*k1*k1`` channels at layer ``l``'s
  resolution; it is average-pooled to the consumer's input resolution when a pool sits between;
  the bridge is a conv with the consumer's geometry over it.  Its gradient, reshaped, is the
  GradMax patch matrix ``G[(o, p2), (i, p1)]``: exact for the fan-in gradient of a new channel
  when no pooling intervenes, with pools treated as average pools (a max pool over a zero
  channel picks an arbitrary position).
* ``nn.Conv2d -> flatten -> nn.Linear``: each channel feeds a block of ``F = H*W`` inputs; the
  patches are pooled to that block and the bridge is dense over ``(output, block position)``.
* Several consumers stack their bridges' rows, several producers (a residual group) concatenate
  their columns: the fan-in gradient of a new unit is then ``G^T`` applied to all its fan-outs,
  over all its fan-ins.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archgrow.errors import ArchgrowError
from archgrow.graph.widthgraph import Member, WidthGraph, WidthGroup
from archgrow.growth.hooks import HookSet
from archgrow.growth.svd import BridgeError, singular_values, thin_svd

SUPPORTED = "nn.Linear, or nn.Conv2d with groups=1 and zero padding"


@dataclass
class _Pair:
    inputs: dict[str, tuple[torch.Tensor, tuple[int, ...]]]  # producer -> (input, output spatial size)
    consumer: int
    in_spatial: tuple[int, ...]
    delta: torch.Tensor | None = None


@dataclass
class Bridge:
    """Hooks and geometry of one group's auxiliary gradient."""

    group: WidthGroup
    producers: list[tuple[str, nn.Module]]
    consumers: list[tuple[str, nn.Module, int]]  # name, module, flatten block F
    armed: bool = False
    _current: dict[str, tuple[torch.Tensor, tuple[int, ...]]] = field(default_factory=dict)
    _pairs: list[_Pair] = field(default_factory=list)
    _cache: torch.Tensor | None = None
    _svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    _values: torch.Tensor | None = None
    _sizes: tuple[list[int], list[int]] = ([], [])

    # ------------------------------------------------------------------ shapes
    @property
    def row_sizes(self) -> list[int]:
        """Rows of ``G`` per consumer: one per fan-out weight of a new unit."""
        return [_fan_out_numel(m, block) for _, m, block in self.consumers]

    @property
    def col_sizes(self) -> list[int]:
        """Columns of ``G`` per producer: one per fan-in weight of a new unit."""
        return [m.weight[0].numel() for _, m in self.producers]

    def split_fan_in(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(k, cols)`` rows of fan-in -> each producer's new weight rows ``(k, *row shape)``."""
        out = {}
        for (name, m), part in zip(self.producers, v.split(self.col_sizes, dim=1), strict=True):
            out[name] = part.reshape(v.shape[0], *m.weight.shape[1:]).to(m.weight.dtype)
        return out

    def split_fan_out(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(k, rows)`` fan-outs -> each consumer's new weight columns, as :func:`archgrow.grow` takes."""
        out = {}
        k = u.shape[0]
        for (name, m, block), part in zip(self.consumers, u.split(self.row_sizes, dim=1), strict=True):
            if isinstance(m, nn.Linear):
                cols = part.reshape(k, m.out_features, block).permute(1, 0, 2).reshape(m.out_features, k * block)
            else:
                cols = part.reshape(k, m.out_channels, *m.kernel_size).transpose(0, 1)
            out[name] = cols.to(m.weight.dtype)
        return out

    # ------------------------------------------------------------------ hooks
    def attach(self, hooks: HookSet) -> None:
        """Hook the producers and consumers (through ``hooks``, which removes them again)."""
        for name, m in self.producers:
            hooks.forward(m, self._producer_hook(name))
        for i, (_, m, _) in enumerate(self.consumers):
            hooks.forward(m, self._consumer_hook(i))

    def reset(self) -> None:
        self._current = {}
        self._pairs.clear()
        self._cache = None
        self._svd = None
        self._values = None

    def singular_values(self) -> torch.Tensor:
        """Singular values of ``G`` (float64, descending): all T_grad needs, cheaper than :meth:`svd`."""
        if self._svd is not None:
            return self._svd[1]
        if self._values is None:
            self._values = singular_values(self.gradient().double())
        return self._values

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``U, S, V`` of ``G`` in float64, singular values descending, ``min(G.shape)`` of them.

        Shared by T_grad and GradMax/NeST of the same step (the authors' code recomputed it, §9.16).
        Computed from the smaller Gram matrix: the singular values that matter are the large ones.
        """
        if self._svd is None:
            self._svd = thin_svd(self.gradient().double())
        return self._svd

    def _producer_hook(self, name: str):
        def fn(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if self.armed and torch.is_grad_enabled() and module.training:
                if name in self._current:  # a new forward: pairs of the last one keep their own dict
                    self._current = {}
                self._current[name] = (args[0].detach(), tuple(output.shape[2:]))

        return fn

    def _consumer_hook(self, index: int):
        def fn(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not (self.armed and torch.is_grad_enabled() and module.training and output.requires_grad):
                return
            # the dict fills up during the rest of the forward (residual producers run later)
            pair = _Pair(self._current, index, tuple(args[0].shape[2:]))
            self._pairs.append(pair)

            def keep(grad: torch.Tensor) -> None:
                pair.delta = grad.detach() if pair.delta is None else pair.delta + grad.detach()

            output.register_hook(keep)

        return fn

    # ------------------------------------------------------------------ G
    @property
    def captured(self) -> bool:
        return any(p.delta is not None for p in self._pairs)

    def gradient(self) -> torch.Tensor:
        """``G`` (rows: consumers' fan-out weights, columns: producers' fan-in weights)."""
        if self._cache is not None:
            return self._cache
        blocks: list[torch.Tensor | None] = [None] * len(self.consumers)
        cols: list[int] = []
        for pair in self._pairs:
            if pair.delta is None or len(pair.inputs) != len(self.producers):
                continue
            parts = [self._block(pair, name, m) for name, m in self.producers]
            cols = [p.shape[1] for p in parts]  # sizes when captured: neighbours may have grown since
            row = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            i = pair.consumer
            blocks[i] = row if blocks[i] is None else blocks[i] + row
        if any(b is None for b in blocks):
            missing = [self.consumers[i][0] for i, b in enumerate(blocks) if b is None]
            raise BridgeError(
                f"no backward pass reached {', '.join(missing)} since the last grow_step: call grow_step after "
                "loss.backward() on a forward of the wrapped model in training mode"
            )
        self._cache = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=0)
        self._sizes = ([b.shape[0] for b in blocks], cols)
        self._pairs.clear()
        return self._cache

    def combine(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Replace this step's ``G`` by ``fn(G)`` before anything reads it (the mean over ranks under
        DDP, as DDP averages the weights' gradients); returns the new ``G``."""
        self._cache = fn(self.gradient())
        self._svd = None
        self._values = None
        return self._cache

    def conform(self, t: torch.Tensor, side: str) -> torch.Tensor:
        """Pad ``t``'s dim 0 (``G``'s rows or columns) with zeros for units that a neighbouring group
        gained in this ``grow_step`` after ``G`` was captured: its new units had no gradient then."""
        old = self._sizes[0 if side == "rows" else 1]
        new = self.row_sizes if side == "rows" else self.col_sizes
        if old == new:
            return t
        if side == "rows":
            inner = [_fan_out_block(m, b) for _, m, b in self.consumers]
        else:
            inner = [m.weight[0, 0].numel() for _, m in self.producers]
        if side == "cols":
            self._check_appends()
        parts = []
        for part, o, n, r in zip(t.split(old, dim=0), old, new, inner, strict=True):
            part = part.reshape(o // r, r, *t.shape[1:])
            pad = part.new_zeros((n - o) // r, r, *t.shape[1:])
            parts.append(torch.cat([part, pad]).reshape(n, *t.shape[1:]))
        return torch.cat(parts)

    def _block(self, pair: _Pair, name: str, producer: nn.Module) -> torch.Tensor:
        x, out_spatial = pair.inputs[name]
        cname, consumer, block = self.consumers[pair.consumer]
        delta = pair.delta
        if isinstance(producer, nn.Linear):
            if x.shape[:-1] != delta.shape[:-1]:
                raise BridgeError(
                    f"group '{self.group.name}': '{name}' sees inputs of shape {tuple(x.shape)} but '{cname}' "
                    f"outputs {tuple(delta.shape)}; a dense bridge needs the same samples on both sides"
                )
            return delta.reshape(-1, delta.shape[-1]).transpose(0, 1) @ x.reshape(-1, x.shape[-1]).to(delta.dtype)
        if isinstance(consumer, nn.Linear):
            target = _block_spatial(out_spatial, block, self.group.name, cname)
            pooled = _pooled_patches(x, producer, out_spatial, target).to(delta.dtype)
            cols = pooled.shape[1]
            g = torch.einsum("no,ncf->ofc", delta, pooled.reshape(x.shape[0], cols, block))
            return g.reshape(-1, cols)
        pooled = _pooled_patches(x, producer, out_spatial, pair.in_spatial).to(delta.dtype)
        cols = pooled.shape[1]
        g = torch.nn.grad.conv2d_weight(
            pooled,
            (delta.shape[1], cols, *consumer.kernel_size),
            delta,
            stride=consumer.stride,
            padding=_padding(consumer),
            dilation=consumer.dilation,
        )
        return g.permute(0, 2, 3, 1).reshape(-1, cols)


    def _check_appends(self) -> None:
        names = {name for name, _ in self.producers}
        for b in self.group.graph.tensor_bindings():  # the producers' inputs belong to other groups
            if b.module in names and b.tensor == "weight" and b.dim == 1 and len(b.layout) > 1:
                raise ArchgrowError(
                    f"group '{self.group.name}': '{b.module}' reads a concatenation that grew in this grow_step; "
                    "its auxiliary gradient cannot be matched to the new inputs: use every_n_steps so that "
                    "neighbouring gradient-based groups grow on different steps"
                )


def _box_filter(x: torch.Tensor, factor: tuple[int, ...]) -> torch.Tensor:
    """Mean over every ``factor`` window at stride 1 (valid positions only), by shifted sums:
    ``avg_pool2d(x, factor, stride=1)`` computes the same, measured 8-15x slower on CPU."""
    h = x
    for dim, f in ((2, factor[0]), (3, factor[1])):
        if f > 1:
            n = h.shape[dim] - f + 1
            acc = h.narrow(dim, 0, n)
            for i in range(1, f):
                acc = acc + h.narrow(dim, i, n)
            h = acc
    area = math.prod(factor)
    return h / area if area > 1 else h


def _pooled_patches(x: torch.Tensor, conv: nn.Conv2d, out_spatial: tuple[int, ...], target: tuple[int, ...]) -> torch.Tensor:
    """The producer's input patches at each output position, average-pooled to ``target``:
    ``(N, C_in*k*k, *target)``.

    For a stride-1 producer pooled by whole factors, averaging r x r neighbouring patches equals
    taking one patch of the input box-filtered with r x r, so the patches are unfolded at the
    pooled resolution from a box filter (:func:`_box_filter`) of the ``C_in`` input channels
    (r^2 times less work than unfolding ``C_in*k*k`` channels at full resolution and pooling them).
    """
    padding = _padding(conv)
    n = x.shape[0]
    factors = [o // t if t and o % t == 0 else 0 for o, t in zip(out_spatial, target, strict=True)]
    if tuple(target) != tuple(out_spatial) and tuple(conv.stride) == (1, 1) and all(factors):
        box = _box_filter(F.pad(x, (padding[1], padding[1], padding[0], padding[0])), tuple(factors))
        patches = F.unfold(box, conv.kernel_size, dilation=conv.dilation, stride=tuple(factors))
        return patches.reshape(n, patches.shape[1], *target)
    patches = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride)
    image = patches.reshape(n, patches.shape[1], *out_spatial)
    return image if tuple(target) == tuple(out_spatial) else F.adaptive_avg_pool2d(image, target)


def build_bridge(graph: WidthGraph, group: WidthGroup) -> Bridge:
    """Check that ``group`` has a bridge archgrow can form (raise :class:`BridgeError`) and build it."""
    producers = []
    for p in group.producers:
        m = _module(graph, p, "producer")
        if len(p.slots) != 1:
            raise BridgeError(f"producer '{p.name}' holds the group's channels in {len(p.slots)} places")
        producers.append((p.name, m))
    for f in group.followers:
        try:
            fm = graph.model.get_submodule(f.name)
        except AttributeError:
            continue
        if isinstance(fm, nn.modules.conv._ConvNd):
            raise BridgeError(
                f"'{f.name}' ({type(fm).__name__}, groups={fm.groups}) filters each channel between the producers "
                f"and the consumers; the bridge skips layer l and cannot account for it; supported between them: "
                "activations, norm layers, pooling, dropout"
            )
    if not group.consumers:
        raise BridgeError("the group has no consumer (nothing reads its channels through weights)")
    consumers = []
    for c in group.consumers:
        m = _module(graph, c, "consumer")
        if len(c.slots) != 1:
            raise BridgeError(f"consumer '{c.name}' reads the group's channels in {len(c.slots)} places")
        block = c.slots[0].inner
        if any(isinstance(pm, nn.Linear) for _, pm in producers) and not isinstance(m, nn.Linear):
            raise BridgeError(f"dense producers feed the conv consumer '{c.name}'; only conv -> conv/dense is bridged")
        if isinstance(m, nn.Conv2d) and block != 1:
            raise BridgeError(f"consumer '{c.name}' reads blocks of {block} positions per channel")
        if isinstance(m, nn.Linear) and all(isinstance(pm, nn.Linear) for _, pm in producers) and block != 1:
            raise BridgeError(f"consumer '{c.name}' reads blocks of {block} positions per channel of a dense group")
        consumers.append((c.name, m, block))
    if len({type(m) for _, m in producers}) > 1:
        raise BridgeError("its producers mix dense and conv layers")
    return Bridge(group, producers, consumers)


def _module(graph: WidthGraph, member: Member, role: str) -> nn.Module:
    try:
        m = graph.model.get_submodule(member.name)
    except AttributeError:
        raise BridgeError(f"{role} '{member.name}' is a parameter used directly, not a module that can be hooked") from None
    if isinstance(m, nn.Linear):
        return m
    if isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros":
        _padding(m)
        return m
    raise BridgeError(f"{role} '{member.name}' is {type(m).__name__}{_conv_note(m)}; supported: {SUPPORTED}")


def _conv_note(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        return f" with groups={m.groups}, padding_mode={m.padding_mode!r}"
    return ""


def _padding(conv: nn.Conv2d) -> tuple[int, int]:
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            raise BridgeError(f"'same' padding of {conv} is asymmetric")
        return tuple(t // 2 for t in total)
    return tuple(conv.padding)


def _fan_out_block(m: nn.Module, block: int) -> int:
    """Fan-out weights per output unit of consumer ``m`` for one new channel (flatten block or kernel)."""
    return block if isinstance(m, nn.Linear) else math.prod(m.kernel_size)


def _fan_out_numel(m: nn.Module, block: int) -> int:
    out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
    return out * _fan_out_block(m, block)


def _block_spatial(spatial: tuple[int, ...], block: int, group: str, consumer: str) -> tuple[int, ...]:
    """Spatial size a channel's flatten block of ``block`` positions came from (pooled ``spatial``)."""
    h, w = spatial
    if block == h * w:
        return (h, w)
    if block == 1:
        return (1, 1)
    r = math.isqrt((h * w) // block) if (h * w) % block == 0 else 0
    if r and r * r * block == h * w and h % r == 0 and w % r == 0:
        return (h // r, w // r)
    raise BridgeError(
        f"group '{group}': cannot tell how {h}x{w} positions were pooled into the {block} inputs per channel "
        f"of '{consumer}'"
    )
