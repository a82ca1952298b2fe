"""Growth specs: presets, file errors (one exact line per problem), merging, binding to a model, the
JSON Schema and the ``archgrow validate`` / ``archgrow schema`` commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import archgrow
from archgrow import models
from archgrow.cli import main
from archgrow.errors import SpecError
from archgrow.spec import (
    INITIALIZER_KINDS,
    TRIGGER_KINDS,
    ActivationTrigger,
    Rule,
    SelectInit,
    Settings,
    Spec,
    WeightTrigger,
    as_spec,
    json_schema,
    load_spec,
    parse_spec,
    resolve_width,
)

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"
PRESETS = sorted(SPECS.glob("*.yaml"))

TRIGGER_LIST = "activation, weight, gradient, linear_schedule, batched_schedule, static"
INIT_LIST = "random, select, preactivation, weight, gradmax, firefly, nest"
RULE_FIELDS = "match, layers, trigger, initializer, max_width, every_n_steps, frozen"
WIDTH_MSG = "must be a positive width like 512 or a multiple like '2x'"

# preset name -> (trigger kind, initializer kind) for a dense group, and for a conv group
PRESET_KINDS = {
    "north-select": (("activation", "select"), ("activation", "select")),
    "north-pre": (("activation", "preactivation"), ("activation", "select")),
    "north-random": (("activation", "random"), ("activation", "random")),
    "north-weight": (("weight", "weight"), ("weight", "weight")),
    "gradmax": (("gradient", "gradmax"), ("gradient", "gradmax")),
    "firefly": (("gradient", "firefly"), ("gradient", "firefly")),
    "nest": (("gradient", "nest"), ("gradient", "nest")),
    "linear-schedule": (("linear_schedule", "random"), ("linear_schedule", "random")),
    "batched-schedule": (("batched_schedule", "random"), ("batched_schedule", "random")),
    "static": (("static", "select"), ("static", "select")),
}
# the authors'-code variant of a preset: the same kinds, and the one option that differs
AUTHORS_VARIANTS = {
    "north-select-authors": ("north-select", "initializer", "order", "highest", "lowest"),
    "north-weight-authors": ("north-weight", "initializer", "projection", True, False),
    "gradmax-authors": ("gradmax", "trigger", "unit_norms", "gradient", "update"),
    "firefly-authors": ("firefly", "trigger", "unit_norms", "gradient", "update"),
    "nest-authors": ("nest", "trigger", "unit_norms", "gradient", "update"),
}
for _variant, (_base, *_rest) in AUTHORS_VARIANTS.items():
    PRESET_KINDS[_variant] = PRESET_KINDS[_base]


@pytest.mark.parametrize("variant", sorted(AUTHORS_VARIANTS))
def test_authors_variant_differs_from_the_paper_preset_in_one_named_option(variant: str) -> None:
    base, part, option, paper_value, authors_value = AUTHORS_VARIANTS[variant]
    paper = load_spec(SPECS / f"{base}.yaml").settings_for("g")[0]
    authors = load_spec(SPECS / f"{variant}.yaml").settings_for("g")[0]
    assert getattr(getattr(paper, part), option) == paper_value
    assert getattr(getattr(authors, part), option) == authors_value
    changed = authors.model_dump()
    changed[part][option] = paper_value
    assert changed == paper.model_dump(), "the variant differs in more than its one option"


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.mlp(in_features=64, hidden=(64, 32), num_classes=2)


def _vgg() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.vgg11(width_mult=0.125)


MLP_X = torch.randn(1, 64)
VGG_X = torch.randn(1, 3, 32, 32)
MLP_GROWABLE = "growable groups: hidden1 (64), hidden2 (32)"


# --------------------------------------------------------------------------- 1. presets
def test_one_preset_per_strategy() -> None:
    assert len(PRESETS) >= 10
    assert set(PRESET_KINDS) <= {p.stem for p in PRESETS}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_loads_with_the_kinds_its_name_says(path: Path) -> None:
    spec = load_spec(path)
    assert isinstance(spec, Spec)
    assert spec.source == str(path)
    assert spec.version == 1
    assert spec.rules, "a preset without rules grows nothing"
    if path.stem not in PRESET_KINDS:
        pytest.skip(f"no expected kinds recorded for preset {path.stem}")
    for conv, (tkind, ikind) in zip((False, True), PRESET_KINDS[path.stem], strict=True):
        settings, matched = spec.settings_for("some.group", conv=conv)
        assert matched, "every preset selects every group"
        assert (settings.trigger.kind, settings.initializer.kind) == (tkind, ikind), f"conv={conv}"
        assert not settings.frozen


def test_schedule_presets_set_their_window() -> None:
    for name, kind in (("linear-schedule", "linear_schedule"), ("batched-schedule", "batched_schedule")):
        trigger = load_spec(SPECS / f"{name}.yaml").settings_for("g")[0].trigger
        assert trigger.kind == kind
        assert trigger.final_width == "4x"
        assert trigger.total_steps == 2000
        assert trigger.grow_fraction == 0.75
    assert load_spec(SPECS / "batched-schedule.yaml").settings_for("g")[0].trigger.stages == 8


# --------------------------------------------------------------------------- 2. bad files
BAD_FILES = [
    (
        "unknown-trigger",
        "t.yaml",
        "rules:\n  - match: '*'\n    trigger: {kind: foo}\n",
        [f"rules[0].trigger: unknown kind 'foo'; accepted kinds: {TRIGGER_LIST}"],
    ),
    (
        "initializer-kind-in-trigger",
        "t.yaml",
        "rules:\n  - match: '*'\n    trigger: {kind: select}\n",
        [f"rules[0].trigger: unknown kind 'select'; accepted kinds: {TRIGGER_LIST}"],
    ),
    (
        "unknown-initializer",
        "t.yaml",
        "rules:\n  - match: '*'\n    initializer: {kind: bar}\n",
        [f"rules[0].initializer: unknown kind 'bar'; accepted kinds: {INIT_LIST}"],
    ),
    (
        "missing-trigger-kind",
        "t.yaml",
        "rules:\n  - match: '*'\n    trigger: {gamma: 0.5}\n",
        [f"rules[0].trigger: missing 'kind'; accepted kinds: {TRIGGER_LIST}"],
    ),
    (
        "missing-initializer-kind",
        "t.yml",
        "defaults:\n  initializer: {candidates: 5}\n",
        [f"defaults.initializer: missing 'kind'; accepted kinds: {INIT_LIST}"],
    ),
    (
        "gamma-1.5",
        "t.yaml",
        "rules:\n  - match: '*'\n    trigger: {kind: activation, gamma: 1.5}\n",
        ["rules[0].trigger.gamma: must be in (0, 1]; got 1.5"],
    ),
    (
        "gamma-0",
        "t.yaml",
        "defaults:\n  trigger: {kind: weight, gamma: 0}\n",
        ["defaults.trigger.gamma: must be in (0, 1]; got 0.0"],
    ),
    (
        "unknown-trigger-field",
        "t.yaml",
        "rules:\n  - match: '*'\n    trigger: {kind: activation, gama: 0.5}\n",
        [
            "rules[0].trigger.gama: unknown field 'gama'; accepted fields: "
            "kind, metric, gamma, epsilon, source, buffer_size, baseline, running_max, rounding, scale"
        ],
    ),
    (
        "unknown-field-of-weight-initializer",
        "t.yaml",
        "defaults:\n  initializer: {kind: weight, gamma: 0.5}\n",
        ["defaults.initializer.gamma: unknown field 'gamma'; accepted fields: kind, projection"],
    ),
    (
        "unknown-rule-field",
        "t.yaml",
        "rules:\n  - match: '*'\n    matc: x\n",
        [f"rules[0].matc: unknown field 'matc'; accepted fields: {RULE_FIELDS}"],
    ),
    (
        "unknown-top-level-field",
        "t.yaml",
        "version: 1\nrule: []\n",
        ["rule: unknown field 'rule'; accepted fields: version, seed, defaults, rules"],
    ),
    ("negative-max-width", "t.yaml", "defaults:\n  max_width: -4\n", [f"defaults.max_width: {WIDTH_MSG}; got -4"]),
    (
        "max-width-abc",
        "t.yaml",
        "rules:\n  - match: '*'\n    max_width: abc\n",
        [f"rules[0].max_width: {WIDTH_MSG}; got 'abc'"],
    ),
    ("max-width-0x", "t.yaml", "defaults:\n  max_width: 0x\n", [f"defaults.max_width: {WIDTH_MSG}; got '0x'"]),
    ("max-width-bool", "t.yaml", "defaults:\n  max_width: true\n", [f"defaults.max_width: {WIDTH_MSG}; got True"]),
    (
        "every-n-steps-0",
        "t.yaml",
        "defaults:\n  every_n_steps: 0\n",
        ["defaults.every_n_steps: input should be greater than 0; got 0"],
    ),
    ("version-2", "t.yaml", "version: 2\n", ["version: got 2; accepted: 1"]),
    ("missing-match", "t.yaml", "rules:\n  - trigger: {kind: static}\n", ["rules[0].match: required field is missing"]),
    (
        "empty-match",
        "t.yaml",
        "rules:\n  - match: ''\n",
        ["rules[0].match: string should have at least 1 character; got ''"],
    ),
    (
        "bad-layers",
        "t.yaml",
        "rules:\n  - match: '*'\n    layers: linear\n",
        ["rules[0].layers: got 'linear'; accepted: 'any', 'dense' or 'conv'"],
    ),
    (
        "linear-schedule-missing-fields",
        "t.yaml",
        "rules:\n  - match: '*'\n    trigger: {kind: linear_schedule}\n",
        [
            "rules[0].trigger.final_width: required field is missing",
            "rules[0].trigger.total_steps: required field is missing",
        ],
    ),
    (
        "batched-schedule-missing-fields",
        "t.yaml",
        "defaults:\n  trigger: {kind: batched_schedule, stages: 4}\n",
        [
            "defaults.trigger.final_width: required field is missing",
            "defaults.trigger.total_steps: required field is missing",
        ],
    ),
    ("list-for-defaults", "t.yaml", "defaults: [1, 2]\n", ["defaults: expected a mapping, got list"]),
    (
        "list-for-trigger",
        "t.yaml",
        "rules:\n  - match: '*'\n    trigger: [activation]\n",
        ["rules[0].trigger: expected a mapping, got list"],
    ),
    ("string-rule", "t.yaml", "rules:\n  - hidden1\n", ["rules[0]: expected a mapping, got str"]),
    (
        "mapping-for-rules",
        "t.yaml",
        "rules: {match: '*'}\n",
        ["rules: input should be a valid list; got {'match': '*'}"],
    ),
    ("top-level-list", "t.yaml", "- match: '*'\n", ["the spec must be a mapping with 'version' and 'rules', got list"]),
    (
        "several-problems",
        "t.yaml",
        "version: 2\n"
        "rules:\n"
        "  - match: '*'\n"
        "    trigger: {kind: activation, gamma: 1.5}\n"
        "    initializer: {kind: nope}\n"
        "  - layers: dense\n"
        "    every_n_steps: 0\n",
        [
            "version: got 2; accepted: 1",
            "rules[0].trigger.gamma: must be in (0, 1]; got 1.5",
            f"rules[0].initializer: unknown kind 'nope'; accepted kinds: {INIT_LIST}",
            "rules[1].match: required field is missing",
            "rules[1].every_n_steps: input should be greater than 0; got 0",
        ],
    ),
    (
        "json-gamma-2",
        "t.json",
        '{"version": 1, "rules": [{"match": "*", "trigger": {"kind": "weight", "gamma": 2}}]}',
        ["rules[0].trigger.gamma: must be in (0, 1]; got 2.0"],
    ),
    (
        "json-syntax",
        "t.json",
        '{"version": 1,,}',
        ["line 1: invalid JSON: Expecting property name enclosed in double quotes"],
    ),
    ("unknown-suffix", "spec.toml", "version = 1\n", ["unknown spec format '.toml'; accepted: .yaml, .yml, .json"]),
    (
        "yaml-syntax",
        "t.yaml",
        "rules:\n  - match: '*'\n    trigger: {kind: activation\n",
        ["line 4: invalid YAML: expected ',' or '}', but got '<stream end>'"],
    ),
    ("empty-file", "t.yaml", "", ["the spec is empty; expected a mapping with 'version' and 'rules'"]),
    (
        "comments-only",
        "t.yaml",
        "# nothing here\n",
        ["the spec is empty; expected a mapping with 'version' and 'rules'"],
    ),
    ("missing-file", "absent.yaml", None, ["no such file"]),
]


@pytest.mark.parametrize(("name", "content", "expected"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_spec_file_gives_exact_lines(tmp_path: Path, name: str, content: str | None, expected: list[str]) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    lines = [f"{path}: {line}" for line in expected]
    assert exc.value.problems == lines
    assert str(exc.value) == "\n".join(lines)


def test_bad_spec_file_accepts_str_path(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("version: 2\n")
    with pytest.raises(SpecError, match=re.escape(f"{path}: version: got 2; accepted: 1")):
        load_spec(str(path))


def test_unreadable_path_problem_line_matches_message(tmp_path: Path) -> None:
    path = tmp_path / "dir.yaml"
    path.mkdir()
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    assert str(exc.value).startswith(f"{path}: cannot read")
    assert exc.value.problems == [str(exc.value)]


@pytest.mark.parametrize("name", ["good.yml", "good.YAML", "good.json", "good.JSON"])
def test_good_files_of_every_accepted_suffix_load(tmp_path: Path, name: str) -> None:
    data = {"version": 1, "seed": 7, "rules": [{"match": "hidden*", "trigger": {"kind": "weight"}}]}
    path = tmp_path / name
    path.write_text(json.dumps(data))  # JSON is valid YAML too
    spec = load_spec(path)
    assert spec.seed == 7
    assert spec.source == str(path)
    assert spec.settings_for("hidden1")[0].trigger == WeightTrigger()


def test_parse_spec_and_as_spec_sources(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as exc:
        parse_spec({"rules": [{"match": "*", "every_n_steps": -1}]}, source="mine")
    assert exc.value.problems == ["mine: rules[0].every_n_steps: input should be greater than 0; got -1"]
    with pytest.raises(SpecError) as exc:
        as_spec({"version": 3})
    assert exc.value.problems == ["<dict>: version: got 3; accepted: 1"]
    with pytest.raises(SpecError, match=r"^spec must be a Spec, a dict or a path to a YAML/JSON file, got int$"):
        as_spec(5)

    spec = as_spec({"rules": [{"match": "*"}]})
    assert spec.source == "<dict>"
    assert as_spec(spec) is spec
    assert Spec().source == "<spec>"
    path = tmp_path / "s.yaml"
    path.write_text("seed: 3\n")
    assert as_spec(path).seed == 3
    assert as_spec(str(path)).source == str(path)


# --------------------------------------------------------------------------- 3. merging and defaults
def test_defaults_are_the_papers() -> None:
    s = Settings()
    assert isinstance(s.trigger, ActivationTrigger)
    assert s.trigger.kind == "activation"
    assert s.trigger.gamma is None  # model-dependent: 0.97 dense, 0.9 with convolutions
    assert s.trigger.epsilon == 0.01
    assert s.trigger.metric == "effective_dim"
    assert s.trigger.running_max is None
    assert isinstance(s.initializer, SelectInit)
    assert s.initializer.candidates is None  # 1000 dense, 100 conv
    assert s.every_n_steps == 1
    assert s.max_width == "2x"
    assert s.frozen is False
    w = WeightTrigger()
    assert (w.gamma, w.epsilon, w.include_bias) == (0.99, 0.01, False)
    spec = Spec()
    assert (spec.version, spec.seed, spec.rules) == (1, 0, [])
    assert spec.defaults == Settings()


def test_groups_no_rule_selects_get_defaults_and_no_match() -> None:
    spec = parse_spec({"defaults": {"max_width": 100}, "rules": [{"match": "stage2.*", "every_n_steps": 4}]})
    settings, matched = spec.settings_for("stage1.conv")
    assert matched == []
    assert settings.max_width == 100
    assert settings.every_n_steps == 1
    settings, matched = spec.settings_for("stage2.conv")
    assert matched == [0]
    assert (settings.max_width, settings.every_n_steps) == (100, 4)


def test_later_rules_override_field_by_field() -> None:
    spec = parse_spec(
        {
            "defaults": {"max_width": "3x", "initializer": {"kind": "random"}},
            "rules": [
                {"match": "*", "max_width": 8, "every_n_steps": 3, "trigger": {"kind": "weight", "gamma": 0.5}},
                {"match": "h*", "every_n_steps": 5},
                {"match": "h2", "frozen": True, "initializer": {"kind": "weight"}},
            ],
        }
    )
    h1, matched = spec.settings_for("h1")
    assert matched == [0, 1]
    assert h1.max_width == 8  # rule 0, untouched by rule 1
    assert h1.every_n_steps == 5  # rule 1 wins over rule 0
    assert h1.trigger == WeightTrigger(gamma=0.5)  # rule 0, untouched by rule 1
    assert h1.initializer.kind == "random"  # defaults
    assert h1.frozen is False
    h2, matched = spec.settings_for("h2")
    assert matched == [0, 1, 2]
    assert (h2.max_width, h2.every_n_steps, h2.frozen, h2.initializer.kind) == (8, 5, True, "weight")
    other, matched = spec.settings_for("x")
    assert matched == [0]
    assert (other.max_width, other.every_n_steps) == (8, 3)


def test_rule_trigger_replaces_the_whole_trigger() -> None:
    spec = parse_spec(
        {
            "defaults": {"trigger": {"kind": "activation", "gamma": 0.5, "epsilon": 0.2, "buffer_size": 64}},
            "rules": [
                {"match": "a", "trigger": {"kind": "activation", "metric": "orthogonality_gap"}},
                {"match": "b", "trigger": {"kind": "weight"}},
                {"match": "c", "max_width": 9},
            ],
        }
    )
    a = spec.settings_for("a")[0].trigger
    assert a == ActivationTrigger(metric="orthogonality_gap")
    assert (a.gamma, a.epsilon, a.buffer_size) == (None, 0.01, None)  # not merged with the defaults' fields
    assert spec.settings_for("b")[0].trigger == WeightTrigger()
    c = spec.settings_for("c")[0].trigger  # no trigger in the rule: the defaults' one
    assert (c.gamma, c.epsilon, c.buffer_size) == (0.5, 0.2, 64)


def test_layers_filter_dense_and_conv() -> None:
    spec = parse_spec(
        {
            "rules": [
                {"match": "*", "initializer": {"kind": "select"}},
                {"match": "*", "layers": "dense", "initializer": {"kind": "preactivation"}},
                {"match": "*", "layers": "conv", "max_width": 7},
            ]
        }
    )
    dense, matched = spec.settings_for("g", conv=False)
    assert matched == [0, 1]
    assert (dense.initializer.kind, dense.max_width) == ("preactivation", "2x")
    conv, matched = spec.settings_for("g", conv=True)
    assert matched == [0, 2]
    assert (conv.initializer.kind, conv.max_width) == ("select", 7)
    rule = Rule(match="stage?.*", layers="conv")
    assert rule.selects("stage1.conv", conv=True)
    assert not rule.selects("stage1.conv", conv=False)
    assert not rule.selects("stem", conv=True)
    assert Rule(match="stem").layers == "any"


def test_rule_matching_exact_glob_and_star() -> None:
    assert Rule(match="*").selects("anything.at.all")
    assert Rule(match="features.0").selects("features.0")
    assert not Rule(match="features.0").selects("features.01")
    assert Rule(match="features.1?").selects("features.13")
    assert Rule(match="hidden[12]").selects("hidden2")
    assert not Rule(match="hidden[12]").selects("hidden3")
    assert not Rule(match="Hidden1").selects("hidden1")  # case-sensitive
    assert Rule(match="a*").is_pattern and Rule(match="a?").is_pattern and Rule(match="a[b]").is_pattern
    assert not Rule(match="features.0").is_pattern


@pytest.mark.parametrize(
    ("width", "initial", "expected"),
    [("2.5x", 10, 25), ("2x", 64, 128), ("1x", 7, 7), ("0.5x", 64, 32), ("0.1x", 3, 1), (7, 100, 7), (512, 1, 512)],
)
def test_resolve_width(width: int | str, initial: int, expected: int) -> None:
    assert resolve_width(width, initial) == expected


def test_resolve_width_is_exact_for_decimal_multiples() -> None:
    assert resolve_width("2.3x", 100) == 230
    assert resolve_width("0.29x", 100) == 29
    assert resolve_width("4.35x", 100) == 435


@pytest.mark.parametrize(
    ("given", "stored"), [("2x", "2x"), (" 2.50 x ", "2.5x"), (".5x", "0.5x"), ("3.x", "3x"), (16, 16)]
)
def test_width_values_are_normalised(given: int | str, stored: int | str) -> None:
    assert Settings(max_width=given).max_width == stored
    assert Rule(match="*", max_width=given).max_width == stored


def test_specs_are_frozen() -> None:
    spec = parse_spec({"rules": [{"match": "*"}]})
    with pytest.raises(ValueError):
        spec.seed = 1  # type: ignore[misc]
    with pytest.raises(ValueError):
        spec.rules[0].match = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- 4. model-dependent errors
def _wrap_problems(model: torch.nn.Module, spec: object, x: torch.Tensor) -> list[str]:
    with pytest.raises(SpecError) as exc:
        archgrow.wrap(model, spec, x)
    assert str(exc.value) == "\n".join(exc.value.problems)
    return exc.value.problems


def test_match_selecting_no_group_lists_growable_groups() -> None:
    assert _wrap_problems(_mlp(), {"rules": [{"match": "conv*"}]}, MLP_X) == [
        f"<dict>: rules[0].match: 'conv*' selects no width group; {MLP_GROWABLE}"
    ]


def test_match_excluded_by_layers_filter_says_so() -> None:
    assert _wrap_problems(_mlp(), {"rules": [{"match": "hidden1", "layers": "conv"}]}, MLP_X) == [
        f"<dict>: rules[0].match: 'hidden1' with layers: conv selects no width group; {MLP_GROWABLE}"
    ]
    problems = _wrap_problems(_vgg(), {"rules": [{"match": "classifier.0", "layers": "conv"}]}, VGG_X)
    assert problems == [
        "<dict>: rules[0].match: 'classifier.0' with layers: conv selects no width group; growable groups: "
        "features.0 (8), features.3 (16), features.6 (32), features.8 (32), features.11 (64), features.13 (64), "
        "features.16 (64), features.18 (64), classifier.0 (512), classifier.2 (512)"
    ]


def test_model_errors_name_the_spec_file(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("rules:\n  - match: nope\n")
    assert _wrap_problems(_mlp(), path, MLP_X) == [
        f"{path}: rules[0].match: 'nope' selects no width group; {MLP_GROWABLE}"
    ]


def test_exact_rule_on_non_growable_group() -> None:
    problems = _wrap_problems(_mlp(), {"rules": [{"match": "out"}]}, MLP_X)
    assert len(problems) == 1
    assert problems[0].startswith("<dict>: rules[0].match: group 'out' cannot grow: ")
    assert "model output" in problems[0]
    assert problems[0].endswith(f"; {MLP_GROWABLE}")


def test_freezing_or_globbing_a_non_growable_group_is_allowed() -> None:
    grown = archgrow.wrap(_mlp(), {"rules": [{"match": "out", "frozen": True}]}, MLP_X)
    assert grown.growing == {}
    with pytest.warns(UserWarning, match=re.escape("<dict>: rules[0] ('o*') selects only frozen groups: out")):
        grown = archgrow.wrap(_mlp(), {"rules": [{"match": "o*"}]}, MLP_X)
    assert grown.growing == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grown = archgrow.wrap(_mlp(), {"rules": [{"match": "*"}]}, MLP_X)
    assert sorted(grown.growing) == ["hidden1", "hidden2"]


def test_preactivation_on_a_conv_group() -> None:
    spec = {"rules": [{"match": "features.0", "initializer": {"kind": "preactivation"}}]}
    assert _wrap_problems(_vgg(), spec, VGG_X) == [
        "<dict>: rules[0].initializer: 'preactivation' is for dense groups (eq. 7); group 'features.0' is produced "
        "by 'features.0' (Conv2d); use 'select', 'weight' or 'random'"
    ]


def test_preactivation_on_every_vgg_group_reports_each_conv_group() -> None:
    problems = _wrap_problems(_vgg(), {"rules": [{"match": "*", "initializer": {"kind": "preactivation"}}]}, VGG_X)
    convs = ["features.0", "features.3", "features.6", "features.8", "features.11", "features.13", "features.16"]
    convs.append("features.18")
    assert len(problems) == len(convs)
    for line, group in zip(problems, convs, strict=True):
        assert line.startswith(
            f"<dict>: rules[0].initializer: 'preactivation' is for dense groups (eq. 7); group '{group}' "
        )


def test_north_pre_preset_binds_to_vgg_with_select_on_convs() -> None:
    grown = archgrow.wrap(_vgg(), SPECS / "north-pre.yaml", VGG_X)
    kinds = {name: b.settings.initializer.kind for name, b in grown.growing.items()}
    assert kinds["features.0"] == "select"
    assert kinds["classifier.0"] == "preactivation"
    assert "classifier.4" not in kinds  # reaches the output


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (
            {"rules": [{"match": "*", "max_width": 40}]},
            "<dict>: rules[0].max_width: 40 gives 40, below group 'hidden1'",
        ),
        (
            {"defaults": {"max_width": "0.5x"}, "rules": [{"match": "hidden1"}]},
            "<dict>: defaults.max_width: '0.5x' gives 32, below group 'hidden1'",
        ),
    ],
    ids=["absolute", "multiple"],
)
def test_max_width_below_current_width(spec: dict, fragment: str) -> None:
    with pytest.raises(SpecError, match=re.escape(fragment)) as exc:
        archgrow.wrap(_mlp(), spec, MLP_X)
    assert len(exc.value.problems) == 1
    assert exc.value.problems[0].startswith(fragment)
    assert exc.value.problems[0].endswith("current width 64")


def test_schedule_final_width_below_current_width() -> None:
    spec = {
        "rules": [{"match": "hidden1", "trigger": {"kind": "linear_schedule", "final_width": 10, "total_steps": 5}}]
    }
    with pytest.raises(SpecError, match=re.escape("<dict>: rules[0].trigger.final_width: 10 is below group 'hidden1'")):
        archgrow.wrap(_mlp(), spec, MLP_X)


def test_several_model_problems_reported_together() -> None:
    spec = {
        "rules": [
            {"match": "nope"},
            {"match": "out"},
            {"match": "hidden*", "max_width": 10},
        ]
    }
    problems = _wrap_problems(_mlp(), spec, MLP_X)
    assert len(problems) == 4
    assert problems[0] == f"<dict>: rules[0].match: 'nope' selects no width group; {MLP_GROWABLE}"
    assert problems[1].startswith("<dict>: rules[1].match: group 'out' cannot grow: ")
    assert problems[2].startswith("<dict>: rules[2].max_width: 10 gives 10, below group 'hidden1'")
    assert problems[2].endswith("current width 64")
    assert problems[3].startswith("<dict>: rules[2].max_width: 10 gives 10, below group 'hidden2'")
    assert problems[3].endswith("current width 32")


def test_failed_wrap_leaves_the_model_untouched() -> None:
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SpecError):
        archgrow.wrap(model, {"rules": [{"match": "nope"}]}, MLP_X)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------- 5. JSON Schema
def _kind_consts(schema: dict) -> set[str]:
    return {
        d["properties"]["kind"]["const"]
        for d in schema["$defs"].values()
        if "kind" in d.get("properties", {}) and "const" in d["properties"]["kind"]
    }


def test_json_schema_is_serialisable_and_lists_every_kind() -> None:
    schema = json_schema()
    text = json.dumps(schema)
    assert json.loads(text) == schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "archgrow growth spec"
    assert set(schema["properties"]) == {"version", "seed", "defaults", "rules"}
    assert schema["additionalProperties"] is False
    for kind in TRIGGER_KINDS + INITIALIZER_KINDS:
        assert f'"{kind}"' in text, kind
    assert _kind_consts(schema) == set(TRIGGER_KINDS) | set(INITIALIZER_KINDS)
    assert len(TRIGGER_KINDS) == 6 and len(INITIALIZER_KINDS) == 7


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_presets_validate_against_the_json_schema(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    data = yaml.safe_load(path.read_text())
    jsonschema.validate(data, json_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "versoin": 1}, json_schema())


# --------------------------------------------------------------------------- 6. CLI
@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 2\nrules:\n  - match: '*'\n    trigger: {kind: foo}\n")
    return path


def test_cli_validate_good_and_bad(capsys: pytest.CaptureFixture[str], bad_file: Path) -> None:
    good = str(SPECS / "north-select.yaml")
    assert main(["validate", good, str(bad_file)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{good}: ok"]
    assert err.splitlines() == [
        f"{bad_file}: version: got 2; accepted: 1",
        f"{bad_file}: rules[0].trigger: unknown kind 'foo'; accepted kinds: {TRIGGER_LIST}",
    ]


def test_cli_validate_good_only(capsys: pytest.CaptureFixture[str]) -> None:
    good = str(SPECS / "north-weight.yaml")
    assert main(["validate", good]) == 0
    out, err = capsys.readouterr()
    assert out == f"{good}: ok\n"
    assert err == ""


def test_cli_validate_every_preset_without_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", *map(str, PRESETS)]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines() == [f"{p}: ok" for p in PRESETS]


def test_cli_validate_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["validate", str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{missing}: no such file\n"


def test_cli_validate_with_model(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert main(["validate", "specs/north-select.yaml", "--model", "mlp"]) == 0
    out, err = capsys.readouterr()
    assert out == "specs/north-select.yaml: ok (bound to mlp)\n"
    assert err == ""


def test_cli_validate_with_model_reports_bind_problems(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("rules:\n  - match: nope\n  - match: hidden1\n    initializer: {kind: gradmax}\n    trigger: {kind: gradient}\n")
    assert main(["validate", str(path), "--model", "mlp"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines == [f"{path}: rules[0].match: 'nope' selects no width group; growable groups: hidden1 (16) (model mlp)"]
    assert main(["validate", str(SPECS / "gradmax.yaml"), "--model", "mlp"]) == 0


def test_cli_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    out, _ = capsys.readouterr()
    assert json.loads(out) == json_schema()


def test_python_m_archgrow_validate() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "archgrow", "validate", "specs/static.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "specs/static.yaml: ok\n"


@pytest.mark.parametrize("seed", [2**64, 2**70, -(2**63) - 1])
def test_seed_must_fit_a_torch_generator(seed: int) -> None:
    with pytest.raises(SpecError, match=r"<dict>: seed: input should be (less|greater) than or equal to"):
        parse_spec({"seed": seed})
    for ok in (0, 2**64 - 1, -(2**63)):
        torch.Generator().manual_seed(parse_spec({"seed": ok}).seed)
