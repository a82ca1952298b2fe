"""How much of timm archgrow can grow: the growable fraction of width groups over a broad sample
of timm's families, and what freezes the rest.

    python tools/timm_coverage.py                  # the default sample (one or two models per family)
    python tools/timm_coverage.py --json out.json  # also write every model's counts and reasons
    python tools/timm_coverage.py resnet18 vit_tiny_patch16_224

Each model is built with ``pretrained=False`` and traced once on a batch of one at the smallest
input it accepts (64 px unless listed in ``SIZE``; a model whose timm config fixes its input
size, or that fails at 64 px, at its own size); nothing is grown (tests/test_timm.py checks
that growth keeps models running).  It prints one row per model, the growable fraction over all
width groups of all models that traced (issue 18's measure, whose target is 85%), the same
without the groups that reach the model output (the classifier's width is the number of
classes, so every model has one such group by design), and the most frequent freeze reasons.

Reasons name modules, nodes and sizes; to count them as blockers they are grouped by pattern:
quoted names become ``'…'`` and numbers ``N``.  A frozen group is counted under its first reason,
the one a user would act on first (``WidthGroup.reason``); a model that fails to trace is listed
with its error and counted apart.  Conv and linear layers that belong to no group (a layer whose
weight is computed in the forward, as in NF-Nets' ``ScaledStdConv2d``, yields no group at all, so
its widths would be missing from the count rather than frozen) are counted per model.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import time
from collections import Counter, defaultdict
from typing import Any

import torch

import archgrow

# One or two models per timm family, small variants, random weights.
SAMPLE = (
    # ResNet and relatives
    "resnet10t", "resnet18d", "resnetv2_50", "seresnext26d_32x4d", "ecaresnet26t", "resnest14d", "res2net50_14w_8s",
    "res2next50", "skresnet18", "gernet_s", "resnetrs50",
    # RegNet, NFNet
    "regnetx_002", "regnety_002", "regnetz_b16", "nf_regnet_b0", "nf_resnet26", "eca_nfnet_l0",
    # EfficientNet / MobileNet families
    "efficientnet_b0", "efficientnet_lite0", "efficientnetv2_rw_t", "tinynet_e", "mixnet_s", "mnasnet_small",
    "semnasnet_050", "fbnetc_100", "hardcorenas_a", "spnasnet_100", "mobilenetv2_050", "mobilenetv3_small_050",
    "mobilenetv4_conv_small_050", "lcnet_050", "ghostnet_050", "ghostnetv2_100", "rexnet_100", "tf_mixnet_s",
    # other CNNs
    "convnext_atto", "convnextv2_atto", "densenet121", "dla34", "dpn48b", "cspresnet50", "cspdarknet53",
    "cs3darknet_s", "darknet17", "hrnet_w18_small", "repvgg_a0", "mobileone_s0", "vovnet39a", "ese_vovnet19b_slim_dw",
    "selecsls42b", "inception_v3", "legacy_xception", "xception41p", "vgg11", "repghostnet_050", "hgnetv2_b0",
    "fastvit_t8", "edgenext_xx_small", "poolformerv2_s12", "convmixer_768_32", "resmlp_12_224", "efficientformer_l1",
    # attention
    "levit_128s", "deit_tiny_patch16_224", "vit_tiny_patch16_224", "mobilevit_xxs", "mobilevitv2_050",
    "coat_lite_tiny", "pit_ti_224", "crossvit_tiny_240", "swin_tiny_patch4_window7_224", "maxvit_nano_rw_256",
)  # fmt: skip
# Smallest input each accepts where 64 px is not enough (or where the model fixes its size).
SIZE = {
    "inception_v3": 75, "levit_128s": 224, "deit_tiny_patch16_224": 224, "vit_tiny_patch16_224": 224,
    "coat_lite_tiny": 224, "pit_ti_224": 224, "crossvit_tiny_240": 240, "swin_tiny_patch4_window7_224": 224,
    "maxvit_nano_rw_256": 256, "resmlp_12_224": 224, "efficientformer_l1": 224, "convmixer_768_32": 32,
    "mobilevit_xxs": 256, "mobilevitv2_050": 256,
}  # fmt: skip
OUTPUT_REASON = "reaches the model output"


def pattern(reason: str) -> str:
    """The reason with its model-specific parts (quoted names, numbers) abstracted away."""
    text = re.sub(r"'[^'\s]+(?: \+ [^'\s]+)*'", "'…'", reason)  # names, and sums of names ('a + b')
    text = re.sub(r"\b\d+\b", "N", text)
    return re.sub(r"\(N\b[^)]*\)", "(…)", text)


def measure(name: str, size: int) -> dict[str, Any]:
    import timm

    torch.manual_seed(0)
    start = time.perf_counter()
    try:
        model = timm.create_model(name, pretrained=False).eval()
    except Exception as exc:  # a name this timm does not have
        return {"model": name, "size": size, "error": f"create_model: {type(exc).__name__}: {exc}"}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    own = int(cfg.get("input_size", (3, 224, 224))[-1])
    if cfg.get("fixed_input_size") and name not in SIZE:
        size = own  # its position embedding or windows fix the size
    try:
        graph = archgrow.trace(model, torch.randn(1, 3, size, size))
    except archgrow.ArchgrowError as exc:
        if size == own:
            return {"model": name, "size": size, "error": f"{type(exc).__name__}: {exc}"}
        size = own  # too small for it: its own input size
        try:
            graph = archgrow.trace(model, torch.randn(1, 3, size, size))
        except archgrow.ArchgrowError as exc2:
            return {"model": name, "size": size, "error": f"{type(exc2).__name__}: {exc2}"}
    groups = [
        {"name": g.name, "width": g.width, "growable": g.growable, "reason": g.reasons[0] if g.reasons else ""}
        for g in graph.groups
    ]
    members = {m.name for g in graph.groups for m in (*g.producers, *g.consumers, *g.followers)}
    outside = [
        n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and n not in members
    ]
    return {
        "model": name, "size": size, "groups": groups, "outside": outside, "seconds": time.perf_counter() - start,
    }  # fmt: skip


def report(results: list[dict[str, Any]], top: int) -> None:
    print("| model | input | groups | growable | % | without output | layers in no group | first freeze reason |")
    print("|---|---|---|---|---|---|---|---|")
    total = grown = total_inner = grown_inner = 0
    by_pattern: Counter[str] = Counter()
    models_of: dict[str, set[str]] = defaultdict(set)
    example: dict[str, str] = {}
    failed = []
    hidden: dict[str, int] = {}
    for r in results:
        if "error" in r:
            failed.append(r)
            continue
        groups = r["groups"]
        inner = [g for g in groups if OUTPUT_REASON not in g["reason"]]
        n, k = len(groups), sum(g["growable"] for g in groups)
        n_in, k_in = len(inner), sum(g["growable"] for g in inner)
        total, grown, total_inner, grown_inner = total + n, grown + k, total_inner + n_in, grown_inner + k_in
        reasons = [g["reason"] for g in inner if not g["growable"]]
        for reason in reasons:
            key = pattern(reason)
            by_pattern[key] += 1
            models_of[key].add(r["model"])
            example.setdefault(key, reason)
        first = Counter(pattern(x) for x in reasons).most_common(1)
        cell = f"{first[0][0][:70]} (x{first[0][1]})" if first else ""
        pct_in = f"{100 * k_in / n_in:.0f}%" if n_in else "-"
        if r["outside"]:
            hidden[r["model"]] = len(r["outside"])
        print(
            f"| {r['model']} | {r['size']} | {n} | {k} | {100 * k / max(n, 1):.0f}% | {pct_in} | "
            f"{len(r['outside'])} | {cell} |"
        )
    print()
    traced = len(results) - len(failed)
    print(f"models: {len(results)} ({traced} traced, {len(failed)} failed to trace)")
    print(f"width groups growable: {grown}/{total} = {100 * grown / max(total, 1):.1f}% (issue 18's target: 85%)")
    print(
        f"without the groups reaching the model output: {grown_inner}/{total_inner} = "
        f"{100 * grown_inner / max(total_inner, 1):.1f}%"
    )
    if hidden:
        shown = ", ".join(f"{m} ({c})" for m, c in sorted(hidden.items(), key=lambda x: -x[1]))
        print(
            f"conv/linear layers that are no group's member (their widths are not counted above): "
            f"{sum(hidden.values())} in {len(hidden)} models: {shown}"
        )
    print(f"\ntop freeze reasons (first reason of each frozen group, grouped by pattern; {top} shown):")
    print("| groups | models | reason pattern | example |")
    print("|---|---|---|---|")
    for key, count in by_pattern.most_common(top):
        names = sorted(models_of[key])
        shown = ", ".join(names[:4]) + (f" +{len(names) - 4}" if len(names) > 4 else "")
        print(f"| {count} | {len(names)} ({shown}) | {key[:140]} | {example[key][:160]} |")
    if failed:
        print("\nfailed to trace:")
        for r in failed:
            print(f"- {r['model']} ({r['size']} px): {' '.join(r['error'].split())[:220]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="timm model names (default: the built-in sample)")
    parser.add_argument("--size", type=int, default=64, help="input size for models not listed in SIZE (px)")
    parser.add_argument("--top", type=int, default=15, help="how many reason patterns to print")
    parser.add_argument("--json", help="write every model's groups and reasons here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for name in args.models or SAMPLE:
        results.append(measure(name, SIZE.get(name, args.size)))
        print(f"traced {name}", file=sys.stderr, flush=True)
        gc.collect()
    report(results, args.top)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
