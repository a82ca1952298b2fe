"""Growth keeps every tensor's memory format: parameters, buffers, gradients and optimizer state of
a channels-last model stay channels-last, contiguous ones stay contiguous."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

import archgrow
from archgrow.surgery.tensors import Expansion, expand, memory_format

CL, CL3, CONTIGUOUS = torch.channels_last, torch.channels_last_3d, torch.contiguous_format


@pytest.mark.parametrize(
    ("shape", "fmt", "dim"),
    [
        ((8, 4, 3, 3), CL, 0),
        ((8, 4, 3, 3), CL, 1),
        ((8, 4, 3, 3), CONTIGUOUS, 1),
        ((8, 1, 3, 3), CL, 1),  # depthwise weight: both formats until dim 1 grows
        ((8, 1, 3, 3), CONTIGUOUS, 1),
        ((8, 4, 1, 1), CL, 0),  # 1x1 kernel: both formats, strides tell them apart
        ((8, 1, 1, 1), CL, 1),
        ((8, 4, 2, 3, 3), CL3, 1),
        ((8, 4, 2, 3, 3), CONTIGUOUS, 0),
        ((8, 4), CONTIGUOUS, 1),
    ],
)
def test_expand_keeps_the_memory_format(shape: tuple[int, ...], fmt: torch.memory_format, dim: int) -> None:
    t = torch.empty(shape, memory_format=fmt).copy_(torch.randn(shape))  # fmt's strides, also where both hold
    n = shape[dim]
    for old_pos, new_pos in [(tuple(range(n)), (n, n + 1)), (tuple(range(1, n + 1)), (0, n + 1))]:
        e = Expansion(dim, old_pos, new_pos, n + 2)
        fill = torch.randn([2 if d == dim else s for d, s in enumerate(shape)])
        out = expand(t, e, fill)
        assert memory_format(out) == memory_format(t)
        assert out.is_contiguous(memory_format=fmt)
        assert torch.equal(out.index_select(dim, torch.tensor(old_pos)), t)
        assert torch.equal(out.index_select(dim, torch.tensor(new_pos)), fill)


def _resnet(memory_format: torch.memory_format) -> torch.nn.Module:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).to(memory_format=memory_format)


# Every growable group of ResNet-18 grows twice, by 1/8 of its width each time.
SPEC = {
    "seed": 0,
    "rules": [
        {
            "match": "*",
            "trigger": {"kind": "batched_schedule", "final_width": "1.25x", "total_steps": 2, "grow_fraction": 1.0, "stages": 2},
            "initializer": {"kind": "random"},
        }
    ],
}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_channels_last_resnet18_stays_channels_last_through_growth(optimizer: str) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32, generator=g).contiguous(memory_format=CL), torch.randint(0, 10, (8,), generator=g)
    model = _resnet(CL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grown = archgrow.wrap(model, SPEC, x[:1])
    params = list(grown.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9) if optimizer == "sgd" else torch.optim.Adam(params, lr=1e-3)
    convs = [p for p in model.parameters() if p.ndim == 4]
    assert len(convs) == 20
    events = 0
    for _ in range(3):  # the last step trains the grown network
        loss = F.cross_entropy(grown(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        events += len(grown.grow_step(opt))
        # right after growth: every conv weight, its gradient and its optimizer state
        state = [v for p in convs for v in opt.state[p].values() if isinstance(v, torch.Tensor) and v.ndim == 4]
        assert len(state) == (20 if optimizer == "sgd" else 40)
        for t in [*convs, *(p.grad for p in convs), *state]:
            assert t.is_contiguous(memory_format=CL)
    assert events == 24 and grown.widths()["layer1.0.conv1"] == 80  # 12 groups, twice
    assert torch.isfinite(loss)
    # the same function as its contiguous twin (summed in another order)
    twin = copy.deepcopy(model).to(memory_format=CONTIGUOUS).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x.contiguous()), rtol=1e-4, atol=1e-4)
