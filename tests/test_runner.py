"""The experiment runner: files written and consistent, baselines, data sections, broken experiment files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from archgrow import trace
from archgrow.cli import main
from archgrow.runner import ExperimentError, load_experiment, parse_experiment, run_experiment
from archgrow.runner.build import build_model, load_data, scale_groups
from archgrow.runner.experiment import DigitsData, GeneratedData, MnistData
from archgrow.runner.train import fit_schedules, resolve_device

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(
    not MNIST.is_dir(), reason="../shared/data/mnist not present (only beside the checkout and in CI)"
)

TINY = {
    "name": "tiny",
    "model": {"name": "mlp", "hidden": [4, 3]},
    "data": {"kind": "generated", "n_independent": 6, "n_samples": 600, "n_features": 16},
    "train": {"lr": 0.01, "batch_size": 64, "epochs": 2},
    "strategies": {
        "random": {
            "version": 1,
            "defaults": {"max_width": 12},
            "rules": [{"match": "hidden*", "trigger": {"kind": "weight"}, "initializer": {"kind": "random"}}],
        },
        "gradmax": {"spec": str(ROOT / "specs" / "gradmax.yaml"), "defaults": {"max_width": "3x"}},
    },
    "baselines": {"big": 3},
    "seeds": [0, 1],
}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def mlp_params(n_in: int, widths: list[int], n_out: int) -> int:
    sizes = [n_in, *widths, n_out]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    exp = parse_experiment(TINY)
    out = tmp_path_factory.mktemp("sweep")
    return run_experiment(exp, output=out, progress=False), out


def test_sweep_writes_every_run(sweep):
    result, out = sweep
    names = {(r["strategy"], r["seed"]) for r in result.runs}
    assert names == {(s, k) for s in ("random", "gradmax", "big") for k in (0, 1)}
    for name in ("experiment.json", "summary.json", "summary.md", "runs.csv"):
        assert (out / name).stat().st_size > 0, name
    assert len(read_csv(out / "runs.csv")) == 6
    md = (out / "summary.md").read_text()
    for s in ("random", "gradmax", "big"):
        assert f"| {s} |" in md
    table = {row["strategy"]: row for row in result.table}
    assert table["big"]["kind"] == "static" and table["gradmax"]["seeds"] == 2


@pytest.mark.parametrize("strategy", ["random", "gradmax"])
def test_growing_run_files_are_consistent(sweep, strategy):
    _, out = sweep
    run = out / strategy / "seed0"
    summary = json.loads((run / "summary.json").read_text())
    groups = list(summary["initial_widths"])
    assert groups == ["hidden1", "hidden2"]
    # every event continues from the previous width of its group, and they add up to the final widths
    widths = dict(summary["initial_widths"])
    events = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert summary["events"] == len(events)
    for e in events:
        assert e["old_width"] == widths[e["group"]] and e["new_width"] > e["old_width"]
        widths[e["group"]] = e["new_width"]
        assert 1 <= e["epoch"] <= 2
        # params: after every event of the step (a step can grow both groups)
        after = dict(widths)
        for later in events:
            if later["step"] == e["step"]:
                after[later["group"]] = later["new_width"]
        assert e["params"] == mlp_params(16, [after["hidden1"], after["hidden2"]], 2)
    assert widths == summary["final_widths"]
    assert summary["params"] == mlp_params(16, [widths["hidden1"], widths["hidden2"]], 2)
    # metrics: epoch 0 (before training) to the last epoch; the last row is the final state
    rows = read_csv(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    last = rows[-1]
    assert {g: int(last[f"width:{g}"]) for g in groups} == summary["final_widths"]
    assert int(last["params"]) == summary["params"]
    assert float(last["test_acc"]) == pytest.approx(summary["test_acc"], abs=1e-6)
    assert all(0 < float(r["train_loss"]) < 10 for r in rows)  # epoch 0: evaluated; later: mean batch loss
    assert int(last["step"]) == summary["steps"] == 2 * 8  # 480 train samples / 64 per batch
    # every step evaluates each group's trigger until the growth that brings it to its cap
    evaluations = read_csv(run / "triggers.csv")
    for g in groups:
        steps = [int(r["step"]) for r in evaluations if r["group"] == g]
        assert steps == list(range(1, len(steps) + 1)), g
        if len(steps) < summary["steps"]:
            assert steps[-1] == max(e["step"] for e in events if e["group"] == g), g
    grew = {(int(r["step"]), r["group"]) for r in evaluations if int(r["add"]) > 0}
    assert {(e["step"], e["group"]) for e in events} <= grew
    config = json.loads((run / "config.json").read_text())
    assert config["spec"]["seed"] == 0 and config["kind"] == "growing"


def test_static_baseline_is_scaled_and_never_grows(sweep):
    _, out = sweep
    summary = json.loads((out / "big" / "seed1" / "summary.json").read_text())
    assert summary["kind"] == "static" and summary["events"] == 0
    # factor 3 of the groups the strategies grow (both hidden layers), nothing else
    assert summary["final_widths"] == {"hidden1": 12, "hidden2": 9}
    assert summary["params"] == mlp_params(16, [12, 9], 2)
    assert (out / "big" / "seed1" / "history.jsonl").read_text() == ""


def test_same_seed_same_run(tmp_path):
    exp = parse_experiment({**TINY, "seeds": [0]}).restricted(strategies=["random"])
    a = run_experiment(exp, output=tmp_path / "a", progress=False, pictures=False).runs[0]
    b = run_experiment(exp, output=tmp_path / "b", progress=False, pictures=False).runs[0]
    for key in ("final_widths", "params", "test_acc", "test_loss", "events"):
        assert a[key] == b[key], key
    ha = (tmp_path / "a" / "random" / "seed0" / "history.jsonl").read_text().splitlines()
    hb = (tmp_path / "b" / "random" / "seed0" / "history.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(line).items() if not k.endswith("seconds")} for line in ha]
    assert strip == [{k: v for k, v in json.loads(line).items() if not k.endswith("seconds")} for line in hb]


def test_pictures_and_reports(sweep):
    _, out = sweep
    run = out / "gradmax" / "seed0"
    for stem in ("graph_before", "graph_after", "widths", "training"):
        for suffix in (".svg", ".png"):
            assert (run / f"{stem}{suffix}").stat().st_size > 500, stem + suffix
    html = (run / "report.html").read_text()
    assert "gradmax" in html and "<svg" in html
    sweep_html = (out / "report.html").read_text()
    assert "gradmax/seed0/report.html" in sweep_html
    assert (out / "accuracy_vs_params.png").stat().st_size > 500


def test_schedule_total_steps_follow_the_run(tmp_path):
    spec_path = ROOT / "specs" / "linear-schedule.yaml"
    exp = parse_experiment({**TINY, "strategies": {"linear": str(spec_path)}, "baselines": {}, "seeds": [0]})
    spec = fit_schedules(exp.spec("linear"), 16)
    assert spec.rules[0].trigger.total_steps == 16
    result = run_experiment(exp, output=tmp_path, progress=False, pictures=False)
    summary = result.runs[0]
    # final_width 4x of the initial widths, reached within the first 75% of the 16 steps
    assert summary["final_widths"] == {"hidden1": 16, "hidden2": 12}


# --------------------------------------------------------------------------- data and models
def test_data_sections_load_offline():
    g = load_data(GeneratedData(n_independent=3, n_samples=100, n_features=10))
    assert g.x_train.shape == (80, 10) and g.num_classes == 2
    d = load_data(DigitsData(images=True))
    assert d.x_train.shape[1:] == (1, 8, 8) and d.num_classes == 10


@needs_mnist
def test_mnist_section_images_and_padding():
    m = load_data(MnistData(root=str(MNIST), limit=300, images=True, pad_to=32))
    assert m.x_train.shape == (240, 1, 32, 32) and m.x_test.shape == (60, 1, 32, 32)
    assert float(m.x_train[:, :, :2].abs().sum()) == 0.0  # zero border
    flat = load_data(MnistData(root=str(MNIST), limit=300))
    assert flat.x_train.shape == (240, 784)
    assert torch.equal(m.x_train[:, :, 2:30, 2:30].reshape(240, -1), flat.x_train)


def test_missing_data_folders_are_reported(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        load_data(MnistData(root=str(tmp_path / "nowhere")))
    exp = parse_experiment({**TINY, "data": {"kind": "cifar10", "root": "nowhere"}})
    with pytest.raises(Exception, match="cifar-10-batches-py"):
        run_experiment(exp, output=tmp_path, progress=False)


def test_scale_groups_widens_and_reinitialises():
    data = load_data(GeneratedData(n_independent=3, n_samples=100, n_features=10))
    model = build_model(parse_experiment(TINY).model, data, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = trace(model, data.x_train[:1])
    assert scale_groups(graph, 1.0, ["hidden1", "hidden2"], seed=0) == {"hidden1": 4, "hidden2": 3}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # factor 1: the same model
    assert scale_groups(graph, 2.5, ["hidden1"], seed=0) == {"hidden1": 10}
    assert model.hidden1.weight.shape == (10, 10) and model.hidden2.weight.shape == (3, 10)
    assert model.hidden2.weight[:, 4:].abs().sum() > 0  # re-initialised, not the zero fan-out of growth
    assert model(data.x_train[:5]).shape == (5, 2)
    with pytest.raises(Exception, match="only be wider"):
        scale_groups(graph, 0.5, ["hidden1"], seed=0)


def test_model_needs_matching_data():
    data = load_data(GeneratedData(n_independent=3, n_samples=100, n_features=10))
    cfg = parse_experiment({**TINY, "model": {"name": "vgg11", "width_mult": 0.125}}).model
    with pytest.raises(Exception, match="needs image data"):
        build_model(cfg, data, seed=0)


def test_unavailable_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(Exception, match="CUDA is not available"):
        resolve_device("cuda")


# --------------------------------------------------------------------------- broken experiment files
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"modle": {}}, "modle: unknown field 'modle'; accepted fields: version, name, model, data"),
        ({"data": {"kind": "imagenet"}}, "data: unknown kind 'imagenet'; accepted kinds: generated, digits, mnist"),
        ({"data": {"kind": "generated", "n_independent": 100}}, "data: n_independent (100) must be <= n_features (64)"),
        ({"train": {"lr": -1}}, "train.lr: input should be greater than 0"),
        ({"train": {"optimizer": "lbfgs"}}, "train.optimizer: got 'lbfgs'; accepted: 'adam', 'adamw' or 'sgd'"),
        ({"seeds": [1, 1]}, "seeds: seeds must be distinct"),
        ({"model": {"name": "vgg11", "hidden": [3]}}, "model: hidden only applies to model 'mlp'"),
        ({"model": {"name": "resnet18", "width_mult": 2}}, "width_mult only apply to the built-in models"),
        ({"baselines": {"random": 2}}, "names used both as strategy and baseline: random"),
        ({"strategies": {}, "baselines": {}}, "nothing to run"),
        ({"strategies": {"a b": "x.yaml"}}, "name 'a b' is not accepted"),
        ({"device": "gpu"}, "device 'gpu' is not accepted"),
        ({"train": {"workers": -1}}, "train.workers: input should be greater than or equal to 0"),
        ({"train": {"pin_memory": "yes"}}, "train.pin_memory: pin_memory='yes' is not accepted; use true, false or auto"),
    ],
)
def test_broken_experiments_are_rejected_with_field_paths(change, expected):
    with pytest.raises(ExperimentError) as info:
        parse_experiment({**TINY, **change}, source="exp.yaml")
    assert any(p.startswith("exp.yaml: ") and expected in p for p in info.value.problems), info.value.problems


def test_broken_strategy_specs_name_the_strategy(tmp_path):
    bad = {**TINY, "strategies": {"mine": {"version": 1, "rules": [{"match": "*", "trigger": {"kind": "sometimes"}}]}}}
    with pytest.raises(ExperimentError, match=r"strategies\.mine\.spec: rules\[0\]\.trigger: unknown kind 'sometimes'"):
        parse_experiment(bad, source="exp.yaml")
    missing = {**TINY, "strategies": {"mine": "specs/none.yaml"}}
    with pytest.raises(ExperimentError, match="none.yaml: no such file"):
        parse_experiment(missing, base=tmp_path)


def test_experiment_file_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "grow.yaml").write_text((ROOT / "specs" / "north-random.yaml").read_text())
    (tmp_path / "exp.yaml").write_text(
        "model: {name: mlp, hidden: [4]}\n"
        "data: {kind: mnist, root: data/mnist}\n"
        "strategies: {grow: specs/grow.yaml}\n"
    )
    exp = load_experiment(tmp_path / "exp.yaml")
    assert exp.title == "exp"
    assert exp.data.root == str((tmp_path / "data" / "mnist").resolve())
    assert exp.strategies["grow"].spec == str((tmp_path / "specs" / "grow.yaml").resolve())
    (tmp_path / "broken.yaml").write_text("model: {name: mlp\n")
    with pytest.raises(ExperimentError, match=r"broken.yaml: line \d+: invalid YAML"):
        load_experiment(tmp_path / "broken.yaml")


def test_cli_run_dry_run_and_errors(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(json.dumps(TINY))  # JSON is YAML
    assert main(["run", str(path), "--dry-run", "--strategy", "gradmax", "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert "1 runs" in out and "gradmax (growing) seed 3" in out
    assert main(["run", str(path), "--dry-run", "--strategy", "nope"]) == 2
    assert "unknown strategy nope; known: random, gradmax, big" in capsys.readouterr().err
    path.write_text(json.dumps({**TINY, "train": {"epochs": 0}}))
    assert main(["run", str(path)]) == 2
    assert "train.epochs: input should be greater than 0" in capsys.readouterr().err


def test_cli_run_trains_and_points_to_the_report(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(json.dumps({**TINY, "seeds": [0]}))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--strategy", "random", "--epochs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| random | growing | 1 |" in out
    assert f"report: {tmp_path / 'out' / 'report.html'}" in out
    summary = json.loads((tmp_path / "out" / "random" / "seed0" / "summary.json").read_text())
    assert summary["epochs"] == 1


@needs_mnist
def test_vgg_on_mnist_images_grows_conv_and_dense_groups(tmp_path):
    exp = parse_experiment(
        {
            "model": {"name": "vgg11", "width_mult": 0.0625},
            "data": {"kind": "mnist", "root": str(MNIST), "limit": 256, "images": True, "pad_to": 32},
            "train": {"batch_size": 64, "epochs": 1},
            "strategies": {
                "grow": {
                    "version": 1,
                    "rules": [{"match": "*", "trigger": {"kind": "weight"}, "initializer": {"kind": "random"}}],
                }
            },
            "seeds": [0],
        }
    )
    summary = run_experiment(exp, output=tmp_path, progress=False, pictures=False).runs[0]
    assert "features.0" in summary["initial_widths"] and "classifier.0" in summary["initial_widths"]
    assert summary["events"] > 0
    grown = {g for g, w in summary["final_widths"].items() if w > summary["initial_widths"][g]}
    assert any(g.startswith("features") for g in grown)


def test_cli_visualize_redraws_runs_and_draws_models(sweep, tmp_path, capsys):
    _, out = sweep
    run = out / "random" / "seed1"
    (run / "widths.svg").unlink()
    (run / "report.html").unlink()
    assert main(["visualize", str(out)]) == 0
    assert (run / "widths.svg").stat().st_size > 500 and "random" in (run / "report.html").read_text()
    assert capsys.readouterr().out.strip().endswith("report.html")
    assert main(["visualize", "--model", "mlp", "--spec", str(ROOT / "specs" / "static.yaml"), "--out", str(tmp_path / "g")]) == 0
    svg = (tmp_path / "g.svg").read_text()
    assert "frozen" in svg  # the static spec grows nothing, so every group is marked frozen
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["visualize", str(tmp_path)]) == 2
    assert "neither a run directory" in capsys.readouterr().err


def test_torchvision_model_builds_and_scales_as_a_static_baseline():
    from archgrow.data import DataSplit
    from archgrow.runner.experiment import ModelConfig

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(12, 3, 32, 32, generator=g), torch.arange(12) % 5
    split = DataSplit.from_tensors(x[:8], y[:8], x[8:], y[8:], "random images")
    model = build_model(ModelConfig(name="resnet18"), split, seed=0)
    assert model.fc.out_features == 5  # num_classes from the data
    graph = trace(model, x[:1])
    # the residual stage: layer1's conv2s, the stem conv and their BatchNorms share one group
    name = next(gr.name for gr in graph.groups if "layer1.0.conv2" in [m.name for m in gr.producers])
    widths = scale_groups(graph, 2.0, [name], seed=0)
    assert widths == {name: 128}
    assert model.layer1[0].conv2.weight.shape[0] == 128 and model.layer1[1].bn2.num_features == 128
    model.eval()
    assert model(x[:2]).shape == (2, 5)


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_experiments_validate(path):
    exp = load_experiment(path)
    assert exp.runs() and all(exp.spec(s) is not None for s in exp.strategies)


def test_readme_experiment_example_validates(tmp_path):
    import re

    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    example = next(b for b in blocks if "strategies:" in b)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "specs").symlink_to(ROOT / "specs")
    path = tmp_path / "experiments" / "example.yaml"
    path.write_text(example)
    exp = load_experiment(path)
    assert set(exp.strategies) == {"north-select", "gradmax"} and exp.baselines == {"small-static": 1, "big-static": 8}


def test_recalibrated_batch_norm_is_put_back_exactly() -> None:
    from archgrow.models import wrn28
    from archgrow.runner.train import recalibrated_batch_norm

    torch.manual_seed(0)
    model = wrn28(num_classes=3, width_mult=0.25, in_channels=1)
    x = torch.randn(48, 1, 8, 8) * 3 + 1  # three equal batches: the average of batch means is the mean
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 1, 8, 8))  # running averages that are not x's
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    first = model.stem  # the first batch norm normalises the stem's output
    with recalibrated_batch_norm(model, x.split(16)):
        expected = first(x).transpose(0, 1).flatten(1).mean(1)
        torch.testing.assert_close(model.stage1[0].bn1.running_mean, expected, rtol=1e-4, atol=1e-5)
        assert not model.training  # modes as they were
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.stage1[0].bn1.momentum == 0.1


def test_recalibrated_evaluation_changes_only_the_reported_accuracy(tmp_path) -> None:
    exp = {
        "name": "bn",
        "model": {"name": "wrn28", "width_mult": 0.25},
        "data": {"kind": "digits", "images": True},
        "train": {"lr": 0.003, "batch_size": 128, "epochs": 1, "eval_train": False},
        "strategies": {"random": {"rules": [{"match": "stage3.*", "trigger": {"kind": "linear_schedule", "final_width": "2x", "total_steps": 4}, "initializer": {"kind": "random"}}]}},
        "baselines": {},
        "seeds": [0],
    }
    runs = {}
    for mode in ("running", "recalibrated"):
        e = parse_experiment({**exp, "train": {**exp["train"], "bn_statistics": mode}})
        runs[mode] = run_experiment(e, output=tmp_path / mode, progress=False, pictures=False).runs[0]
    a, b = runs["running"], runs["recalibrated"]
    assert a["final_widths"] == b["final_widths"] and a["final_widths"]["stage3.0.conv1"] > 16  # it grew, the same
    assert a["params"] == b["params"] and a["test_acc"] != b["test_acc"]


# --------------------------------------------------------------------------- batches from DataLoaders
GROW_ON_ACTIVATIONS = {  # NORTH-Select's trigger: the buffer is prefilled from the training loader
    "version": 1,
    "defaults": {"max_width": 12},
    "rules": [{"match": "hidden*", "trigger": {"kind": "activation"}, "initializer": {"kind": "random"}}],
}


def _recipe(exp, data, directory, strategy="grow", kind="growing", seed=0, **options):
    from archgrow.runner.train import RunPlan, TrainRecipe

    groups = ["hidden1", "hidden2"] if kind == "static" else []
    plan = RunPlan(strategy, kind, seed, directory)
    return TrainRecipe(exp, plan, data, baseline_groups=groups, progress=False, pictures=False, **options)


class LazySamples(torch.utils.data.Dataset):
    """Samples made from their index when read, never held together. Counts reads and refuses
    anything but one integer index, which is what slicing or stacking the whole set would need."""

    def __init__(self, n: int, offset: int):
        self.n, self.offset, self.reads = n, offset, 0
        self.targets = (torch.arange(n) + offset) % 2  # torchvision's convention: class count without reads

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        if not isinstance(index, int) or not 0 <= index < self.n:
            raise TypeError(f"LazySamples takes one integer index in range, got {index!r}")
        self.reads += 1
        x = torch.randn(16, generator=torch.Generator().manual_seed(self.offset + index))
        return x + self.targets[index], self.targets[index]


def test_training_batches_are_those_of_the_slicing_loop(tmp_path):
    exp = parse_experiment({**TINY, "seeds": [3]})
    data = load_data(exp.data)
    recipe = _recipe(exp, data, tmp_path, "big", "static", seed=3, writes_files=False)
    recipe.setup()
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):  # the loop this replaced: one permutation per epoch from the run's seed, sliced
        order = torch.randperm(480, generator=generator)
        got = list(recipe.train_loader)
        assert len(got) == 8 and recipe.total_steps == 16
        for i, (x, y) in enumerate(got):
            idx = order[i * 64 : (i + 1) * 64]
            assert torch.equal(x, data.x_train[idx]) and torch.equal(y, data.y_train[idx])


def test_lazy_dataset_is_read_per_sample_and_trains_like_the_same_tensors(tmp_path, monkeypatch):
    from archgrow.data import DataSplit

    train_cfg = {**TINY["train"], "eval_train": False, "eval_batch_size": 50}
    exp = parse_experiment({**TINY, "train": train_cfg, "strategies": {"grow": GROW_ON_ACTIVATIONS}, "baselines": {}})
    train, test = LazySamples(300, 0), LazySamples(100, 300)
    stacked = []
    stack = torch.stack
    monkeypatch.setattr(torch, "stack", lambda ts, *a, **k: stacked.append(len(ts)) or stack(ts, *a, **k))
    rng = torch.random.get_rng_state()
    lazy = _recipe(exp, DataSplit(train, test, "lazy"), tmp_path / "lazy").run()
    assert torch.equal(torch.random.get_rng_state(), rng)  # shuffles and workers' seeds use their own generators
    assert max(stacked) <= 64  # batches only: the set is never stacked whole
    epochs = 2  # reads: each epoch's samples once, the evaluations and the buffer's prefill (one batch)
    assert 3 * 300 <= train.reads <= 3 * 300 + 64 + 2 and test.reads == (epochs + 1) * 100
    monkeypatch.setattr(torch, "stack", stack)
    tensors = DataSplit.from_tensors(*(torch.stack([t[i][k] for i in range(len(t))]) for t in (train, test) for k in (0, 1)), name="same")
    same = _recipe(exp, tensors, tmp_path / "tensors").run()
    assert lazy["events"] > 0
    for key in ("final_widths", "params", "test_acc", "test_loss", "events", "steps"):
        assert lazy[key] == same[key], key


def test_workers_give_the_same_run(tmp_path):
    exp = parse_experiment({**TINY, "seeds": [0], "train": {**TINY["train"], "epochs": 1}}).restricted(strategies=["random"])
    runs = {}
    for workers in (0, 2):
        e = exp.restricted(**{"train.workers": workers, "train.pin_memory": False})
        runs[workers] = run_experiment(e, output=tmp_path / str(workers), progress=False, pictures=False).runs[0]
    for key in ("final_widths", "params", "test_acc", "test_loss", "train_acc", "events", "steps"):
        assert runs[0][key] == runs[2][key], key
    config = json.loads((tmp_path / "2" / "random" / "seed0" / "config.json").read_text())
    assert config["train"]["workers"] == 2 and config["train"]["pin_memory"] is False


def test_sampler_factory_shards_the_data_and_only_the_writing_rank_writes(tmp_path):
    from torch.utils.data.distributed import DistributedSampler

    epochs = []

    class Recording(DistributedSampler):
        def set_epoch(self, epoch: int) -> None:
            epochs.append((self.rank, epoch))
            super().set_epoch(epoch)

    exp = parse_experiment({**TINY, "seeds": [0]})
    data = load_data(exp.data)
    runs = []
    for rank in (0, 1):
        def shard(dataset, seed, rank=rank):
            return Recording(dataset, num_replicas=2, rank=rank, seed=seed)

        runs.append(_recipe(exp, data, tmp_path / f"rank{rank}", "random", sampler=shard, writes_files=rank == 0).run())
    assert [r["steps"] for r in runs] == [2 * 4, 2 * 4]  # 480 samples, 240 per rank, 64 per batch, 2 epochs
    assert epochs == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert (tmp_path / "rank0" / "summary.json").is_file() and (tmp_path / "rank0" / "metrics.csv").is_file()
    assert not (tmp_path / "rank1").exists()
