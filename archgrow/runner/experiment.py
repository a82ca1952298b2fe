"""The experiment file: model, data, training, growth strategies, static baselines, seeds.

Validated like the growth spec (Pydantic, one line per problem naming file and field), and
resolved once at load time: relative paths are made absolute against the experiment file's
folder and every strategy's growth spec is loaded, so a sweep never fails an hour in on a typo.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from archgrow.data.fashion_mnist import DEBIAN_ROOT
from archgrow.errors import SpecError
from archgrow.models.registry import MODELS
from archgrow.spec import Spec, load_spec, parse_spec
from archgrow.spec.io import format_errors

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class ExperimentError(SpecError):
    """An experiment file that is invalid (``problems``: one line per problem)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- model
class ModelConfig(_Strict):
    """A built-in model (``mlp``, ``vgg11``, ``wrn28``) or any ``torchvision.models`` classification model.

    Input size and class count come from the data; ``kwargs`` go to the builder unchanged.
    """

    name: str = Field(description="mlp, vgg11, wrn28, or a torchvision.models name such as resnet18")
    width_mult: PositiveFloat = Field(1.0, description="built-in models: multiplier of the standard widths")
    hidden: list[PositiveInt] | None = Field(None, description="mlp only: hidden widths (default [64])")
    activation: Literal["modified_relu", "relu"] | None = Field(
        None, description="built-in models: the paper's modified ReLU (default) or nn.ReLU"
    )
    init: Literal["paper", "torch", "kaiming"] | None = Field(
        None,
        description="base initialisation: paper (Xavier-uniform weights, zero biases; Table 2), torch "
        "(each layer's reset_parameters) or kaiming (He-normal, zero biases). None: paper for the built-in "
        "models; other models keep their own init (a baseline widened beyond them falls back to torch)",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments of the builder")

    @model_validator(mode="after")
    def _builtin_options(self) -> ModelConfig:
        builtin = MODELS.get(self.name)
        if builtin is None:
            used = [f for f in ("hidden", "activation") if getattr(self, f) is not None]
            if self.width_mult != 1.0:
                used.append("width_mult")
            if used:
                raise ValueError(
                    f"{', '.join(used)} only apply to the built-in models ({', '.join(MODELS)}); "
                    f"pass torchvision options for '{self.name}' in kwargs"
                )
        else:
            unused = [f for f in ("hidden", "activation") if getattr(self, f) is not None and f not in builtin.options]
            if unused:
                takes = [n for n, m in MODELS.items() if unused[0] in m.options]
                raise ValueError(
                    f"{unused[0]} only applies to model {', '.join(repr(n) for n in takes)}, not '{self.name}' (use width_mult)"
                )
        return self


# --------------------------------------------------------------------------- data
class GeneratedData(_Strict):
    """The paper's generated binary task (B.1.1): n_independent informative features of n_features."""

    kind: Literal["generated"] = "generated"
    n_independent: PositiveInt = 8
    n_features: PositiveInt = 64
    n_samples: PositiveInt = 5000
    test_frac: float = Field(0.2, gt=0, lt=1, description="0.2 as the authors' code; the paper's text says 0.1")
    noise: float = Field(0.1, ge=0, le=1)
    seed: int = 1337

    @model_validator(mode="after")
    def _dims(self) -> GeneratedData:
        if self.n_independent > self.n_features:
            raise ValueError(f"n_independent ({self.n_independent}) must be <= n_features ({self.n_features})")
        return self


class DigitsData(_Strict):
    """scikit-learn's bundled 8x8 digits (1797 images), split by a seeded permutation."""

    kind: Literal["digits"] = "digits"
    test_frac: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    images: bool = Field(False, description="(N, 1, 8, 8) images instead of 64 flat features")


class MnistData(_Strict):
    """MNIST from IDX files in ``root``; the official train split if present, else the test split, cut in two."""

    kind: Literal["mnist"] = "mnist"
    root: str = Field(description="folder with the IDX files (.gz or not), relative to the experiment file")
    test_frac: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    limit: PositiveInt | None = Field(None, description="use only the first `limit` images (before the split)")
    images: bool = Field(False, description="(N, 1, H, W) images instead of 784 flat features")
    pad_to: PositiveInt | None = Field(None, description="images only: zero-pad 28x28 to this size (32 for VGG-11)")

    @model_validator(mode="after")
    def _padding(self) -> MnistData:
        if self.pad_to is not None and (not self.images or self.pad_to < 28):
            raise ValueError(f"pad_to={self.pad_to} needs images: true and a size >= 28")
        return self


class FashionMnistData(_Strict):
    """Fashion-MNIST's official split (60,000 train / 10,000 test) from IDX files in ``root``."""

    kind: Literal["fashion_mnist"] = "fashion_mnist"
    root: str = Field(
        DEBIAN_ROOT,
        description="folder with the IDX files (.gz or not), relative to the experiment file; default: where "
        "Debian's dataset-fashion-mnist package installs them",
    )
    limit: PositiveInt | None = Field(None, description="use only the first `limit` training images")
    test_limit: PositiveInt | None = Field(None, description="use only the first `test_limit` test images")
    images: bool = Field(False, description="(N, 1, H, W) images instead of 784 flat features")
    pad_to: PositiveInt | None = Field(None, description="images only: zero-pad 28x28 to this size (32 for VGG-11)")

    _padding = model_validator(mode="after")(MnistData._padding)


class CifarData(_Strict):
    """CIFAR-10/100 through torchvision, from files in ``root`` (or a download where a network exists)."""

    kind: Literal["cifar10", "cifar100"]
    root: str = Field(description="torchvision's CIFAR folder, relative to the experiment file")
    download: bool = False
    limit: PositiveInt | None = Field(None, description="use only the first `limit` train and test images")


DataConfig = Annotated[
    GeneratedData | DigitsData | MnistData | FashionMnistData | CifarData, Field(discriminator="kind")
]


# --------------------------------------------------------------------------- training
class TrainConfig(_Strict):
    """Optimizer and loop; one optimizer step is one ``grow_step``."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: PositiveFloat = 1e-3
    momentum: NonNegativeFloat = Field(0.9, description="sgd only")
    weight_decay: NonNegativeFloat = 0.0
    scheduler: Literal["none", "cosine"] = Field("none", description="cosine: CosineAnnealingLR over all steps")
    batch_size: PositiveInt = 128
    epochs: PositiveInt = 10
    eval_batch_size: PositiveInt = 1024
    eval_train: bool = Field(True, description="also measure train accuracy after each epoch (one more pass)")
    bn_statistics: Literal["running", "recalibrated"] = Field(
        "running",
        description="batch-norm statistics used by evaluations: running (the layers' running averages, the "
        "usual protocol) or recalibrated (recomputed as a plain average over the training inputs at the current "
        "weights before each evaluation, then put back, so training and growth are unchanged)",
    )
    workers: NonNegativeInt = Field(
        0, description="DataLoader worker processes that read batches (num_workers); 0: read in the training process"
    )
    pin_memory: bool | Literal["auto"] = Field(
        "auto", description="page-locked batches for faster copies to a GPU; auto: true when the run's device is CUDA"
    )

    @field_validator("pin_memory", mode="before")
    @classmethod
    def _pin_memory(cls, value: Any) -> Any:
        if value == "auto" or isinstance(value, bool):
            return value
        raise ValueError(f"pin_memory={value!r} is not accepted; use true, false or auto")


# --------------------------------------------------------------------------- strategies
class Strategy(_Strict):
    """A growth spec (path or inline mapping) with optional overrides of its ``defaults``."""

    spec: str | dict[str, Any] = Field(description="path to a spec file (relative to the experiment) or a spec mapping")
    defaults: dict[str, Any] = Field(default_factory=dict, description="merged into the spec's defaults")


def _strategy(value: Any) -> Any:
    """Shorthands: a bare path, or an inline spec mapping (it has 'rules')."""
    if isinstance(value, (str, os.PathLike)):
        return {"spec": str(value)}
    if isinstance(value, dict) and "spec" not in value and ("rules" in value or "version" in value):
        return {"spec": value}
    return value


class Experiment(_Strict):
    """Everything one ``archgrow run`` does: each strategy and each static baseline, for each seed."""

    version: Literal[1] = 1
    name: str | None = Field(None, description="default: the experiment file's name without suffix")
    model: ModelConfig
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    strategies: dict[str, Strategy] = Field(default_factory=dict, description="name -> growth spec")
    baselines: dict[str, PositiveFloat] = Field(
        default_factory=dict,
        description="static baselines: name -> width factor applied to every group the strategies grow "
        "(Small = 1, Big = the strategies' max width)",
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    device: str = Field("cpu", description="cpu, cuda, cuda:N, or auto (cuda when available)")
    dtype: Literal["float32", "float64"] = "float32"
    output: str | None = Field(None, description="run folder (default runs/<name>, relative to the working dir)")

    _source: str = PrivateAttr("<dict>")
    _specs: dict[str, Spec] = PrivateAttr(default_factory=dict)

    @field_validator("strategies", mode="before")
    @classmethod
    def _shorthands(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _strategy(v) for k, v in value.items()}
        return value

    @field_validator("strategies", "baselines")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(
                    f"name {name!r} is not accepted; names become folder names: letters, digits, '_', '.', '+', '-'"
                )
        return value

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must be distinct, got {value}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?|mps", value):
            raise ValueError(f"device {value!r} is not accepted; use cpu, cuda, cuda:N, mps or auto")
        return value

    @model_validator(mode="after")
    def _something_to_run(self) -> Experiment:
        if not self.strategies and not self.baselines:
            raise ValueError("nothing to run: give at least one entry in strategies or baselines")
        clash = sorted(set(self.strategies) & set(self.baselines))
        if clash:
            raise ValueError(f"names used both as strategy and baseline: {', '.join(clash)}")
        return self

    # ------------------------------------------------------------------ resolved views
    @property
    def source(self) -> str:
        return self._source

    @property
    def title(self) -> str:
        return self.name or "experiment"

    def spec(self, strategy: str) -> Spec:
        """The validated growth spec of a strategy (its ``defaults`` overrides applied)."""
        return self._specs[strategy]

    def runs(self) -> list[tuple[str, str, int]]:
        """``(name, kind, seed)`` for every run: strategies first, then baselines, seeds innermost."""
        named = [(n, "growing") for n in self.strategies] + [(n, "static") for n in self.baselines]
        return [(n, kind, seed) for n, kind in named for seed in self.seeds]

    def restricted(
        self, *, strategies: list[str] | None = None, seeds: list[int] | None = None, **changes: Any
    ) -> Experiment:
        """A copy running only some strategies/baselines or seeds, or with other top-level values."""
        data = self.model_dump()
        if strategies:
            known = list(self.strategies) + list(self.baselines)
            unknown = [s for s in strategies if s not in known]
            if unknown:
                raise ExperimentError(f"{self.source}: unknown strategy {', '.join(unknown)}; known: {', '.join(known)}")
            data["strategies"] = {k: v for k, v in data["strategies"].items() if k in strategies}
            data["baselines"] = {k: v for k, v in data["baselines"].items() if k in strategies}
        if seeds:
            data["seeds"] = seeds
        for key, value in changes.items():
            section, _, field = key.partition(".")
            if field:
                data[section][field] = value
            else:
                data[key] = value
        return _validate(data, self.source, base=None, specs=self._specs)


# --------------------------------------------------------------------------- loading
def load_experiment(path: str | os.PathLike) -> Experiment:
    """Read and validate an experiment file; relative paths are taken from the file's folder."""
    path = Path(path)
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ExperimentError(f"{source}: no such file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ExperimentError(f"{source}: {where}invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ExperimentError(f"{source}: an experiment must be a mapping with model, data and strategies")
    data.setdefault("name", path.stem)
    return _validate(data, source, base=path.parent)


def parse_experiment(data: dict[str, Any], *, source: str = "<dict>", base: str | os.PathLike | None = None) -> Experiment:
    """Validate an experiment given as a mapping; relative paths resolve against ``base`` (default: cwd)."""
    return _validate(copy.deepcopy(data), source, base=Path(base) if base is not None else Path.cwd())


def _validate(data: dict[str, Any], source: str, base: Path | None, specs: dict[str, Spec] | None = None) -> Experiment:
    try:
        exp = Experiment.model_validate(data)
    except ValidationError as exc:
        problems = [f"{source}: {line}" for line in format_errors(exc, root=Experiment)]
        raise ExperimentError("\n".join(problems), problems=problems) from None
    exp._source = source
    if base is not None:
        exp = _absolute_paths(exp, base)
        exp._source = source
    problems: list[str] = []
    for name, strategy in exp.strategies.items():
        if specs is not None and name in specs:
            exp._specs[name] = specs[name]
            continue
        try:
            exp._specs[name] = _load_strategy(strategy, f"{source}: strategies.{name}")
        except SpecError as exc:
            problems += exc.problems
    if problems:
        raise ExperimentError("\n".join(problems), problems=problems)
    return exp


def _absolute_paths(exp: Experiment, base: Path) -> Experiment:
    def resolve(p: str) -> str:
        return str((base / p).resolve()) if not Path(p).is_absolute() else p

    updates: dict[str, Any] = {}
    if hasattr(exp.data, "root"):
        updates["data"] = exp.data.model_copy(update={"root": resolve(exp.data.root)})
    strategies = {
        n: s.model_copy(update={"spec": resolve(s.spec)}) if isinstance(s.spec, str) else s
        for n, s in exp.strategies.items()
    }
    updates["strategies"] = strategies
    return exp.model_copy(update=updates)


def _load_strategy(strategy: Strategy, where: str) -> Spec:
    if isinstance(strategy.spec, str):
        spec = load_spec(strategy.spec)
        if not strategy.defaults:
            return spec
        data = yaml.safe_load(Path(strategy.spec).read_text())  # JSON is YAML too
        source = f"{strategy.spec} (with the defaults of {where})"
    else:
        data = copy.deepcopy(strategy.spec)
        source = f"{where}.spec"
    if strategy.defaults:
        data["defaults"] = {**(data.get("defaults") or {}), **strategy.defaults}
    return parse_spec(data, source=source)
