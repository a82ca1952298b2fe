"""``archgrow.wrap``: a model that grows after each optimizer step, as a spec says (Algorithm 1).

Per ``grow_step`` call: find the groups whose trigger is due, measure activations once for all of
them (one forward over the input buffer, see :mod:`archgrow.growth.measure`, or, for ``source: step``,
the values hooked from the training forward itself), ask each trigger how many
units to add, cap at ``max_width`` and round down to the group's step, then grow the groups in
graph order.  Growth is function-preserving for every NORTH* initializer, so later groups'
triggers reuse the same measurement; initializers that need activations re-measure if an earlier
group grew in the same call (their layer input changed size).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from archgrow.binder import bind
from archgrow.errors import ArchgrowError
from archgrow.graph.trace import forked_rng
from archgrow.graph.widthgraph import WidthGraph, trace
from archgrow.growth.binding import GroupBinding, InitContext
from archgrow.growth.buffer import InputBuffer
from archgrow.growth.capture import StepCapture
from archgrow.growth.collective import Collective
from archgrow.growth.compiled import TRACED_WRAPPER, CompileSupport, eager, traced
from archgrow.growth.hooks import HookSet
from archgrow.growth.measure import Measurement, measure, measuring
from archgrow.growth.svd import BridgeError
from archgrow.initializers.base import apply_units
from archgrow.spec.io import SpecLike, as_spec
from archgrow.spec.schema import Spec


@dataclass(frozen=True)
class GrowthEvent:
    """One growth of one group.  ``trigger_seconds`` includes the group's share of the measurement."""

    step: int
    group: str
    old_width: int
    new_width: int
    trigger: str
    score: float
    threshold: float
    initializer: str
    trigger_seconds: float
    initializer_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TriggerEvaluation:
    """One trigger evaluation, growth or not: what plots of score against threshold need.

    ``add`` is what the trigger asked for, before ``max_width``, the initializer's limit and the
    group's step; for T_grad below its early-exit bound ``score`` is that bound on sigma_1.
    """

    step: int
    group: str
    score: float
    threshold: float
    add: int


class GrowingModel(nn.Module):
    """Runs the wrapped model; call :meth:`grow_step` after each ``optimizer.step()``."""

    def __init__(self, model: nn.Module, spec: SpecLike, example_inputs: Any = None, *, measure_chunk: int = 512):
        super().__init__()
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise ArchgrowError(
                "wrap() was given a DistributedDataParallel model: wrap the plain model first, then distribute the "
                "wrapped one, so that DDP is rebuilt when the model grows: grown = archgrow.wrap(model, spec, x); "
                "ddp = archgrow.distribute(grown, device_ids=...) (see docs/distributed.md)"
            )
        self.model = model
        self.spec: Spec = as_spec(spec)
        self.history: list[GrowthEvent] = []
        self.evaluations: list[TriggerEvaluation] = []  # of the latest grow_step only
        self.steps = 0
        self.measure_chunk = measure_chunk
        self.timings = {"measure": 0.0, "trigger": 0.0, "initializer": 0.0, "grow": 0.0}
        self._generator = torch.Generator().manual_seed(self.spec.seed)
        self._graph: WidthGraph | None = None
        self._bindings: list[GroupBinding] = []
        self._buffer: InputBuffer | None = None
        self._capture: StepCapture | None = None
        self._unstarted: set[str] = set()  # source: step groups still waiting for their baseline
        self._started = False
        self._paused = False
        self._closed = False
        self._hooks = HookSet()  # every hook on the user's modules, removed by unwrap() / close()
        self._compile = CompileSupport(model, self._hooks, self._growing_dims)
        self._base: dict[str, Any] = {}
        self._n_inputs = 1  # positional inputs the model was traced with (prefill reads that many per batch)
        self._step_begun = False  # the current step's first training forward has run
        self._step_starters: list[GroupBinding] = []  # triggers that read the weights before each update
        self._warned: set[str] = set()
        self._collective = Collective()  # one process until distribute() says otherwise
        self._synchronized = False
        self._full_capacity: int | None = None  # the buffer's capacity over all ranks
        self._nonfinite_inputs = 0
        if example_inputs is not None:
            self._bind(_as_tuple(example_inputs))

    # ------------------------------------------------------------------ public
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        torch._assert(not traced(), TRACED_WRAPPER)  # an error that dynamo raises, not one it falls back on
        if self._graph is None:
            self._bind(tuple(a[:1] if isinstance(a, torch.Tensor) else a for a in args))
        if self.training and not self._paused and not self._closed:
            if not self._step_begun:
                self._step_begun = True
                for b in self._step_starters:
                    if self._due(b, self.steps + 1):
                        b.trigger.step_start(b)
            if self._buffer is not None and self._buffering():
                self.observe(*args)
            if self._capture is not None:
                self._capture.begin()
        with self._compile.scope(self.history[-1].step if self.history else 0):
            return self.model(*args, **kwargs)

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """``torch.compile`` the wrapped model in place (its ``nn.Module.compile``, same arguments).

        The supported way to compile a growing model: the wrapper's per-step bookkeeping and
        archgrow's hooks stay plain Python, archgrow's own forwards (measurement, trials) run
        uncompiled, and the dims of growing groups compile as dynamic sizes, so growing dense
        layers recompiles nothing (inductor still recompiles for each growth of a conv group).
        ``recompile_limit`` defaults to dynamo's global cap for this model; a warning says when
        growth may have used half of it.  See the guide's "torch.compile and memory formats"."""
        self.model.compile(*args, **self._compile.options(kwargs))

    def _growing_dims(self) -> Iterator[tuple[torch.Tensor, int]]:
        for b in self._bindings:
            for t in b.group.bindings():
                yield getattr(t.module, t.tensor), t.dim

    def prefill(self, inputs: torch.Tensor | Iterable[Any]) -> int:
        """Fill the activation buffer before training and measure every baseline phi(f_0) on it.

        The paper's threshold compares each layer with its effective dimension at initialisation on
        the buffer of ``n`` samples, and the authors' code fills that buffer from the loader before
        the first update.  ``inputs`` is a tensor of samples or an iterable of batches (a tensor, or
        a tuple/list whose first entries are the model's positional inputs, as a ``DataLoader`` of
        ``(x, y)`` yields); it is read only until the buffer is full.  Call it once, after
        ``wrap`` and before the first training step; returns the number of samples buffered.
        Inputs are moved to the model's device (floating ones to its dtype) and checked against
        the traced sample shape; a rejected batch leaves the buffer as it was.
        Without it, baselines are taken on the first training batch alone, and groups whose
        trigger asks for ``baseline: full_buffer`` (the default) get a warning saying so.
        Every group measured on the buffer takes its baseline here, ``baseline: first_batch``
        ones included (the model has one buffer); groups measured with ``source: step`` take
        theirs from the first step regardless.
        """
        if self._graph is None:
            raise ArchgrowError("prefill: the model has not been traced yet: pass example_inputs to wrap() first")
        self._check_open("prefill")
        if self._started:
            raise ArchgrowError(
                "prefill: the baselines were already taken (a training forward or grow_step ran, prefill was "
                "called before, or a checkpoint was loaded): call prefill once, after wrap() and before the first "
                "training step"
            )
        if self._buffer is None:
            return 0
        examples = self._graph.example_inputs
        param = next(self.model.parameters(), None)
        batches: Iterable[Any] = [inputs] if isinstance(inputs, torch.Tensor) else inputs
        chunks: list[tuple[torch.Tensor, ...]] = []
        samples = 0
        for i, batch in enumerate(batches):
            tensors = (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)[: self._n_inputs]
            if len(tensors) < self._n_inputs or not all(isinstance(t, torch.Tensor) for t in tensors):
                raise ArchgrowError(
                    f"prefill: each batch must be a tensor or a tuple starting with the model's {self._n_inputs} "
                    f"input tensor(s); batch {i} is {type(batch).__name__}"
                )
            for j, (t, ex) in enumerate(zip(tensors, examples, strict=False)):
                if isinstance(ex, torch.Tensor) and (t.dim() != ex.dim() or t.shape[1:] != ex.shape[1:]):
                    raise ArchgrowError(
                        f"prefill: input {j} of batch {i} has shape {tuple(t.shape)}, but the model was traced with "
                        f"samples of shape {tuple(ex.shape[1:])} (batch first): pass batches of inputs, e.g. "
                        "(x, y) tuples or x tensors"
                    )
            if param is not None:  # where and in what precision the model runs (it may have moved since wrap)
                tensors = tuple(
                    t.to(param.device, param.dtype if t.is_floating_point() else t.dtype) for t in tensors
                )
            chunks.append(tensors)
            samples += tensors[0].shape[0]
            if self._buffer.capacity is None or samples >= self._buffer.capacity:
                break
        if samples == 0:
            raise ArchgrowError("prefill: no samples were given")
        for tensors in chunks:  # only once every batch was accepted: a bad batch leaves the buffer empty
            self._dropped(self._buffer.push(tensors))
        if not self._collective.all_true(self._buffer.size > 0):
            raise ArchgrowError(
                f"prefill: {'no' if self._buffer.size == 0 else 'some rank has no'} finite samples to buffer "
                f"(rank {self._collective.rank}: {self._nonfinite_inputs} non-finite dropped)"
            )
        self._start(prefilled=True)
        return self._buffer.size

    def observe(self, *inputs: torch.Tensor) -> None:
        """Add raw inputs to the activation buffer (done by ``forward`` in training mode).

        The first observation also sets the activation triggers' baselines (phi of the network
        before any update).
        """
        if self._buffer is None:
            return
        tensors = [a for a in inputs if isinstance(a, torch.Tensor)]
        if len(tensors) != len(inputs):
            raise ArchgrowError("the activation buffer keeps tensor inputs only; pass tensors positionally")
        self._dropped(self._buffer.push(tensors))
        if not self._started and self._collective.all_true(self._buffer.size > 0):
            self._start()

    def _dropped(self, samples: int) -> None:
        if not samples:
            return
        if not self._nonfinite_inputs:
            warnings.warn(
                f"rank {self._collective.rank}: {samples} training input sample(s) with NaN or infinite values were "
                "not buffered for activation measurements (warned once; grown.nonfinite_inputs counts them all)",
                stacklevel=4,
            )
        self._nonfinite_inputs += samples

    @property
    def nonfinite_inputs(self) -> int:
        """Training input samples left out of the activation buffer for NaN or infinite values."""
        return self._nonfinite_inputs

    def synchronize(self, collective: Collective) -> None:
        """Decide growth together with the other ranks of ``collective`` (see :mod:`archgrow.growth.collective`).

        :func:`archgrow.distribute` calls this.  Each rank keeps its share of the activation buffer
        (the capacity divided by the number of ranks, rounded up), so the measurement gathered from
        all ranks covers as many samples as one process's buffer would; a buffer restored from a
        checkpoint is split the same way.
        """
        self._check_open("synchronize")
        if self._synchronized:
            raise ArchgrowError("synchronize: this GrowingModel's collective was already set; wrap the model again")
        self._collective = collective
        self._synchronized = True
        self._full_capacity = self._buffer.capacity if self._buffer is not None else None
        if self._buffer is not None and collective.distributed:
            self._buffer.shard(collective.rank, collective.world_size)

    @property
    def collective(self) -> Collective:
        """What growth decisions are combined over (one process unless :meth:`synchronize` was called)."""
        return self._collective

    def grow_step(
        self,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        loss_fn: Callable[[], torch.Tensor] | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> list[GrowthEvent]:
        """Evaluate the due triggers and grow; pass the optimizer so its state is padded in place.

        Call it after ``loss.backward()`` and ``optimizer.step()``, before ``zero_grad``: gradient
        triggers read the step's gradients.  ``loss_fn`` (no arguments, returns the loss of the
        step's batch through the wrapped model, without calling backward) is needed by initializers
        that try candidates on the loss (Firefly, NeST on conv groups).  With mixed precision, pass
        the ``GradScaler`` and call this after ``scaler.step(optimizer)`` and before
        ``scaler.update()``: the auxiliary gradient was captured from the scaled loss and is divided
        by the scale that loss used, as ``scaler.step`` unscales the weights' ``.grad``.
        """
        if self._graph is None:
            raise ArchgrowError("the model has not been traced yet: pass example_inputs to wrap() or call it once")
        self._check_open("grow_step")
        self.steps += 1
        self.evaluations = []
        try:
            return self._grow_step(optimizer, loss_fn, _grad_scale(scaler))
        finally:
            self._step_begun = False
            self._arm_bridges()

    def _grow_step(self, optimizer: torch.optim.Optimizer | None, loss_fn: Any, scale: float) -> list[GrowthEvent]:
        self._check_processes()
        due = [b for b in self._bindings if self._due(b, self.steps)]
        if not due:
            return []
        if not self._started:
            self._start()
        measured = [b for b in due if b.trigger.needs_activations]
        measurements: dict[str, Measurement] = {}
        share = 0.0
        if measured:
            t0 = time.perf_counter()
            measurements = self._measure([b for b in measured if not _from_step(b)])
            measurements.update(self._captured([b for b in measured if _from_step(b)]))
            spent = time.perf_counter() - t0
            self.timings["measure"] += spent
            share = spent / len(measured)
        usable = [b for b in due if self._usable(b, measurements.get(b.name), scale)]
        decisions = []
        for b in usable:
            t0 = time.perf_counter()
            d = self._with_group(b, b.trigger.evaluate, b, self.steps, measurements.get(b.name))
            seconds = time.perf_counter() - t0
            self.timings["trigger"] += seconds
            decisions.append((b, d, seconds + (share if b.trigger.needs_activations else 0.0)))
            self.evaluations.append(TriggerEvaluation(self.steps, b.name, float(d.score), float(d.threshold), int(d.add)))
        plan = [(b, d, seconds, self._units_to_add(b, d.add)) for b, d, seconds in decisions]
        self._collective.check_same(
            f"how many units to add at step {self.steps}", [b.name for b, *_ in plan], [k for *_, k in plan]
        )
        cache = {name: (m, 0) for name, m in measurements.items()}
        generation = 0

        def measurement_for(b: GroupBinding) -> Measurement:
            hit = cache.get(b.name)
            if hit is not None and hit[1] == generation:
                return hit[0]
            m = self._measure([b])[b.name]
            cache[b.name] = (m, generation)
            return m

        ctx = InitContext(self.model, self._generator, measurement_for, loss_fn, self._trial_loss, self._collective.mean)
        events = []
        for b, d, trigger_seconds, k in plan:
            if k <= 0:
                continue
            old = b.width
            t0 = time.perf_counter()
            units = self._with_group(b, b.initializer.units, b, k, ctx)
            t1 = time.perf_counter()
            apply_units(b, k, units, optimizer=optimizer, generator=self._generator)
            t2 = time.perf_counter()
            generation += 1
            self.timings["initializer"] += t1 - t0
            self.timings["grow"] += t2 - t1
            event = GrowthEvent(
                step=self.steps,
                group=b.name,
                old_width=old,
                new_width=b.width,
                trigger=b.settings.trigger.kind,
                score=float(d.score),
                threshold=float(d.threshold),
                initializer=b.settings.initializer.kind,
                trigger_seconds=trigger_seconds,
                initializer_seconds=t2 - t0,
            )
            events.append(event)
        if events and self._collective.distributed:
            checksums = torch.stack([p.detach().double().sum() for p in self.model.parameters()]).tolist()
            self._collective.check_same(
                f"the parameters after growth at step {self.steps}",
                [name for name, _ in self.model.named_parameters()],
                checksums,
                rtol=1e-6,
            )
        self.history.extend(events)
        return events

    def _units_to_add(self, b: GroupBinding, add: int) -> int:
        """What the trigger asked for, within ``max_width``, the trigger's and the initializer's limits,
        rounded down to the group's step."""
        k = min(add, self._cap(b) - b.width)
        if k > 0:
            most = self._with_group(b, b.initializer.max_units, b)
            k = min(k, most) if most is not None else k
        return max(0, k - k % b.group.step)

    def _cap(self, b: GroupBinding) -> int:
        own = b.trigger.cap(b)
        return b.max_width if own is None else min(b.max_width, own)

    def _usable(self, b: GroupBinding, m: Measurement | None, scale: float = 1.0) -> bool:
        """Combine the group's auxiliary gradient across ranks; refuse non-finite inputs to a decision.

        A NaN or infinite measurement or ``G`` never becomes a baseline and never decides: the group
        skips this step (with a warning) and its baseline waits for a finite measurement."""
        problem = None
        if m is not None and not _finite(m):
            problem = "its activation measurement holds NaN or infinite values"
        elif (
            b.bridge is not None
            and (b.trigger.needs_gradient or b.initializer.needs_gradient)
            and self._collective.all_true(b.bridge.captured)  # else the rule that reads G says what is missing
        ):
            mean = self._collective.mean
            g = self._with_group(b, b.bridge.combine, mean if scale == 1.0 else lambda g: mean(g) / scale)
            if not torch.isfinite(g).all():
                problem = "its auxiliary gradient G holds NaN or infinite values"
        if problem is not None:
            warnings.warn(f"group '{b.name}', step {self.steps}: {problem}; it neither grows nor updates its "
                          "baseline this step", stacklevel=4)
            return False
        if m is not None and b.name in self._unstarted:  # phi(f_0): the first finite measurement
            if not _from_step(b) and self.steps > 1:
                warnings.warn(f"group '{b.name}': baseline phi(f_0) taken at step {self.steps}, the first finite "
                              "measurement", stacklevel=4)
            b.trigger.start(b, m)
            self._unstarted.discard(b.name)
        return True

    def _check_processes(self) -> None:
        """Several processes that each grow alone would continue apart: refuse, and say what to use."""
        if self._synchronized or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        if torch.distributed.get_world_size() > 1:
            raise ArchgrowError(
                f"grow_step: torch.distributed runs {torch.distributed.get_world_size()} processes but this "
                "GrowingModel decides alone, so ranks would grow differently and continue apart: train through "
                "ddp = archgrow.distribute(grown) (not DDP(grown)) and call ddp.grow_step(optimizer); for "
                "deliberately independent models per process, call grown.synchronize(archgrow.distributed.Collective()) once"
            )

    def _due(self, b: GroupBinding, step: int) -> bool:
        """The group's trigger runs at ``step``: not frozen, on its schedule, and able to widen.

        A group at its cap (``max_width`` or its trigger's own) can never grow again, so it neither
        measures, captures, nor evaluates: a run whose groups all reached their caps costs a plain
        training step."""
        return step % b.settings.every_n_steps == 0 and self._can_grow(b)

    def _can_grow(self, b: GroupBinding) -> bool:
        return not b.settings.frozen and not b.trigger.never_fires and self._cap(b) - b.width >= b.group.step

    def _buffering(self) -> bool:
        """Some group that can still grow measures activations on the buffer."""
        return any(
            (b.trigger.needs_activations or b.initializer.needs_activations) and self._can_grow(b) for b in self._bindings
        )

    def _arm_bridges(self) -> None:
        """Capture the auxiliary gradient (and step activations) during the next training step only
        if they will be read."""
        for b in self._bindings:
            if b.bridge is not None:
                b.bridge.reset()
                b.bridge.armed = self._due(b, self.steps + 1) and (b.trigger.needs_gradient or b.initializer.needs_gradient)
        if self._capture is not None:
            self._capture.armed = any(_from_step(b) and self._due(b, self.steps + 1) for b in self._bindings)

    @staticmethod
    def _with_group(b: GroupBinding, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except BridgeError as exc:
            raise ArchgrowError(f"group '{b.name}': {exc}") from None

    def _trial_loss(self, loss_fn: Callable[[], torch.Tensor], grad: bool) -> torch.Tensor:
        """Run the user's loss without buffering inputs, capturing gradients or moving the RNG."""
        with self.paused(), forked_rng(self.model), torch.set_grad_enabled(grad), eager():
            loss = loss_fn()
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ArchgrowError(f"loss_fn must return the loss as a one-element tensor, got {type(loss).__name__}")
        return loss

    # ------------------------------------------------------------------ lifecycle
    @contextlib.contextmanager
    def paused(self) -> Iterator[GrowingModel]:
        """Inside, forwards are not growth steps: inputs are not buffered, no auxiliary gradient or
        step activation is captured and no step starts (e.g. a validation pass in training mode,
        or a trial of candidates on the loss).  Nests; the previous state comes back on exit."""
        armed = [(b.bridge, b.bridge.armed) for b in self._bindings if b.bridge is not None]
        if self._capture is not None:
            armed.append((self._capture, self._capture.armed))
        was = self._paused
        self._paused = True
        for hooked, _ in armed:
            hooked.armed = False
        try:
            yield self
        finally:
            self._paused = was
            for hooked, flag in armed:
                hooked.armed = flag

    def unwrap(self) -> nn.Module:
        """Remove every hook archgrow put on the model and return the plain (grown) model.

        The wrapper is closed afterwards: ``grow_step`` and ``prefill`` refuse to run, and calling
        it only runs the model."""
        self.close()
        return self.model

    def close(self) -> None:
        """Remove every hook archgrow put on the model (see :meth:`unwrap`); safe to call twice."""
        self._hooks.remove()
        self._closed = True

    def __enter__(self) -> GrowingModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_paused(self) -> bool:
        """Inside :meth:`paused` (a trial of candidates on the loss, or the user's own)."""
        return self._paused

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ArchgrowError(
                f"{what}: this GrowingModel was closed (unwrap() or close() removed its hooks); wrap the model "
                "again to keep growing it: archgrow.wrap(model, spec, example_inputs)"
            )

    @property
    def graph(self) -> WidthGraph:
        if self._graph is None:
            raise ArchgrowError("the model has not been traced yet: pass example_inputs to wrap() or call it once")
        return self._graph

    def widths(self) -> dict[str, int]:
        """Current width of every group (growing or not)."""
        return self.graph.widths()

    @property
    def base(self) -> dict[str, Any]:
        """The base model as wrapped (class, parameter shapes, group widths): what a checkpoint must be
        loaded into."""
        return self._base

    @property
    def buffered_samples(self) -> int:
        """Raw input samples in the activation buffer (0 when no group measures one)."""
        return self._buffer.size if self._buffer is not None else 0

    @property
    def wants_prefill(self) -> bool:
        """Some group's baseline is to be measured on a full buffer (see :meth:`prefill`)."""
        return self._buffer is not None and not self._started and any(_full_buffer_baseline(b) for b in self._bindings)

    @property
    def growing(self) -> dict[str, GroupBinding]:
        """The groups the spec makes grow, by name."""
        return {b.name: b for b in self._bindings}

    # ------------------------------------------------------------------ binding
    def _bind(self, example_inputs: tuple[Any, ...]) -> None:
        graph = trace(self.model, example_inputs)
        bindings = bind(self.spec, graph)
        self._base = base_identity(self.model, graph)
        # One buffer for the model, the largest any group asks for.  Unset sizes follow Table 2:
        # 2 x max width for dense models, the latest mini-batch for models with convolutions.
        capacity = 0
        latest_batch = False
        for b in bindings:
            if (b.trigger.needs_activations or b.initializer.needs_activations) and not _from_step(b):
                size = b.trigger.buffer_size
                if size is None and b.conv_model:
                    latest_batch = True
                else:
                    capacity = max(capacity, size or 2 * b.max_width)
        stepped = [b for b in bindings if _from_step(b)]
        self._graph = graph
        self._bindings = bindings
        self._n_inputs = len(example_inputs)
        self._step_starters = [b for b in bindings if b.trigger.needs_step_start]
        # source: step groups re-measure on the latest batch after a neighbour grew in the same step
        self._buffer = InputBuffer(capacity) if capacity else (InputBuffer(None) if stepped or latest_batch else None)
        self._capture = StepCapture(self.model, [b.probe for b in stepped], self._hooks) if stepped else None
        self._unstarted = {b.name for b in stepped}
        for b in bindings:
            if b.bridge is not None and (b.trigger.needs_gradient or b.initializer.needs_gradient):
                b.bridge.attach(self._hooks)
        self._arm_bridges()

    def _start(self, prefilled: bool = False) -> None:
        """Baselines from the network before training (phi(f_0) for activation triggers).

        ``source: step`` groups take theirs from the first step's own forward (see :meth:`_captured`).
        """
        measured = [b for b in self._bindings if b.trigger.needs_activations and not _from_step(b)]
        buffer = self._buffer
        short = buffer is not None and buffer.capacity is not None and 0 < buffer.size < buffer.capacity
        if not prefilled and short:
            wanted = [b.name for b in self._bindings if _full_buffer_baseline(b)]
            if wanted:
                warnings.warn(
                    f"group(s) {', '.join(wanted)}: baseline phi(f_0) taken on the first batch ({buffer.size} "
                    f"samples), not on a full buffer of {buffer.capacity}: call grown.prefill(training inputs) "
                    "after wrap() and before training (archgrow run does), or set the trigger's baseline: first_batch",
                    stacklevel=4,
                )
        measurements = self._measure(measured) if measured else {}
        for b in self._bindings:
            if b.name in self._unstarted:
                continue
            m = measurements.get(b.name)
            if m is not None and not _finite(m):
                warnings.warn(
                    f"group '{b.name}': the baseline measurement holds NaN or infinite values; the baseline waits "
                    "for the first finite measurement",
                    stacklevel=4,
                )
                self._unstarted.add(b.name)
                continue
            b.trigger.start(b, m)
        self._started = True

    def _captured(self, bindings: Sequence[GroupBinding]) -> dict[str, Measurement]:
        """Measurements of ``source: step`` groups from the latest training forward."""
        out = {}
        for b in bindings:
            m = self._capture.measurement(b.probe)  # bound whenever a group uses source: step
            if m is None:
                raise ArchgrowError(
                    f"group '{b.name}' measures the training step's own forward (trigger source: step), but no "
                    "forward of the wrapped model in training mode ran since the last grow_step: call grown(x) "
                    "with grad enabled, then backward and optimizer.step(), before grow_step"
                )
            out[b.name] = self._gathered(m)
        self._warn_rows(out)
        return out

    def _measure(self, bindings: Sequence[GroupBinding]) -> dict[str, Measurement]:
        if not bindings:
            return {}
        if self._buffer is None or self._buffer.size == 0:
            raise ArchgrowError(
                f"group '{bindings[0].name}' needs activations but no input has been observed: call the wrapped "
                "model in training mode (grown.train(); grown(x)) or grown.observe(x) before grow_step"
            )
        inputs = self._buffer.tensors()
        with measuring(self.model):
            out = measure(self.model, [b.probe for b in bindings], inputs, chunk=self.measure_chunk)
        out = {name: self._gathered(m) for name, m in out.items()}
        self._warn_rows(out)
        return out

    def _gathered(self, m: Measurement) -> Measurement:
        """Every rank's rows of ``m`` (see :mod:`archgrow.growth.collective`): the same on every rank."""
        if not self._collective.distributed:
            return m
        gather = self._collective.gather_rows
        return Measurement(None if m.x is None else gather(m.x), gather(m.z), gather(m.h))

    def _warn_rows(self, out: dict[str, Measurement]) -> None:
        for b in self._bindings:
            if b.name not in out:
                continue
            rows = out[b.name].h.numel() // max(1, out[b.name].h.shape[b.probe.channel_dim])
            if rows <= b.width and b.name not in self._warned:
                self._warned.add(b.name)
                warnings.warn(
                    f"group '{b.name}': measured on {rows} rows for width {b.width}; the effective dimension "
                    f"cannot exceed {rows}, which caps growth (raise buffer_size, or the batch size with source: step)",
                    stacklevel=4,
                )

    # ------------------------------------------------------------------ checkpoint support
    def grower_state(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "history": [e.to_dict() for e in self.history],
            "states": {b.name: b.trigger.state_dict() for b in self._bindings},
            "started": self._started,
            "unstarted": sorted(self._unstarted),
            "generator": self._generator.get_state(),
            "buffer": self._buffer_state(),
            "timings": dict(self.timings),
        }

    def _buffer_state(self) -> dict[str, Any] | None:
        """The whole buffer: under DDP every rank's share, gathered in rank order (a collective call)."""
        if self._buffer is None:
            return None
        state = self._buffer.state_dict()
        if self._collective.distributed:
            state = {
                "capacity": self._full_capacity,
                "inputs": [self._collective.gather_rows(t) for t in state["inputs"]],
            }
        return state

    def load_grower_state(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.history = [GrowthEvent(**e) for e in state["history"]]
        for b in self._bindings:
            b.trigger.load_state_dict(dict(state["states"].get(b.name, {})))
        self._started = state["started"]
        self._unstarted = set(state.get("unstarted", sorted(self._unstarted)))
        self._generator.set_state(state["generator"])
        if self._buffer is not None and state["buffer"] is not None:
            param = next(self.model.parameters(), None)  # checkpoints load on the CPU; the model may not be
            buffered = dict(state["buffer"])
            if param is not None:
                buffered["inputs"] = [t.to(param.device) for t in buffered["inputs"]]
            self._buffer.load_state_dict(buffered)
        self.timings = dict(state["timings"])
        self._arm_bridges()


def base_identity(model: nn.Module, graph: WidthGraph) -> dict[str, Any]:
    """What identifies a base model: its class, every parameter's shape and every group's width."""
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": {name: list(p.shape) for name, p in model.named_parameters()},
        "widths": graph.widths(),
    }


def wrap(model: nn.Module, spec: SpecLike, example_inputs: Any = None) -> GrowingModel:
    """Wrap ``model`` so it grows as ``spec`` (a :class:`Spec`, a dict or a YAML/JSON path) says.

    ``example_inputs`` (one tensor or a tuple, batch of one is enough) traces the model now, so
    spec errors that need the model surface here; without it the first forward call traces.
    """
    return GrowingModel(model, spec, example_inputs)


def _from_step(b: GroupBinding) -> bool:
    """The group's trigger measures the training step's own forward (``source: step``)."""
    return b.trigger.needs_activations and b.trigger.measures_step_forward


def _full_buffer_baseline(b: GroupBinding) -> bool:
    """The group's baseline phi(f_0) is meant to be measured on a full buffer (see ``prefill``)."""
    return b.trigger.full_buffer_baseline


def _grad_scale(scaler: torch.amp.GradScaler | None) -> float:
    """The loss scale of the step's backward (1 without a scaler, or with a disabled one)."""
    if scaler is None:
        return 1.0
    if not isinstance(scaler, torch.amp.GradScaler):
        raise ArchgrowError(
            f"grow_step: scaler must be the torch.amp.GradScaler that scaled this step's loss, got {type(scaler).__name__}"
        )
    if not scaler.is_enabled():
        return 1.0
    scale = float(scaler.get_scale())
    if not (scale > 0 and math.isfinite(scale)):
        raise ArchgrowError(f"grow_step: the GradScaler's scale is {scale}; pass the scaler that scaled this step's loss")
    return scale


def _finite(m: Measurement) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in (m.x, m.z, m.h) if t is not None)


def _as_tuple(x: Any) -> tuple[Any, ...]:
    return (x,) if isinstance(x, torch.Tensor) else tuple(x)

