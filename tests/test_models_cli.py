"""Built-in models and the ``archgrow groups`` command."""

from __future__ import annotations

import pytest
import torch

import archgrow
from archgrow import models
from archgrow.cli import main


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_modified_relu_has_gradient_one_at_zero(dtype) -> None:
    tiny = torch.finfo(dtype).tiny  # the smallest normal negative input is cut to 0 like relu
    x = torch.tensor([-1.0, -tiny, 0.0, 2.0], dtype=dtype, requires_grad=True)
    y = models.ModifiedReLU()(x)
    y.sum().backward()
    assert torch.equal(y.detach(), torch.relu(x.detach()))
    assert torch.equal(x.grad, torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=dtype))
    assert torch.equal(models.modified_relu(torch.tensor([-3, 0, 4])), torch.tensor([0, 0, 4]))
    x2 = torch.tensor([0.0], requires_grad=True)
    torch.relu(x2).sum().backward()
    assert x2.grad.item() == 0.0  # the reason the modified ReLU exists


@pytest.mark.parametrize(
    ("name", "kwargs", "x", "widths"),
    [
        (
            "mlp",
            {"in_features": 64, "hidden": (8, 6), "num_classes": 2},
            torch.randn(2, 64),
            {"hidden1": 8, "hidden2": 6, "out": 2},
        ),
        (
            "vgg11",
            {"width_mult": 0.125},
            torch.randn(2, 3, 32, 32),
            {"features.0": 8, "features.8": 32, "features.18": 64, "classifier.0": 512, "classifier.4": 10},
        ),
        (
            "wrn28",
            {"width_mult": 0.25},
            torch.randn(2, 3, 32, 32),
            {"stem": 4, "stage2.0.conv2": 8, "stage3.0.conv2": 16, "fc": 10},
        ),
    ],
)
def test_builtin_models_trace_with_expected_groups(name, kwargs, x, widths) -> None:
    model = models.build(name, **kwargs)
    assert model(x).shape == (2, kwargs.get("num_classes", 10))
    g = archgrow.trace(model, x[:1])
    for group, width in widths.items():
        assert g.group(group).width == width
    assert [grp.name for grp in g.groups if not grp.growable] == [list(widths)[-1]]


def test_wrn28_stem_and_stage1_share_a_residual_group() -> None:
    g = archgrow.trace(models.wrn28(width_mult=0.25), torch.randn(1, 3, 32, 32))
    stem = g.group("stem")
    assert {"stage1.0.conv2", "stage1.3.conv2"} <= {m.name for m in stem.producers}
    assert {"stage2.0.conv1", "stage2.0.shortcut", "stage1.2.conv1"} <= {m.name for m in stem.consumers}
    assert len([grp for grp in g.groups if grp.growable]) == 15  # stem+stage1, 12 inner, stage2, stage3


def test_width_mult_and_names_are_validated() -> None:
    with pytest.raises(ValueError, match="width_mult must be > 0"):
        models.mlp(width_mult=0)
    with pytest.raises(ValueError, match="accepted: mlp, vgg11, wrn28"):
        models.build("resnet")
    with pytest.raises(ValueError, match="6n\\+4"):
        models.WideResNet(depth=27)


def test_cli_groups_prints_tables(capsys) -> None:
    assert main(["groups", "mlp", "wrn28"]) == 0
    out = capsys.readouterr().out
    assert "== mlp" in out and "== wrn28" in out
    assert "hidden1" in out and "reaches the model output" in out
    assert "16 groups: 15 growable, 1 frozen" in out


def test_cli_rejects_unknown_model(capsys) -> None:
    assert main(["groups", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
