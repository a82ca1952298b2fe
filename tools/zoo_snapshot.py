"""Record every torchvision classification model's width groups, to compare before and after a
refactor of the graph engine: the groups must come out the same.

    python tools/zoo_snapshot.py runs/zoo_before.json           # record
    python tools/zoo_snapshot.py runs/zoo_after.json --compare runs/zoo_before.json

Each model is traced on one example input (eval mode, the sizes of tests/test_torchvision.py) and
recorded as its ``graph.summary()`` plus every group's members, slots, step, flags and reasons.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

import archgrow


def _input_size(name: str) -> int:
    fixed = {"inception_v3": 299, "maxvit_t": 224, "alexnet": 63, "squeezenet1_0": 48, "squeezenet1_1": 48}
    return 224 if name.startswith("vit_") else fixed.get(name, 32)


def describe(graph: archgrow.WidthGraph) -> dict:
    groups = [
        {
            "name": g.name,
            "width": g.width,
            "step": g.step,
            "growable": g.growable,
            "preserves_function": g.preserves_function,
            "reasons": list(g.reasons),
            "not_preserving_reasons": list(g.not_preserving_reasons),
            "members": {
                kind: [[m.name, m.module_type, [[s.offset, s.inner] for s in m.slots]] for m in members]
                for kind, members in (("producers", g.producers), ("consumers", g.consumers), ("followers", g.followers))
            },
        }
        for g in graph.groups
    ]
    return {"summary": graph.summary(), "groups": groups, "untraced": list(graph.untraced_modules)}


def snapshot() -> dict:
    import torchvision

    out = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        size = _input_size(name)
        try:
            out[name] = describe(archgrow.trace(model, torch.randn(1, 3, size, size)))
        except archgrow.ArchgrowError as err:
            out[name] = {"error": f"{type(err).__name__}: {err}"}
        print(name, flush=True)
        del model
        gc.collect()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--compare", type=Path, help="an earlier snapshot the new one must equal")
    args = parser.parse_args()
    current = snapshot()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(current, indent=1, sort_keys=True))
    if args.compare is None:
        return 0
    before = json.loads(args.compare.read_text())
    differ = sorted(m for m in set(before) | set(current) if before.get(m) != current.get(m))
    for m in differ:
        print(f"DIFFERENT: {m}")
    print(f"{len(current)} models, {len(differ)} different")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
