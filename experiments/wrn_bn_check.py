"""Why WRN-28 is at chance after the 24 steps of ``wrn28_fashion.yaml``: batch-norm statistics.

Trains the Medium static network of that experiment (WRN-28-1, same seed, images, optimizer and
24 steps) and evaluates the test images twice: in eval mode (batch norm uses its running
statistics, as every reported accuracy does) and with each batch's own statistics.

    python experiments/wrn_bn_check.py
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from archgrow.graph.widthgraph import trace
from archgrow.runner import load_experiment
from archgrow.runner.build import base_init, build_model, load_data, scale_groups

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    exp = load_experiment(ROOT / "experiments" / "wrn28_fashion.yaml")
    data = load_data(exp.data)
    seed, cfg = exp.seeds[0], exp.train
    model = build_model(exp.model, data, seed)
    graph = trace(model, data.x_train[:1])
    scale_groups(graph, exp.baselines["medium-static"], [g.name for g in graph.groups if g.growable], seed, init=base_init(exp.model))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    order = torch.Generator().manual_seed(seed)
    n = len(data.y_train)
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=order)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            model.train()
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    for label, train_mode in (("running statistics (eval mode)", False), ("batch statistics", True)):
        model.train(train_mode)
        with torch.no_grad():
            logits = torch.cat([model(data.x_test[i : i + 128]) for i in range(0, len(data.y_test), 128)])
        print(f"test accuracy with {label}: {(logits.argmax(1) == data.y_test).float().mean().item():.1%}")


if __name__ == "__main__":
    main()
