"""save/load: a run resumed from a checkpoint continues exactly like the uninterrupted run."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import archgrow
from archgrow import ArchgrowError
from archgrow.data import generated
from archgrow.models import mlp, wrn28

SPEC = {
    "seed": 11,
    "defaults": {"max_width": 48},
    "rules": [
        {"match": "hidden1", "trigger": {"kind": "activation", "buffer_size": 400}, "initializer": {"kind": "select"}},
        {"match": "hidden2", "trigger": {"kind": "weight"}, "initializer": {"kind": "weight"}},
    ],
}


GRADIENT_SPEC = {
    "seed": 5,
    "defaults": {"max_width": 48},
    "rules": [
        {"match": "hidden1", "trigger": {"kind": "gradient"}, "initializer": {"kind": "gradmax"}},
        {"match": "hidden2", "trigger": {"kind": "gradient"}, "initializer": {"kind": "firefly", "candidates": 20}},
    ],
}


def batches(n_steps, seed=0):
    d = generated(16, seed=1337)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(d.x_train), generator=g)
    return [(d.x_train[order[i * 64 : (i + 1) * 64]], d.y_train[order[i * 64 : (i + 1) * 64]]) for i in range(n_steps)]


def fresh():
    torch.manual_seed(0)
    return mlp(64, (4, 4), 2)


def step(grown, optimizer, x, y):
    grown.train()
    loss = F.cross_entropy(grown(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return grown.grow_step(optimizer, loss_fn=lambda: F.cross_entropy(grown(x), y))


@pytest.mark.parametrize("spec", [SPEC, GRADIENT_SPEC], ids=["north", "gradient"])
def test_resume_is_exact(tmp_path, spec):
    data = batches(24)
    probe = data[0][0]
    # uninterrupted run
    a = archgrow.wrap(fresh(), spec, probe[:1])
    opt_a = torch.optim.Adam(a.parameters(), lr=3e-3)
    for x, y in data[:12]:
        step(a, opt_a, x, y)
    path = tmp_path / "run.pt"
    archgrow.save(path, a, opt_a)
    saved_widths = a.widths()
    assert saved_widths["hidden1"] > 4 and saved_widths["hidden2"] > 4, "the test needs growth before the save"
    for x, y in data[12:]:
        step(a, opt_a, x, y)

    # resumed run: fresh base model, fresh optimizer built before loading
    base = fresh()
    opt_b = torch.optim.Adam(base.parameters(), lr=3e-3)
    b = archgrow.load(path, base, opt_b)
    assert b.widths() == saved_widths
    assert [e.to_dict() for e in b.history] == [e.to_dict() for e in a.history[: len(b.history)]]
    assert b.steps == 12
    for x, y in data[12:]:
        step(b, opt_b, x, y)

    assert b.widths() == a.widths()
    assert [e.to_dict() | {"trigger_seconds": 0, "initializer_seconds": 0} for e in b.history] == [
        e.to_dict() | {"trigger_seconds": 0, "initializer_seconds": 0} for e in a.history
    ]
    for (name, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=0, atol=0, msg=name)
    a.eval()
    b.eval()
    with torch.no_grad():
        torch.testing.assert_close(b(probe), a(probe), rtol=0, atol=0)


def test_same_next_optimizer_step(tmp_path):
    data = batches(10)
    a = archgrow.wrap(fresh(), SPEC, data[0][0][:1])
    opt_a = torch.optim.SGD(a.parameters(), lr=0.05, momentum=0.9)
    for x, y in data[:9]:
        step(a, opt_a, x, y)
    archgrow.save(tmp_path / "c.pt", a, opt_a)
    base = fresh()
    b = archgrow.load(tmp_path / "c.pt", base)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9)
    # an optimizer built after loading works too (deep copy: state_dict() shares tensors with opt_a)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    x, y = data[9]
    step(a, opt_a, x, y)
    step(b, opt_b, x, y)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=0, atol=0)


def test_checkpoint_of_a_conv_net_reloads_widths(tmp_path):
    torch.manual_seed(0)
    model = wrn28(width_mult=0.25)
    x = torch.randn(8, 3, 32, 32)
    spec = {"rules": [{"match": "stage2.*", "trigger": {"kind": "linear_schedule", "final_width": 16, "total_steps": 4}}]}
    grown = archgrow.wrap(model, spec, x[:1])
    grown(x)
    grown.grow_step()
    grown.grow_step()
    archgrow.save(tmp_path / "w.pt", grown)
    torch.manual_seed(0)
    again = archgrow.load(tmp_path / "w.pt", wrn28(width_mult=0.25))
    assert again.widths() == grown.widths() != archgrow.trace(wrn28(width_mult=0.25), x[:1]).widths()
    grown.eval()
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), grown(x))


def test_load_rejects_wrong_models_and_files(tmp_path):
    data = batches(8)
    a = archgrow.wrap(fresh(), SPEC, data[0][0][:1])
    opt = torch.optim.Adam(a.parameters())
    for x, y in data:
        step(a, opt, x, y)
    archgrow.save(tmp_path / "a.pt", a)
    with pytest.raises(ArchgrowError, match="groups do not match"):
        archgrow.load(tmp_path / "a.pt", mlp(64, (4, 4, 4), 2))
    assert max(a.widths()["hidden1"], a.widths()["hidden2"]) < 40
    with pytest.raises(ArchgrowError, match="pass the base model as first built"):
        archgrow.load(tmp_path / "a.pt", mlp(64, (40, 40), 2))
    with pytest.raises(ArchgrowError, match="no optimizer state"):
        base = fresh()
        archgrow.load(tmp_path / "a.pt", base, torch.optim.Adam(base.parameters()))
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(ArchgrowError, match="not an archgrow checkpoint"):
        archgrow.load(tmp_path / "other.pt", fresh())


# --------------------------------------------------------------------------- checkpoints that cannot lie
def _trained(tmp_path, optimizer_type=torch.optim.Adam):
    data = batches(6)
    grown = archgrow.wrap(fresh(), SPEC, data[0][0][:1])
    opt = optimizer_type(grown.parameters(), lr=0.01)
    for x, y in data:
        step(grown, opt, x, y)
    path = tmp_path / "run.pt"
    archgrow.save(path, grown, opt)
    return grown, opt, path


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    grown, opt, path = _trained(tmp_path)
    before = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        archgrow.save(path, grown, opt)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]  # no temporary file left


def test_damaged_tensor_data_is_refused(tmp_path):
    grown, opt, path = _trained(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["model"]["hidden1.weight"][0, 0] += 1e-3  # one value changed, digests as saved
    torch.save(payload, path)
    with pytest.raises(ArchgrowError, match=r"run.pt: 1 tensor\(s\) do not match the digests .*model.hidden1.weight"):
        archgrow.load(path, fresh(), None)


def test_flipped_bytes_never_load_silently(tmp_path):
    grown, opt, path = _trained(tmp_path)
    raw = bytearray(path.read_bytes())
    weight = grown.model.hidden2.weight.detach().contiguous().numpy().tobytes()
    at = raw.find(weight[:16])
    assert at > 0
    raw[at + 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ArchgrowError, match="run.pt: "):
        archgrow.load(path, fresh(), None)


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "missing", "directory"])
def test_unreadable_files_name_the_file_and_the_problem(tmp_path, damage):
    grown, opt, path = _trained(tmp_path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("not a checkpoint\n")
    elif damage == "missing":
        path.unlink()
    else:
        path.unlink()
        path.mkdir()
    with pytest.raises(ArchgrowError, match=f"{path.name}: "):
        archgrow.load(path, fresh(), None)


def test_another_base_model_is_refused_with_the_differences(tmp_path):
    grown, opt, path = _trained(tmp_path)
    torch.manual_seed(0)
    other = mlp(64, (4, 4), 3)  # same growing groups and widths, another number of classes
    with pytest.raises(ArchgrowError, match=r"not the base model .*'out.weight' has shape \(3, 4\) instead of \(2, 4\)"):
        archgrow.load(path, other, None)
    assert _hook_count(other) == 0  # a refused load leaves no hooks behind


def test_the_wrapped_model_is_accepted(tmp_path):
    grown, opt, path = _trained(tmp_path)
    base = fresh()
    wrapped = archgrow.wrap(base, SPEC, batches(1)[0][0][:1])
    resumed = archgrow.load(path, wrapped, None)
    assert resumed.widths() == grown.widths() and wrapped.closed
    assert resumed.model is base


def test_another_optimizer_is_refused(tmp_path):
    grown, opt, path = _trained(tmp_path)
    base = fresh()
    with pytest.raises(ArchgrowError, match="state of a torch.optim.adam.Adam optimizer, not of the torch.optim.sgd.SGD"):
        archgrow.load(path, base, torch.optim.SGD(base.parameters(), lr=0.1))
    base = fresh()
    params = list(base.parameters())
    with pytest.raises(ArchgrowError, match=r"parameter groups of \[2, 4\] parameters, the checkpoint's had \[6\]"):
        archgrow.load(path, base, torch.optim.Adam([{"params": params[:2]}, {"params": params[2:]}]))
