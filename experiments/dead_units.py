"""Why the activation trigger stops firing on the Fashion-MNIST / MNIST MLP at lr 3e-3.

Trains the Small static network of ``fashion_mlp.yaml`` (784-64-64-10, Xavier init, Adam, batch
512) and prints, at a few steps, each hidden layer's effective-dimension count on a buffer of 1568
training images (what T_act compares with ``floor(0.97 * phi0 * 64)``) and how many of its units
are zero on every buffered image (dead ReLUs). No growth: it isolates what the trigger sees.

    python experiments/dead_units.py --lr 3e-3 1e-3 [--data fashion_mnist|mnist] [--init paper|torch]

``--steps 0 --init torch`` shows the baseline counts PyTorch's default init gives instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from archgrow.data import fashion_mnist, mnist_split
from archgrow.metrics import activation_count
from archgrow.models import mlp

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lr", type=float, nargs="+", default=[3e-3, 1e-3])
    p.add_argument("--data", choices=["fashion_mnist", "mnist"], default="fashion_mnist")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--init", choices=["paper", "torch", "kaiming"], default="paper")
    p.add_argument("--steps", type=int, nargs="+", default=[0, 1, 10, 50, 100, 350])
    args = p.parse_args()
    data = fashion_mnist() if args.data == "fashion_mnist" else mnist_split(ROOT.parent / "shared" / "data" / "mnist")
    buffer = data.x_train[:1568]
    print("| lr | step | hidden1 count | hidden1 dead | hidden2 count | hidden2 dead |")
    print("|---|---|---|---|---|---|")
    for lr in args.lr:
        torch.manual_seed(args.seed)
        model = mlp(784, (64, 64), 10, init=args.init)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        order = torch.Generator().manual_seed(args.seed)
        step, n = 0, len(data.y_train)
        while step <= max(args.steps):
            perm = torch.randperm(n, generator=order)
            for i in range(0, n, 512):
                if step in args.steps:
                    print(f"| {lr:g} | {step} | " + " | ".join(f"{c} | {d}" for c, d in _stats(model, buffer)) + " |")
                if step >= max(args.steps):
                    break
                idx = perm[i : i + 512]
                loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
            else:
                continue
            break


@torch.no_grad()
def _stats(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[int, int]]:
    h1 = F.relu(model.hidden1(x))
    h2 = F.relu(model.hidden2(h1))
    return [(activation_count(h, 1, epsilon=0.01, scale="samples"), int((h.abs().sum(0) == 0).sum())) for h in (h1, h2)]


if __name__ == "__main__":
    main()
