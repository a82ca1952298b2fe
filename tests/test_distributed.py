"""Growth under DDP (gloo, two processes on 127.0.0.1): every rank decides and grows alike.

One two-process job (tests/ddp_cases.py) runs every case once for the whole module; the tests
compare what the ranks saved.  The NaN-free parts of each case must be bit-identical across
ranks; the strategies decided by sums and means over samples must also match one process
training on the whole batch.
"""

from __future__ import annotations

import socket
from pathlib import Path

import ddp_cases
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import archgrow
from archgrow.distributed import distribute

pytestmark = [
    pytest.mark.xdist_group("distributed"),
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this torch build"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    out = tmp_path_factory.mktemp("ddp")
    cases = list(ddp_cases.CASES)
    mp.start_processes(ddp_cases.worker, args=(2, _free_port(), str(out), cases), nprocs=2, start_method="spawn")
    return {name: tuple(torch.load(Path(out) / f"{name}.{r}.pt") for r in (0, 1)) for name in [*cases, "checks", "resumed"]}


@pytest.mark.parametrize("case", list(ddp_cases.CASES))
def test_ranks_grow_identically(ranks, case):
    a, b = ranks[case]
    assert a["events"], f"{case} never grew: the case proves nothing"
    assert a["events"] == b["events"] and a["widths"] == b["widths"]
    assert a["rebuilds"] >= 1
    names = set(a["optimizer"])  # parameters (buffers follow DDP's broadcast from rank 0 at each forward)
    for name in names:
        assert torch.equal(a["parameters"][name], b["parameters"][name]), name
        for key, value in a["optimizer"][name].items():
            assert torch.equal(value, b["optimizer"][name][key]), (name, key)


@pytest.mark.parametrize("case", ddp_cases.DETERMINISTIC)
def test_two_ranks_match_one_process_with_the_whole_batch(ranks, case):
    a, _ = ranks[case]
    single = ddp_cases.run(case)
    assert single["widths"] == a["widths"] and single["events"] == a["events"]
    for name, value in single["parameters"].items():
        torch.testing.assert_close(a["parameters"][name], value, rtol=1e-5, atol=1e-6)


def test_ddp_around_the_wrapped_model_is_refused(ranks):
    for checks in ranks["checks"]:
        message = checks["plain_ddp"]
        assert message.startswith("ArchgrowError") and "archgrow.distribute(grown)" in message, message


def test_ranks_that_would_continue_apart_raise(ranks):
    for checks in ranks["checks"]:
        message = checks["seed_divergence"]
        assert message.startswith("DivergenceError") and "rank 0:" in message and "rank 1:" in message, message


def test_rows_gather_in_rank_order(ranks):
    expected = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    for checks in ranks["checks"]:
        assert torch.equal(checks["gathered"], expected)


def test_nonfinite_input_on_one_rank_is_not_buffered(ranks):
    a, b = (checks["nonfinite"] for checks in ranks["checks"])
    assert a["widths"] == b["widths"]
    assert (a["count"], b["count"]) == (0, 1)
    assert b["buffered"] == a["buffered"] - 1  # the NaN sample left out, the rest kept
    assert b["warnings"] and "rank 1" in b["warnings"][0] and not a["warnings"]


def test_wrap_of_a_ddp_model_says_which_order_to_use(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
        with pytest.raises(archgrow.ArchgrowError, match=r"wrap the plain model first.*archgrow\.distribute"):
            archgrow.wrap(ddp, {"rules": []}, torch.randn(1, 4))
        with pytest.raises(archgrow.ArchgrowError, match="GrowingModel that archgrow.wrap returned"):
            distribute(nn.Linear(2, 2))
    finally:
        dist.destroy_process_group()


def test_distribute_needs_an_initialized_process_group():
    grown = archgrow.wrap(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), {"rules": []}, torch.randn(1, 4))
    with pytest.raises(archgrow.ArchgrowError, match="init_process_group"):
        distribute(grown)


def test_checkpoint_under_ddp_resumes_exactly(ranks):
    for rank in ranks["resumed"]:
        straight, resumed = rank["runs"]
        assert resumed["events"] == straight["events"] and resumed["widths"] == straight["widths"]
        assert straight["events"], "the run never grew: the check proves nothing"
        for name, value in straight["parameters"].items():
            assert torch.equal(resumed["parameters"][name], value), name
        assert rank["single_buffer"] == 2 * rank["buffer"]  # saved: both ranks' shares; loaded: this rank's


ROOT = Path(__file__).resolve().parents[1]


def test_archgrow_run_nproc_2_gives_one_runs_results(tmp_path):
    """`archgrow run --nproc 2` (torchrun, gloo): each rank trains its half of every global batch and
    rank 0 writes one run's files; they match one process training on the whole batch."""
    pytest.importorskip("sklearn", reason="the digits data come from scikit-learn")
    import json
    import os
    import subprocess
    import sys

    from archgrow.runner import load_experiment, run_experiment

    experiment = tmp_path / "exp.yaml"
    experiment.write_text(
        f"""version: 1
name: nproc
model: {{name: mlp, hidden: [4, 4]}}
data: {{kind: digits, test_frac: 0.2, seed: 0}}
train: {{optimizer: adam, lr: 0.003, batch_size: 64, epochs: 2, eval_train: false}}
strategies:
  north-select: {{spec: {ROOT / "specs" / "north-select.yaml"}, defaults: {{max_width: 8x}}}}
  gradmax-authors: {{spec: {ROOT / "specs" / "gradmax-authors.yaml"}, defaults: {{max_width: 8x}}}}
baselines: {{small-static: 1}}
seeds: [0]
"""
    )
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-m", "archgrow", "run", str(experiment), "--nproc", "2", "--out", str(tmp_path / "two"),
         "--no-pictures", "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| strategy |") == 1  # rank 0 alone prints the table
    one = run_experiment(load_experiment(experiment), output=tmp_path / "one", progress=False, pictures=False)
    for run in one.runs:
        two = json.loads((tmp_path / "two" / run["strategy"] / "seed0" / "summary.json").read_text())
        assert (two["steps"], two["final_widths"], two["events"]) == (run["steps"], run["final_widths"], run["events"])
        assert two["test_acc"] == pytest.approx(run["test_acc"], abs=0.01)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_nproc_needs_a_global_batch_that_divides(tmp_path):
    from archgrow.runner.processes import Processes

    procs = Processes(rank=0, world_size=3, local_rank=0, device=torch.device("cpu"))
    assert procs.local_batch(63) == 21
    with pytest.raises(archgrow.ArchgrowError, match="train.batch_size: 64 is the global batch .* multiple of 3"):
        procs.local_batch(64)


def test_sharded_order_makes_the_global_batches():
    from archgrow.runner.sampling import SeededShuffle, ShardedShuffle

    data = list(range(20))
    single = list(SeededShuffle(20, seed=5))
    shards = [list(ShardedShuffle(data, 5, rank, 2)) for rank in (0, 1)]
    for k in range(2):  # global batch k of 8 = rank 0's and rank 1's local batches k of 4
        union = sorted(shards[0][4 * k : 4 * k + 4] + shards[1][4 * k : 4 * k + 4])
        assert union == sorted(single[8 * k : 8 * k + 8])
