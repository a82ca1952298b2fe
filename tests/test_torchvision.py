"""Conformance corpus: every torchvision classification model, plus Torch-Pruning's partition.

For each model: trace; every group is growable or explains why not; grow every growable group
(k = step, and 3*step for a subset); the eval-mode output is unchanged where the groups say
``preserves_function``; forward + backward + an optimizer step run afterwards (Adam below 50M
parameters, SGD above, to bound memory); a fresh trace of the grown model finds the same widths.
"""

from __future__ import annotations

import ctypes
import gc
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import archgrow

torchvision = pytest.importorskip("torchvision")

ALL_MODELS = torchvision.models.list_models(module=torchvision.models)
# Smallest input each architecture accepts (32 px otherwise).  inception_v3 is traced in training
# mode, where its auxiliary head needs a 17x17 map; ViT and MaxViT fix their input size.
INPUT_SIZE = {"inception_v3": 299, "maxvit_t": 224, "alexnet": 63, "squeezenet1_0": 48, "squeezenet1_1": 48}
INPUT_SIZE.update({m: 224 for m in ALL_MODELS if m.startswith("vit_")})
# Models of ~60M+ parameters (and the 224 px ViTs) run one after another on the same worker, to
# bound memory: a test peaks at 2-3.4 GB above the previous one on them (17 GB RSS for one process
# over the suite), and with only the 300M+ ones grouped, the other worker running VGG and wide
# ResNets at the same time got a worker OOM-killed at 15 GB on the 24 GiB CI machine.
HEAVY = {
    "regnet_y_128gf", "regnet_y_32gf", "regnet_y_16gf", "vit_h_14", "vit_l_16", "vit_l_32", "vit_b_16", "vit_b_32",
    "wide_resnet50_2", "wide_resnet101_2", "convnext_large", "convnext_base", "efficientnet_v2_l", "swin_b",
    "swin_v2_b", "alexnet", *(m for m in ALL_MODELS if m.startswith("vgg")),
}  # fmt: skip
BOTH_K = {
    "resnet18",
    "mobilenet_v3_small",
    "densenet121",
    "efficientnet_b0",
    "convnext_tiny",
    "shufflenet_v2_x0_5",
    "regnet_x_400mf",
    "squeezenet1_0",
    "googlenet",
    "swin_t",
    "vit_b_32",
}
ORACLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "oracles" / "torch_pruning_groups_torchvision.jsonl"


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    with torch.no_grad():  # zero-initialised heads (ViT) would make output checks vacuous
        for p in model.parameters():
            if p.ndim >= 2 and not p.any():
                p.normal_(0, 0.02)
    return model


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.fixture(autouse=True)
def _release_memory():
    """Hand the freed model memory back to the OS after each test: glibc keeps freed heap pages, so a
    worker's RSS otherwise stays at its largest model's peak for the rest of the suite."""
    yield
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _find_culprit(name: str, k_mult: int, x: torch.Tensor) -> str:
    """Re-run group by group to name the first group whose growth changed the output."""
    model = _build(name)
    with torch.no_grad():
        ref = model(x)
    g = archgrow.trace(model, x[:1])
    for grp in g.groups:
        if grp.growable and grp.preserves_function:
            archgrow.grow(g, grp.name, grp.step * k_mult)
            with torch.no_grad():
                if _rel_diff(model(x), ref) > 1e-5:
                    return grp.name
    return "(none when grown one at a time)"


def _params(name: str) -> list:
    out = []
    for m in ALL_MODELS:
        marks = [pytest.mark.xdist_group("heavy")] if m in HEAVY else []
        ks = (1, 3) if m in BOTH_K else (1,)
        out += [pytest.param(m, k, id=f"{m}-k{k}", marks=marks) for k in ks]
    return out


@pytest.mark.parametrize(("name", "k_mult"), _params("all"))
def test_grow_every_group(name: str, k_mult: int) -> None:
    model = _build(name)
    size = INPUT_SIZE.get(name, 32)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
    g = archgrow.trace(model, x[:1])
    assert g.groups, "no width group found"
    for grp in g.groups:
        assert grp.growable or grp.reason, f"group {grp.name} is frozen without a reason"
    assert any(grp.growable for grp in g.groups), "no growable group"

    # Adam keeps two state tensors per parameter: bounded memory for the largest models.
    n_params = sum(p.numel() for p in model.parameters())
    if n_params < 50_000_000:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9 if n_params < 250_000_000 else 0.0)
    preserving = [grp for grp in g.groups if grp.growable and grp.preserves_function]
    changing = [grp for grp in g.groups if grp.growable and not grp.preserves_function]
    for grp in preserving:
        archgrow.grow(g, grp.name, grp.step * k_mult, optimizer=opt)
    with torch.no_grad():
        diff = _rel_diff(model(x), ref)
    if diff > 1e-5:
        pytest.fail(f"output changed by {diff:.2e} after growth; first culprit: {_find_culprit(name, k_mult, x)}")
    for grp in changing:
        archgrow.grow(g, grp.name, grp.step * k_mult, optimizer=opt)

    model.train()
    opt.zero_grad()
    _first(model(x)).square().mean().backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert g.retrace().widths() == g.widths()


def _oracle_records() -> dict[str, dict]:
    if not ORACLE.exists():
        return {}
    records = (json.loads(line) for line in ORACLE.read_text().splitlines() if line.strip())
    return {r["model"]: r for r in records if r["model"] in ALL_MODELS}


ORACLE_RECORDS = _oracle_records()


def _expected_partition(record: dict, model: nn.Module) -> set[frozenset[str]]:
    """Torch-Pruning's partition of conv/linear outputs."""
    mods = dict(model.named_modules())
    weighted = {n for n, m in mods.items() if isinstance(m, (nn.Conv2d, nn.Linear))}
    parts = [set(x for x in grp["out"] if x in weighted) for grp in record["groups"]]
    return {frozenset(p) for p in parts if p}


@pytest.mark.skipif(not ORACLE.exists(), reason=f"Torch-Pruning oracle not found at {ORACLE} (outside CI checkouts)")
@pytest.mark.parametrize("name", sorted(ORACLE_RECORDS) or ["none"])
def test_partition_matches_torch_pruning(name: str) -> None:
    record = ORACLE_RECORDS[name]
    model = _build(name)
    size = INPUT_SIZE.get(name, 32)
    g = archgrow.trace(model, torch.randn(1, 3, size, size))
    expected = _expected_partition(record, model)
    known = set().union(*expected)
    mods = dict(model.named_modules())
    mine = set()
    for grp in g.groups:
        layers = frozenset(
            m.name
            for m in grp.producers + grp.followers
            if isinstance(mods.get(m.name), (nn.Conv2d, nn.Linear)) and m.name in known
        )
        if layers:  # auxiliary heads run only in training mode; Torch-Pruning traced eval mode
            mine.add(layers)
    assert mine == expected
