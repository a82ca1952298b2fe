"""The growth spec: which groups grow, when (trigger) and how (initializer).

Every option is explicit and validated before a model is touched (torchtune's habit): a spec that
loads is internally consistent, and what still depends on the model (which groups exist, their
kind, their widths) is checked by :func:`archgrow.wrap` when the spec is bound to a model.

Defaults follow the paper's Table 2; fields whose default depends on the model (``gamma``,
``running_max``, ``candidates``, ``buffer_size``) are ``None`` here and resolved at bind time, as
their docstrings say.
"""

from __future__ import annotations

import fnmatch
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

from archgrow.spec.kinds import INITIALIZERS, TRIGGERS, KindRegistry

_MULTIPLE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*x\s*$")


def _parse_width(value: Any) -> Any:
    """A width is a positive int (absolute) or a string like ``"2x"`` (multiple of the initial width)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a positive width like 512 or a multiple like '2x'; got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"must be a positive width like 512 or a multiple like '2x'; got {value}")
        return value
    if isinstance(value, str):
        m = _MULTIPLE.match(value)
        if m and float(m.group(1)) > 0:
            return f"{float(m.group(1)):g}x"
    raise ValueError(f"must be a positive width like 512 or a multiple like '2x'; got {value!r}")


Width = Annotated[
    int | str,
    BeforeValidator(_parse_width),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": r"^\s*0*([1-9]\d*(\.\d*)?|0?\.\d*[1-9]\d*)\s*x\s*$"},
            ],
            "description": "absolute width (512) or a multiple of the group's initial width ('2x')",
        }
    ),
]


def resolve_width(width: int | str, initial: int) -> int:
    """Absolute width for a :data:`Width` value, given the group's width when the spec was bound."""
    if isinstance(width, int):
        return width
    return max(1, math.floor(float(width[:-1]) * initial + 1e-9))


def _check_gamma(value: float | None) -> float | None:
    if value is not None and not 0.0 < value <= 1.0:
        raise ValueError(f"must be in (0, 1]; got {value}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TriggerConfig(_Strict):
    """Base of every trigger's options: subclass it with a ``kind: Literal["name"] = "name"`` field
    and register it with :func:`archgrow.register_trigger` (unknown fields are rejected, configs
    are immutable)."""


class InitializerConfig(_Strict):
    """Base of every initializer's options; see :class:`TriggerConfig`."""


class ByKind:
    """``Annotated`` marker: validate as the tagged union (on ``kind``) of a registry's config models.

    The union is built when the model using it is (re)built, so kinds registered later, from a
    user's code, are accepted once :func:`rebuild_spec_models` has run (registration does it).
    """

    def __init__(self, registry: KindRegistry):
        self.registry = registry

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        choices = {name: handler.generate_schema(config) for name, config in self.registry.configs().items()}
        return core_schema.tagged_union_schema(choices, discriminator="kind")

    def member(self, kind: Any) -> type[BaseModel] | None:
        return self.registry.configs().get(kind) if isinstance(kind, str) else None


# --------------------------------------------------------------------------- triggers
class ActivationTrigger(TriggerConfig):
    """T_act (eq. 3, with the code's ``max(0, .)`` and rounding): grow by the count of orthogonal
    activation directions above ``floor(gamma * phi_0 * M)``."""

    kind: Literal["activation"] = "activation"
    metric: Literal["effective_dim", "orthogonality_gap"] = "effective_dim"
    gamma: float | None = Field(
        None,
        description="(0, 1]; None: 0.97 for dense models, 0.9 with convolutions",
        json_schema_extra={"exclusiveMinimum": 0, "maximum": 1},
    )
    epsilon: PositiveFloat = Field(0.01, description="singular-value threshold of the effective dimension")
    source: Literal["buffer", "step"] = Field(
        "buffer",
        description=(
            "buffer: recompute activations on a FIFO of raw inputs after the update (the authors' code); "
            "step: reuse the training step's own forward on its batch (pre-update weights, no extra forward)"
        ),
    )
    buffer_size: PositiveInt | None = Field(
        None,
        description="raw-input FIFO capacity; None: 2 x max width for dense models, the latest mini-batch for "
        "models with convolutions (Table 2; source: buffer only)",
    )
    baseline: Literal["full_buffer", "first_batch"] | None = Field(
        None,
        description="where phi(f_0) is measured (source: buffer only). None or full_buffer: on a buffer filled "
        "before the first update (GrowingModel.prefill; the runner does it, as the authors' code does); "
        "first_batch: on the first training batch alone (archgrow before 0.2)",
    )
    running_max: bool | None = Field(None, description="eq. 10 running maximum; None: on for models with convs")
    rounding: Literal["code", "paper"] = Field("code", description="code: s - floor(g*phi0*M); paper: floor(...)")
    scale: Literal["auto", "samples", "channels"] = Field(
        "auto", description="1/sqrt(#rows) (paper) or 1/sqrt(#channels) (code, convs); auto picks per layer"
    )

    _gamma = field_validator("gamma")(_check_gamma)

    @model_validator(mode="after")
    def _buffer_needs_buffer_source(self) -> ActivationTrigger:
        for name in ("buffer_size", "baseline"):
            if self.source == "step" and getattr(self, name) is not None:
                raise ValueError(
                    f"{name} applies to the raw-input FIFO of source: buffer; source: step measures the training "
                    f"step's own batch (its baseline is the first step's): remove {name} or use source: buffer"
                )
        return self


class WeightTrigger(TriggerConfig):
    """T_weight (eq. 5): the activation trigger's rule on the weight matrix's effective dimension."""

    kind: Literal["weight"] = "weight"
    gamma: float = Field(0.99, description="(0, 1]", json_schema_extra={"exclusiveMinimum": 0, "maximum": 1})
    epsilon: PositiveFloat = 0.01
    running_max: bool | None = Field(None, description="None: on for models with convolutions (the code)")
    rounding: Literal["code", "paper"] = "code"
    include_bias: bool = Field(False, description="append the bias column (the paper) or not (the code)")

    _gamma = field_validator("gamma")(_check_gamma)


class GradientTrigger(TriggerConfig):
    """T_grad (eq. 6): singular values of the auxiliary gradient above the existing neurons' gradient norms."""

    kind: Literal["gradient"] = "gradient"
    threshold: Literal["code", "paper"] = Field(
        "code", description="code: sigma >= 1/2 sum of norms; paper: sigma > sum of norms"
    )
    unit_norms: Literal["gradient", "update"] = Field(
        "gradient",
        description="per-unit norms of the threshold: gradient (the paper: dL/dW of the step) or update (what "
        "the authors' code read after Flux's update!, which overwrote the gradients with the optimizer's step "
        "dW: the norms of this step's change of the weights)",
    )


class _Schedule(TriggerConfig):
    final_width: Width = Field(description="width reached at the end of the growth window")
    initial_width: PositiveInt | None = Field(None, description="None: the group's width when wrapped")
    total_steps: PositiveInt = Field(description="training length in optimizer steps (grow_step calls)")
    grow_fraction: float = Field(0.75, gt=0, le=1, description="share of training during which it grows")


class LinearSchedule(_Schedule):
    """Width follows a linear ramp from initial to final width, at most one step of growth per call."""

    kind: Literal["linear_schedule"] = "linear_schedule"


class BatchedSchedule(_Schedule):
    """Width jumps in ``stages`` equal batches at evenly spaced points of the growth window."""

    kind: Literal["batched_schedule"] = "batched_schedule"
    stages: PositiveInt = 8


class StaticTrigger(TriggerConfig):
    """Never grows (a static baseline)."""

    kind: Literal["static"] = "static"


Trigger = Annotated[TriggerConfig, ByKind(TRIGGERS)]


# --------------------------------------------------------------------------- initializers
class RandomInit(InitializerConfig):
    """NORTH-Random: Xavier fan-in rescaled to the mean fan-in norm; zero fan-out and bias."""

    kind: Literal["random"] = "random"


class SelectInit(InitializerConfig):
    """NORTH-Select: the k best of ``candidates + k`` random fan-ins by count + sum of singular values."""

    kind: Literal["select"] = "select"
    candidates: PositiveInt | None = Field(None, description="None: 1000 for dense groups, 100 for conv groups")
    order: Literal["highest", "lowest"] = Field(
        "highest", description="highest: the paper's intent; lowest: what the authors' MLP code did"
    )
    lexicographic: bool = Field(False, description="compare count first, sum of singular values second")


class PreactivationInit(InitializerConfig):
    """NORTH-Pre (eq. 7): fan-ins whose pre-activations lie in the kernel of the existing ones (dense)."""

    kind: Literal["preactivation"] = "preactivation"
    candidates: PositiveInt | None = Field(None, description="None: 1000")


class WeightInit(InitializerConfig):
    """NORTH-Weight (eq. 8): random fan-in projected onto the kernel of the existing weight rows."""

    kind: Literal["weight"] = "weight"
    projection: bool = Field(
        True,
        description="true: project onto the kernel of the existing rows (eq. 8, the paper); false: keep the random "
        "fan-in as drawn (what the authors' MLP code did: its size test never passed, algorithms.md §5.5)",
    )


class GradMaxInit(InitializerConfig):
    """GradMax: zero fan-in, fan-out from the top singular vectors of the auxiliary gradient."""

    kind: Literal["gradmax"] = "gradmax"
    fan_in_scale: NonNegativeFloat | None = Field(
        None,
        description="new fan-in norm as a fraction of the mean fan-in norm; None: 0 (exact zero fan-in) unless a "
        "ReLU-like op (gradient 0 at 0) lies between the group and its consumers, then 1e-3",
    )


class FireflyInit(InitializerConfig):
    """Firefly: split and new candidates, keep those with the largest fan-in gradient."""

    kind: Literal["firefly"] = "firefly"
    candidates: PositiveInt | None = Field(None, description="None: 1000 for dense groups, 100 for conv groups")
    epsilon: PositiveFloat = 1e-4


class NestInit(InitializerConfig):
    """NeST: fan-in and fan-out from the large entries of the auxiliary gradient."""

    kind: Literal["nest"] = "nest"
    quantile: float = Field(0.4, ge=0, lt=1, description="entries above this quantile of |G| are used")
    sign_aware: bool = False
    candidates: PositiveInt | None = Field(None, description="conv groups: None means 100")


Initializer = Annotated[InitializerConfig, ByKind(INITIALIZERS)]

# The kinds archgrow ships (each registered by its rule class, in archgrow.triggers / .initializers).
TRIGGER_KINDS = ("activation", "weight", "gradient", "linear_schedule", "batched_schedule", "static")
INITIALIZER_KINDS = ("random", "select", "preactivation", "weight", "gradmax", "firefly", "nest")


# --------------------------------------------------------------------------- rules
class _Deferred(_Strict):
    # Built on first use (or by rebuild_spec_models), when the registries hold the kinds.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Settings(_Deferred):
    """What a group does; ``defaults`` sets every field, rules override some."""

    trigger: Trigger = Field(default_factory=ActivationTrigger)
    initializer: Initializer = Field(default_factory=SelectInit)
    max_width: Width = Field("2x", description="cap: absolute or a multiple of the initial width")
    every_n_steps: PositiveInt = Field(1, description="evaluate the trigger on every n-th grow_step")
    frozen: bool = False


class Rule(_Deferred):
    """Selects groups by name and overrides the fields it sets; later rules win."""

    match: str = Field(description="a group name, a glob such as 'stage2.*', or '*'", min_length=1)
    layers: Literal["any", "dense", "conv"] = Field(
        "any", description="only groups whose first producer is a convolution (conv) or not (dense)"
    )
    trigger: Trigger | None = None
    initializer: Initializer | None = None
    max_width: Width | None = None
    every_n_steps: PositiveInt | None = None
    frozen: bool | None = None

    def selects(self, group: str, conv: bool | None = None) -> bool:
        if self.layers != "any" and conv is not None and conv != (self.layers == "conv"):
            return False
        return self.match == "*" or self.match == group or fnmatch.fnmatchcase(group, self.match)

    @property
    def is_pattern(self) -> bool:
        return any(c in self.match for c in "*?[")


class Spec(_Deferred):
    """A growth spec: ``version``, a ``seed``, ``defaults`` and an ordered list of ``rules``.

    Groups no rule selects do not grow.
    """

    version: Literal[1] = 1
    seed: int = Field(
        0,
        ge=-(2**63),
        le=2**64 - 1,
        description="seeds every random choice of triggers and initializers (a torch.Generator seed: -2**63 to 2**64-1)",
    )
    defaults: Settings = Field(default_factory=Settings)
    rules: list[Rule] = Field(default_factory=list)
    _source: str | None = PrivateAttr(default=None)

    @property
    def source(self) -> str:
        """Where the spec came from, for error messages ('<dict>' when built in code)."""
        return self._source or "<spec>"

    def located(self, source: str) -> Spec:
        """Record where the spec was read from (a file path, '<dict>'), for error messages; returns self."""
        self._source = source
        return self

    def settings_for(self, group: str, conv: bool | None = None) -> tuple[Settings, list[int]]:
        """The merged settings for ``group`` and the indices of the rules that selected it."""
        merged = self.defaults.model_dump()
        matched = []
        for i, rule in enumerate(self.rules):
            if rule.selects(group, conv):
                matched.append(i)
                for name in Settings.model_fields:
                    value = getattr(rule, name)
                    if value is not None:
                        merged[name] = value.model_dump() if isinstance(value, BaseModel) else value
        return Settings.model_validate(merged), matched


def rebuild_spec_models() -> None:
    """Rebuild the spec models' validators and JSON Schema from the current registries.

    Models not built yet are left to build on first use (``defer_build``), which also keeps the
    built-in registrations at import time from building them once per kind.
    """
    models = (Settings, Rule, Spec)
    if any(m.__pydantic_complete__ for m in models):
        for model in models:
            model.model_rebuild(force=True)


TRIGGERS.config_base = TriggerConfig
INITIALIZERS.config_base = InitializerConfig
TRIGGERS.on_change(rebuild_spec_models)
INITIALIZERS.on_change(rebuild_spec_models)

__all__ = [
    "INITIALIZER_KINDS",
    "TRIGGER_KINDS",
    "ActivationTrigger",
    "BatchedSchedule",
    "FireflyInit",
    "GradMaxInit",
    "GradientTrigger",
    "Initializer",
    "InitializerConfig",
    "LinearSchedule",
    "NestInit",
    "PreactivationInit",
    "RandomInit",
    "Rule",
    "SelectInit",
    "Settings",
    "Spec",
    "StaticTrigger",
    "Trigger",
    "TriggerConfig",
    "WeightInit",
    "WeightTrigger",
    "Width",
    "rebuild_spec_models",
    "resolve_width",
]
