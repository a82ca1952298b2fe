"""NaN and infinite values never decide: not in the buffer, not as a baseline, not as a score.

Also: groups at their cap cost nothing (no buffering, measurement, capture or evaluation).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archgrow


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))


def _activation_spec(max_width: int = 24) -> dict:
    return {
        "seed": 0,
        "defaults": {"max_width": max_width},
        "rules": [{"match": "*", "trigger": {"kind": "activation", "buffer_size": 64, "baseline": "first_batch"}}],
    }


def _data(n: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, generator=g), torch.randint(0, 3, (n,), generator=g)


def _baselines(grown: archgrow.GrowingModel) -> dict[str, float]:
    return {name: b.trigger.state_dict()["base"] for name, b in grown.growing.items()}


def test_a_nan_sample_in_the_first_batch_does_not_set_the_baseline():
    x, _ = _data()
    clean = archgrow.wrap(_mlp(), _activation_spec(), x[:1]).train()
    clean(x[1:])  # the first batch without its bad sample
    poisoned = x.clone()
    poisoned[0, 3] = float("nan")
    grown = archgrow.wrap(_mlp(), _activation_spec(), x[:1]).train()
    with pytest.warns(UserWarning, match=r"1 training input sample\(s\) with NaN or infinite values were not buffered"):
        grown(poisoned)
    assert grown.nonfinite_inputs == 1 and grown.buffered_samples == 31
    assert _baselines(grown) == _baselines(clean)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: a second bad sample is counted silently
        grown(poisoned)
    assert grown.nonfinite_inputs == 2


def test_infinite_rows_later_leave_the_buffer_finite():
    x, _ = _data()
    grown = archgrow.wrap(_mlp(), _activation_spec(), x[:1]).train()
    grown(x)
    bad = x.clone()
    bad[::4, 0] = float("inf")
    with pytest.warns(UserWarning, match="not buffered"):
        grown(bad)
    assert grown.buffered_samples == 32 + 24 and grown.nonfinite_inputs == 8
    grown.grow_step()
    assert grown.evaluations and all(math.isfinite(e.score) and math.isfinite(e.threshold) for e in grown.evaluations)


def test_a_batch_of_only_nan_is_not_a_baseline():
    x, _ = _data()
    grown = archgrow.wrap(_mlp(), _activation_spec(), x[:1]).train()
    with pytest.warns(UserWarning, match="not buffered"):
        grown(torch.full_like(x, float("nan")))
    assert grown.buffered_samples == 0 and not any(b.trigger.state_dict() for b in grown.growing.values())
    grown(x)  # the first finite batch sets the baselines
    assert all(math.isfinite(v) for v in _baselines(grown).values())


def test_non_finite_measurement_neither_sets_a_baseline_nor_decides():
    x, _ = _data()
    model = _mlp()
    grown = archgrow.wrap(model, _activation_spec(), x[:1]).train()
    weight = model[0].weight.data.clone()
    model[0].weight.data[0, 0] = float("nan")  # finite inputs, but the network computes NaN
    with pytest.warns(UserWarning, match="baseline waits for the first finite measurement"):
        grown(x)
    assert not grown.growing["0"].trigger.state_dict()
    with pytest.warns(UserWarning, match="group '0', step 1: its activation measurement holds NaN or infinite"):
        assert grown.grow_step() == []
    assert "0" not in {e.group for e in grown.evaluations}
    model[0].weight.data.copy_(weight)
    with pytest.warns(UserWarning, match=r"group '0': baseline phi\(f_0\) taken at step 2"):
        grown.grow_step()
    assert math.isfinite(grown.growing["0"].trigger.state_dict()["base"])
    assert {e.group for e in grown.evaluations} == {"0", "2"}


@pytest.mark.parametrize("seed", range(6))
def test_fuzzed_nan_and_inf_inputs_never_reach_a_decision(seed):
    """Random batches with NaN/inf entries at random places, trained with the bad samples dropped
    from the loss (as a user would): scores, thresholds and baselines stay finite."""
    g = torch.Generator().manual_seed(100 + seed)
    model = _mlp()
    x, y = _data(seed=seed)
    grown = archgrow.wrap(model, _activation_spec(), x[:1])
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(6):
            xb, yb = _data(16, seed=int(torch.randint(0, 10**6, (1,), generator=g)))
            bad = torch.rand(xb.shape, generator=g) < 0.02
            xb[bad] = torch.where(torch.rand(int(bad.sum()), generator=g) < 0.5, float("nan"), float("inf"))
            keep = torch.isfinite(xb).all(dim=1)
            grown.train()
            out = grown(xb)
            optimizer.zero_grad()
            if keep.any():
                F.cross_entropy(grown.model(xb[keep]), yb[keep]).backward()  # the update sees clean samples only
                optimizer.step()
            grown.grow_step(optimizer)
            assert all(math.isfinite(e.score) and math.isfinite(e.threshold) for e in grown.evaluations)
            assert all(math.isfinite(v) for v in _baselines(grown).values())
            assert out.shape[0] == xb.shape[0]
    assert grown.nonfinite_inputs > 0


def test_capped_groups_measure_and_evaluate_nothing():
    x, y = _data()
    schedule = {"kind": "linear_schedule", "final_width": 8, "total_steps": 2, "grow_fraction": 1.0}
    spec = {
        "seed": 0,
        "rules": [
            {"match": "0", "trigger": schedule, "initializer": {"kind": "gradmax"}},  # needs G
            {"match": "2", "trigger": schedule, "initializer": {"kind": "select", "candidates": 10}},  # buffers
        ],
    }
    grown = archgrow.wrap(_mlp(), spec, x[:1])
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(2):  # both groups reach the schedule's final width
            grown.train()
            optimizer.zero_grad()
            F.cross_entropy(grown(x), y).backward()
            optimizer.step()
            grown.grow_step(optimizer)
        assert grown.widths()["0"] == 8 and grown.widths()["2"] == 8, grown.widths()
        buffered, measured = grown.buffered_samples, grown.timings["measure"]
        hooks_before = grown.timings["trigger"]
        grown.train()
        optimizer.zero_grad()
        F.cross_entropy(grown(x), y).backward()
        optimizer.step()
        assert grown.grow_step(optimizer) == []
    assert grown.evaluations == []  # no trigger ran
    assert grown.buffered_samples == buffered  # nothing buffered
    assert grown.timings["measure"] == measured and grown.timings["trigger"] == hooks_before
    assert all(b.bridge is None or not b.bridge.armed for b in grown.growing.values())  # no G captured
