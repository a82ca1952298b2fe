"""CUDA: growth on the GPU, mixed precision across growth, checkpoints and the runner.

Skipped where no CUDA device is present.  `tools/gpu-check` runs these, with the CUDA cases of
the other test files and the per-step benchmark, in one command on a machine with a GPU.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archgrow

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (tools/gpu-check runs these on a GPU)"),
]

DEVICE = "cuda"
STRATEGIES = {
    "activation-select": ({"kind": "activation", "buffer_size": 256}, {"kind": "select", "candidates": 50}),
    "activation_step-random": ({"kind": "activation", "source": "step"}, {"kind": "random"}),
    "weight-weight": ({"kind": "weight"}, {"kind": "weight"}),
    "gradient-gradmax": ({"kind": "gradient", "threshold": "code"}, {"kind": "gradmax"}),
    "schedule-firefly": ({"kind": "linear_schedule", "final_width": "2x", "total_steps": 6}, {"kind": "firefly", "candidates": 20}),
    "schedule-nest": ({"kind": "linear_schedule", "final_width": "2x", "total_steps": 6}, {"kind": "nest", "candidates": 8}),
}


def _net(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(32, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 4))
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


def _data(kind: str, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn((n, 32) if kind == "mlp" else (n, 3, 8, 8), generator=g)
    return x.to(DEVICE), torch.randint(0, 4, (n,), generator=g).to(DEVICE)


def _spec(strategy: str) -> dict:
    trigger, init = STRATEGIES[strategy]
    return {"seed": 0, "defaults": {"max_width": "3x"}, "rules": [{"match": "*", "trigger": trigger, "initializer": init}]}


def _on_cuda(grown: archgrow.GrowingModel, optimizer: torch.optim.Optimizer) -> None:
    for name, p in grown.model.named_parameters():
        assert p.is_cuda, name
        if p.grad is not None:
            assert p.grad.is_cuda and p.grad.shape == p.shape, name
        for key, value in optimizer.state[p].items():
            if isinstance(value, torch.Tensor) and value.ndim:
                assert value.is_cuda and value.shape == p.shape, (name, key)
    for name, b in grown.model.named_buffers():
        assert b.is_cuda, name


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_growth_on_cuda(strategy, kind):
    if strategy == "weight-weight" and kind == "cnn":
        pytest.skip("covered on the MLP")
    x, y = _data(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grown = archgrow.wrap(_net(kind).to(DEVICE), _spec(strategy), x[:1])
        optimizer = torch.optim.Adam(grown.parameters(), lr=0.01)
        for step in range(6):
            xb, yb = x[step * 8 : step * 8 + 32], y[step * 8 : step * 8 + 32]
            grown.train()
            optimizer.zero_grad()
            F.cross_entropy(grown(xb), yb).backward()
            optimizer.step()
            grown.grow_step(optimizer, loss_fn=lambda xb=xb, yb=yb: F.cross_entropy(grown(xb), yb))
    assert grown.history, f"{strategy} on the {kind} never grew on CUDA"
    _on_cuda(grown, optimizer)
    grown.train()
    loss = F.cross_entropy(grown(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)


def test_growth_preserves_the_function_on_cuda():
    x, _ = _data("cnn")
    model = _net("cnn").to(DEVICE).eval()
    graph = archgrow.trace(model, x[:1])
    before = model(x)
    for name in graph.widths():
        if graph.group(name).growable:
            archgrow.grow(graph, name, 2 * graph.group(name).step)  # zero fan-out: the function is kept
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("strategy", ["gradient-gradmax", "activation-select", "schedule-firefly"])
def test_autocast_and_grad_scaler_across_growth(dtype, strategy):
    """Mixed precision: autocast forward, GradScaler (fp16) across growth; training goes on, the
    weights stay float32, the scaler keeps a finite scale, and T_grad sees the unscaled G."""
    x, y = _data("cnn")
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grown = archgrow.wrap(_net("cnn").to(DEVICE), _spec(strategy), x[:1])
        optimizer = torch.optim.SGD(grown.parameters(), lr=0.05, momentum=0.9)

        def loss_of(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cuda", dtype=dtype):
                return F.cross_entropy(grown(xb), yb)

        losses = []
        for step in range(8):
            xb, yb = x[step * 4 : step * 4 + 32], y[step * 4 : step * 4 + 32]
            grown.train()
            optimizer.zero_grad()
            loss = loss_of(xb, yb)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            grown.grow_step(optimizer, loss_fn=lambda xb=xb, yb=yb: loss_of(xb, yb), scaler=scaler)
            scaler.update()
            losses.append(float(loss))
    assert grown.history, f"{strategy} never grew under autocast"
    assert all(p.dtype == torch.float32 for p in grown.model.parameters())
    assert scaler.get_scale() > 0 if scaler.is_enabled() else True
    assert all(torch.isfinite(torch.tensor(losses[-3:])))
    _on_cuda(grown, optimizer)


def test_checkpoint_round_trip_on_cuda(tmp_path):
    x, y = _data("mlp")
    spec = _spec("activation-select")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grown = archgrow.wrap(_net("mlp").to(DEVICE), spec, x[:1])
        optimizer = torch.optim.Adam(grown.parameters(), lr=0.01)
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(grown(x), y).backward()
            optimizer.step()
            grown.grow_step(optimizer)
        archgrow.save(tmp_path / "c.pt", grown, optimizer)
        fresh = _net("mlp").to(DEVICE)
        opt2 = torch.optim.Adam(fresh.parameters(), lr=0.01)
        loaded = archgrow.load(tmp_path / "c.pt", fresh, opt2)
        for model, opt in ((grown, optimizer), (loaded, opt2)):  # the same next step, resumed or not
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            model.grow_step(opt)
    assert loaded.widths() == grown.widths() and loaded.buffered_samples == grown.buffered_samples
    for (name, a), b in zip(grown.model.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        assert b.device.type == "cuda" and torch.equal(a, b), name
    _on_cuda(loaded, opt2)


def test_channels_last_on_cuda_keeps_its_format():
    x, y = _data("cnn")
    x = x.contiguous(memory_format=torch.channels_last)
    model = _net("cnn").to(DEVICE).to(memory_format=torch.channels_last)
    spec = _spec("schedule-nest")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grown = archgrow.wrap(model, spec, x[:1])
        optimizer = torch.optim.SGD(grown.parameters(), lr=0.05, momentum=0.9)
        for _ in range(4):
            optimizer.zero_grad()
            F.cross_entropy(grown(x), y).backward()
            optimizer.step()
            grown.grow_step(optimizer, loss_fn=lambda: F.cross_entropy(grown(x), y))
    assert grown.history
    for name, p in grown.model.named_parameters():
        if p.ndim == 4:
            assert p.is_contiguous(memory_format=torch.channels_last), name


def test_compiled_model_keeps_training_through_growth_on_cuda():
    """grown.compile() (inductor, Triton on the GPU): outputs equal the eager twin's through growth."""
    pytest.importorskip("torch._dynamo")
    schedule = {"kind": "linear_schedule", "final_width": 12, "total_steps": 4, "grow_fraction": 1.0}
    spec = {"seed": 0, "rules": [{"match": "*", "trigger": schedule, "initializer": {"kind": "random"}, "max_width": 12}]}
    twins = []
    for _ in range(2):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)).to(DEVICE)
        twins.append(archgrow.wrap(net, spec, torch.randn(1, 8, device=DEVICE)))
    eager, compiled = twins
    compiled.compile()
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in twins]
    g = torch.Generator().manual_seed(0)
    growths = 0
    for step in range(5):
        x, y = torch.randn(32, 8, generator=g).to(DEVICE), torch.randint(0, 3, (32,), generator=g).to(DEVICE)
        outs = []
        for model, opt in zip(twins, opts, strict=True):
            out = model(x)
            opt.zero_grad()
            F.cross_entropy(out, y).backward()
            opt.step()
            events = model.grow_step(opt)
            growths += len(events) if model is compiled else 0
            outs.append(out.detach())
        assert eager.widths() == compiled.widths(), step
        torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)
    assert growths >= 4
