"""Save a growing model and resume it in a fresh process, or refuse to.

A grown model cannot be loaded into a freshly built one with ``load_state_dict``: the shapes
differ.  A checkpoint therefore stores the width of every group, and :func:`load` first grows
the fresh base model to those widths (with archgrow's own surgery, so every dependent tensor and
attribute follows), then loads the weights, the optimizer state and the grower's own state
(step count, trigger baselines, input buffer, generator), so the next ``grow_step`` decides
exactly as the uninterrupted run would have.

A checkpoint that loads must be the one that was saved, into the model it was saved from:

- saves are atomic (a temporary file beside the target, fsynced, then renamed), so a crash
  mid-save leaves the previous checkpoint intact;
- every tensor's SHA-256 is stored and checked at load, so damaged data never loads silently;
- the base model's identity (class, parameter shapes, group widths when wrapped) is stored, and
  loading into another base is refused with the differences listed (caps given as multiples are
  relative to that base, so they would silently change);
- the optimizer's type and parameter layout are stored, and another optimizer is refused.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archgrow.distributed import DistributedGrowingModel
from archgrow.errors import ArchgrowError
from archgrow.grower import GrowingModel, base_identity
from archgrow.spec.io import parse_spec
from archgrow.surgery.grow import grow
from archgrow.version import __version__

FORMAT = "archgrow-checkpoint"
FORMAT_VERSION = 2  # 2: tensor digests, base identity, optimizer layout


class CheckpointError(ArchgrowError):
    """A checkpoint that cannot be read, is damaged, or does not fit the model or optimizer given."""


def save(
    path: str | os.PathLike,
    grown: GrowingModel | DistributedGrowingModel,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Write weights, group widths, spec, history, grower state and (optionally) optimizer state.

    The file is replaced atomically: until the new one is complete, the previous one stays.
    Under DDP (a :class:`~archgrow.distributed.DistributedGrowingModel`) call it on every rank:
    the activation buffer is gathered from all ranks and rank 0 alone writes; every rank returns
    once the file is complete.  Load it on every rank, then ``archgrow.distribute`` again.
    """
    if isinstance(grown, DistributedGrowingModel):
        grown = grown.grown
    collective = grown.collective
    graph = grown.graph
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "archgrow_version": __version__,
        "spec": grown.spec.model_dump(mode="json"),
        "spec_source": grown.spec.source,
        "base": grown.base,
        "widths": graph.widths(),
        "example_inputs": [t.detach().cpu() if isinstance(t, torch.Tensor) else t for t in graph.example_inputs],
        "model": grown.model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "optimizer_layout": _optimizer_layout(optimizer) if optimizer is not None else None,
        "grower": grown.grower_state(),
    }
    failure: BaseException | None = None
    if collective.rank == 0:
        try:
            _write(path, payload)
        except Exception as exc:  # every rank must hear of it, or the others would wait forever
            failure = exc
    if not collective.all_true(failure is None):  # also a barrier: the file is complete when any rank returns
        if failure is not None:
            raise failure
        raise CheckpointError(f"{path}: rank 0 failed to write the checkpoint (its error says why)")


def _write(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    payload["digests"] = _digests(payload)
    target = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load(
    path: str | os.PathLike, fresh_model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> GrowingModel:
    """Rebuild a :class:`GrowingModel` from ``fresh_model``: the base model as first built, or a
    wrapped one that has not grown (its hooks are removed first).

    ``optimizer`` may be created on ``fresh_model.parameters()`` before calling this: growth
    keeps parameter objects, so it stays valid and receives the saved state.
    """
    payload = _read(path)
    if isinstance(fresh_model, GrowingModel):
        fresh_model = fresh_model.unwrap()
    device = next((p.device for p in fresh_model.parameters()), torch.device("cpu"))
    inputs = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in payload["example_inputs"])
    spec = parse_spec(payload["spec"], source=payload.get("spec_source") or str(path))
    grown = GrowingModel(fresh_model, spec, inputs)
    try:
        graph = grown.graph
        saved: dict[str, int] = payload["widths"]
        current = graph.widths()
        unknown = sorted(set(saved) - set(current))
        if unknown or set(current) - set(saved):
            raise CheckpointError(
                f"{path}: the checkpoint's groups do not match the model's (only in checkpoint: "
                f"{', '.join(unknown) or 'none'}; only in model: {', '.join(sorted(set(current) - set(saved))) or 'none'}); "
                "pass the same architecture, freshly built"
            )
        base = payload.get("base", {"widths": saved})  # format 1 recorded no base: the saved widths bound it
        for name, width in base["widths"].items():
            now = graph.group(name).width
            if graph.group(name).growable and width < now:
                raise CheckpointError(
                    f"{path}: group '{name}' is {now} wide in the given model but {width} in the checkpoint's base; "
                    "pass the base model as first built, not a grown one"
                )
        if "base" in payload:
            differences = _differences(payload["base"], base_identity(fresh_model, graph))
            if differences:
                raise CheckpointError(
                    f"{path}: the given model is not the base model this checkpoint was saved from: "
                    + "; ".join(differences[:8])
                    + (f" (and {len(differences) - 8} more)" if len(differences) > 8 else "")
                    + ". Build the same model (same class, sizes and init options) and pass it before any growth"
                )
        if optimizer is not None:
            if payload["optimizer"] is None:
                raise CheckpointError(f"{path}: the checkpoint has no optimizer state (save(..., optimizer=opt))")
            if payload.get("optimizer_layout") is not None:
                _check_optimizer(path, payload["optimizer_layout"], optimizer)
        for name, width in saved.items():
            now = graph.group(name).width
            if width > now:
                grow(graph, name, width - now)
        grown.model.load_state_dict(payload["model"])
        if optimizer is not None:
            optimizer.load_state_dict(payload["optimizer"])
        grown.load_grower_state(payload["grower"])
    except BaseException:
        grown.close()  # leave the given model without archgrow's hooks
        raise
    return grown


# --------------------------------------------------------------------------- reading and checking
def _read(path: str | os.PathLike) -> dict[str, Any]:
    where = Path(path)
    if not where.exists():
        raise CheckpointError(f"{path}: no such file")
    if where.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if where.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (a save that never finished?)")
    try:
        payload = torch.load(where, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError, OSError) as exc:
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}): "
            "the file is truncated, damaged or not a file written by archgrow.save"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an archgrow checkpoint (save it with archgrow.save)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version!r} is newer than this archgrow reads ({FORMAT_VERSION}); upgrade archgrow"
        )
    missing = [k for k in ("spec", "widths", "example_inputs", "model", "optimizer", "grower") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint lacks {', '.join(missing)}: it is damaged")
    if version >= 2:
        stored = payload.get("digests")
        if not isinstance(stored, dict):
            raise CheckpointError(f"{path}: the checkpoint lacks its tensor digests: it is damaged")
        computed = _digests(payload)
        bad = sorted(k for k in set(stored) | set(computed) if stored.get(k) != computed.get(k))
        if bad:
            raise CheckpointError(
                f"{path}: {len(bad)} tensor(s) do not match the digests stored when saving ({', '.join(bad[:5])}"
                f"{', ...' if len(bad) > 5 else ''}): the file is damaged; use another checkpoint"
            )
    return payload


def _tensors(value: Any, prefix: str) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    if isinstance(value, torch.Tensor):
        found[prefix] = value
    elif isinstance(value, dict):
        for k, v in value.items():
            found.update(_tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found.update(_tensors(v, f"{prefix}[{i}]"))
    return found


def _digests(payload: dict[str, Any]) -> dict[str, str]:
    """SHA-256 of every tensor's bytes (with its dtype and shape), by its place in the payload."""
    out = {}
    for key, t in _tensors({k: v for k, v in payload.items() if k != "digests"}, "").items():
        data = t.detach().cpu().contiguous().reshape(-1)
        raw = data.view(torch.uint8).numpy().tobytes() if data.numel() else b""
        out[key] = hashlib.sha256(f"{data.dtype}{tuple(t.shape)}".encode() + raw).hexdigest()
    return out


def _differences(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    out = []
    if saved.get("class") != given.get("class"):
        out.append(f"class {given.get('class')} instead of {saved.get('class')}")
    before, now = saved.get("parameters", {}), given.get("parameters", {})
    for name in sorted(set(before) | set(now)):
        if name not in now:
            out.append(f"parameter '{name}' missing")
        elif name not in before:
            out.append(f"unexpected parameter '{name}'")
        elif list(before[name]) != list(now[name]):
            out.append(f"'{name}' has shape {tuple(now[name])} instead of {tuple(before[name])}")
    for name, width in saved.get("widths", {}).items():
        if given.get("widths", {}).get(name) not in (None, width):
            out.append(f"group '{name}' starts at width {given['widths'][name]} instead of {width}")
    return out


def _optimizer_layout(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "class": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}",
        "groups": [len(g["params"]) for g in optimizer.param_groups],
    }


def _check_optimizer(path: str | os.PathLike, saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    given = _optimizer_layout(optimizer)
    if given["class"] != saved["class"]:
        raise CheckpointError(
            f"{path}: the checkpoint holds the state of a {saved['class']} optimizer, not of the {given['class']} "
            "given; create the same optimizer type to resume"
        )
    if given["groups"] != saved["groups"]:
        raise CheckpointError(
            f"{path}: the optimizer given has parameter groups of {given['groups']} parameters, the checkpoint's "
            f"had {saved['groups']}; create it on the same parameters, in the same groups"
        )


__all__ = ["CheckpointError", "load", "save"]
